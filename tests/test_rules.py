"""Tests for tensorprog.rules: muP init / multiplier / learning rate per parameter, any layer.

Expected values are written from the papers, never read back from the code under test:

* TP5 Table 3 (arXiv 2203.03466): input weights and biases: init var 1/fan_in, SGD LR fan_out, Adam
  LR 1; hidden: init var 1/fan_in, SGD LR 1 (fan_out / fan_in in general, arXiv 2310.17813), Adam LR 1/fan_in;
  output: init var 1/fan_in^2, LR 1/fan_in (SGD and Adam). Table 8: output multiplier 1/fan_in,
  init var constant, LR fan_in (SGD) / 1 (Adam). Table 9: input multiplier sqrt(fan_out), init
  1/fan_out, Adam LR 1/sqrt(fan_out); output multiplier 1/sqrt(fan_in), Adam LR 1/sqrt(fan_in);
  SGD LRs 1. Lemma J.1: (A, B, C) -> (A t, B / t, C / t^2) SGD, (A t, B / t, C / t) Adam.
* Relative factors are compared at width = 4 * base, e.g. Table 3's Adam hidden LR 1/fan_in ->
  lr / 4 there; PyTorch's default init (std ~ fan_in^-1/2) needs no change for hidden weights and a
  factor (1/4)^{1/2} = 1/2 for a readout to reach 1/fan_in^2.
* Attention logits need 1/d_head, not 1/sqrt(d_head) (TP5 Def 4.1): a factor 4^{-1/2} at 4 x base
  when d_head grows with width.
"""
from __future__ import annotations

import argparse
import json
import warnings

import pytest
import sympy as sp
import torch
import torch.nn as nn

from tensorprog import analyze
from tensorprog.errors import TensorprogError
from tensorprog.zoo.layers import example_inputs as layer_inputs
from tensorprog.zoo.layers import model as layer_model
from tensorprog.transform.mup import apply_mup
from tensorprog.cli.rules import add_arguments as add_cli_arguments, run as cli_main
from tensorprog.transform.rules import CONVENTIONS, FAN_IN, FAN_OUT, WIDTH_MULT, convention_table, rules
from tensorprog.zoo import example

warnings.filterwarnings("ignore")
# The suite shares 2 cores with other processes: intra-op threads only oversubscribe them
# (torch.export and the init measurement are 3-4x slower with the default thread count).
torch.set_num_threads(1)

R = sp.Rational
HALF = R(1, 2)
BASE = 64
W = (64, 128)  # traced widths: two are enough for exact dims; init exponents snap to 1/4


def at4(expr):
    """A relative factor (an expression in width_mult) at width = 4 x base."""
    return float(sp.sympify(expr).subs(WIDTH_MULT, 4))


def zoo_rules(name, param, optimizer, convention, **kw):
    ex = example(name, param=param, optimizer="adam", **kw)
    return rules(ex.factory, W, example_inputs=ex.example_inputs, optimizer=optimizer,
                 convention=convention)


# ============================================================================ the tables


PAPER = {  # (init var, multiplier, SGD LR, Adam LR), as printed in TP5
    "table3": {"input-like": (1 / FAN_IN, 1, FAN_OUT, 1),
               "output-like": (1 / FAN_IN**2, 1, 1 / FAN_IN, 1 / FAN_IN),
               "hidden": (1 / FAN_IN, 1, FAN_OUT / FAN_IN, 1 / FAN_IN)},
    "table8": {"input-like": (1 / FAN_IN, 1, FAN_OUT, 1),
               "output-like": (1, 1 / FAN_IN, FAN_IN, 1),
               "hidden": (1 / FAN_IN, 1, FAN_OUT / FAN_IN, 1 / FAN_IN)},
    "table9": {"input-like": (1 / FAN_OUT, sp.sqrt(FAN_OUT), 1, 1 / sp.sqrt(FAN_OUT)),
               "output-like": (1 / FAN_IN, 1 / sp.sqrt(FAN_IN), 1, 1 / sp.sqrt(FAN_IN)),
               "hidden": (1 / FAN_IN, 1, FAN_OUT / FAN_IN, 1 / FAN_IN)},
}


@pytest.mark.parametrize("convention", ["table3", "table8", "table9"])
def test_tables_are_the_papers(convention):
    t = convention_table(convention)
    for kind, (var, mult, sgd, adam) in PAPER[convention].items():
        got = t[kind]
        assert sp.simplify(got["init_var"] - var) == 0, (kind, got)
        assert sp.simplify(got["multiplier"] - mult) == 0, (kind, got)
        assert sp.simplify(got["lr_sgd"] - sgd) == 0, (kind, got)
        assert sp.simplify(got["lr_adam"] - adam) == 0, (kind, got)
    assert all(v == 1 for v in convention_table(convention)["scalar-like"].values())


def test_unit_convention_is_unit_init_with_u_mup_multipliers():
    t = convention_table("unit")
    assert all(t[k]["init_var"] == 1 for k in t)
    assert sp.simplify(t["hidden"]["multiplier"] - 1 / sp.sqrt(FAN_IN)) == 0  # u-muP hidden
    assert sp.simplify(t["output-like"]["multiplier"] - 1 / FAN_IN) == 0  # u-muP readout
    assert sp.simplify(t["input-like"]["lr_adam"] - sp.sqrt(FAN_IN)) == 0  # muP's LR: constant in n


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_every_convention_is_table3_moved_by_lemma_j1(convention):
    """Invariants a + b, 2a + c (SGD) and a + c (Adam) in width exponents, for symbolic fans."""
    n, ai, ao = sp.symbols("n a_i a_o", positive=True)
    fans = {"input-like": (0, ao), "hidden": (ai, ao), "output-like": (ai, 0), "scalar-like": (0, 0)}

    def e(x, fi, fo):  # width exponent of a monomial in fan_in = n^fi, fan_out = n^fo
        x = sp.powsimp(sp.expand_power_base(sp.sympify(x).subs({FAN_IN: n**fi, FAN_OUT: n**fo}),
                                            force=True), force=True)
        return sp.simplify(sp.expand_log(sp.log(x), force=True) / sp.log(n))

    t3, t = convention_table("table3"), convention_table(convention)
    for kind, (fi, fo) in fans.items():
        inv = []
        for tab in (t3, t):
            a = -e(tab[kind]["multiplier"], fi, fo)
            b = -e(tab[kind]["init_var"], fi, fo) / 2
            c_sgd, c_adam = -e(tab[kind]["lr_sgd"], fi, fo), -e(tab[kind]["lr_adam"], fi, fo)
            inv.append((sp.simplify(a + b), sp.simplify(2 * a + c_sgd), sp.simplify(a + c_adam)))
        assert inv[0] == inv[1], (convention, kind, inv)


# ============================================================================ rules on the zoo


def test_table3_rules_on_an_sp_mlp_adam_and_sgd():
    for opt in ("adam", "sgd"):
        r = zoo_rules("mlp", "sp", opt, "table3")
        p = r.params
        assert p["input.weight"].kind == "input-like" and p["hidden.0.weight"].kind == "hidden"
        assert p["readout.weight"].kind == "output-like" and p["readout.bias"].kind == "scalar-like"
        assert p["hidden.0.bias"].kind == "input-like"  # a bias: fan_in 1 (TP5 Table 3)
        # init: PyTorch's 1/fan_in is Table 3 for input and hidden; the readout needs 1/fan_in^2
        assert at4(p["input.weight"].init_factor) == 1 and at4(p["hidden.0.weight"].init_factor) == 1
        assert at4(p["readout.weight"].init_factor) == pytest.approx(0.5)
        lr = {k: at4(v.lr_factor) for k, v in p.items()}
        if opt == "adam":
            assert lr["input.weight"] == 1 and lr["hidden.0.weight"] == pytest.approx(1 / 4)
            assert lr["hidden.0.bias"] == 1 and lr["readout.weight"] == pytest.approx(1 / 4)
        else:
            assert lr["input.weight"] == pytest.approx(4) and lr["hidden.0.weight"] == 1
            assert lr["hidden.0.bias"] == pytest.approx(4) and lr["readout.weight"] == pytest.approx(1 / 4)
        assert lr["readout.bias"] == 1
        assert not r.hooks and not r.ops  # Table 3: no multipliers; no attention


def test_table8_readout_multiplier_and_tied_gpt():
    r = zoo_rules("mlp", "sp", "sgd", "table8")
    ro = r.params["readout.weight"]
    assert sp.simplify(ro.multiplier - 1 / FAN_IN) == 0 and ro.init_var == 1
    assert at4(ro.init_factor) == pytest.approx(2.0)  # SP var 1/fan_in -> constant
    assert at4(ro.lr_factor) == pytest.approx(4.0)  # Table 8 SGD output LR fan_in
    (hook,) = r.hooks
    assert hook.module == "readout" and hook.pre_exp + hook.post_exp == -1

    # tied embedding / readout (one tensor): Table 3 itself cannot hold for both uses; the readout
    # use gets 1/fan_in relative to the embedding's init and LR (Table 8's form), for any table.
    r = zoo_rules("gpt", "sp", "adam", "table3", tie=True)
    emb = r.params["tok_emb.weight"]
    assert emb.role == "input+output" and emb.kind == "input-like"
    assert {u.op: at4(WIDTH_MULT**u.factor_exp) for u in emb.uses} == {"embedding": 1, "linear": 0.25}
    assert at4(emb.lr_factor) == 1 and at4(emb.init_factor) == 1
    assert [h.module for h in r.hooks] == ["readout"]
    # attention: one sdpa per block, 1/sqrt(d) -> 1/d with d_head = width / 4
    assert len(r.ops) == 2 and all(o.fixable and o.attention for o in r.ops)
    assert all(at4(WIDTH_MULT**o.factor_exp) == pytest.approx(0.5) for o in r.ops)


def test_outputs_text_json_and_pytorch_code(tmp_path):
    ex = example("gpt", param="sp", optimizer="adam")
    r = rules(ex.factory, W, example_inputs=ex.example_inputs, optimizer="adam",
              convention="table8", label="gpt-sp")
    text = str(r)
    assert "readout.weight" in text and "output-like" in text and "1/fan_in" in text
    assert "scaled_dot_product_attention" in text and "m^-1/2" in text
    d = json.loads(r.to_json(str(tmp_path / "r.json")))
    assert d["convention"] == "table8" and d["params"]["readout.weight"]["multiplier"] == "1/fan_in"
    assert d["params"]["blocks.0.mlp.fc.weight"]["lr_factor"] == "1/width_mult"
    assert json.loads((tmp_path / "r.json").read_text()) == d

    # the generated code reproduces apply_mup's model and learning rates exactly
    code = r.to_pytorch()
    ns: dict = {}
    exec(compile(code, "<rules.to_pytorch>", "exec"), ns)
    mf, of = apply_mup(ex.factory, BASE, example_inputs=ex.example_inputs, convention="table8",
                       optimizer_cls=torch.optim.AdamW, lr=1e-3, weight_decay=0.1, widths=W)
    torch.manual_seed(3)
    pasted = ex.factory(256)
    ns["mup_init_"](pasted, 256)
    ns["mup_multipliers"](pasted, 256)
    ns["mup_attention"](pasted, 256)
    torch.manual_seed(3)
    applied = mf(256)
    x = ex.example_inputs(256)
    assert torch.equal(pasted(*x), applied(*x))
    lr_of = lambda groups: {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert lr_of(ns["mup_param_groups"](pasted, 1e-3, 256, weight_decay=0.1)) == \
        {id(dict(pasted.named_parameters())[n]): v for n, v in
         ((n, lr_of(of(applied).param_groups)[id(q)]) for n, q in applied.named_parameters())}


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--example", "mlp", "--param", "sp", "--optimizer", "sgd",
                              "--convention", "table8", "--widths", "64", "128",
                              "--json", str(tmp_path / "r.json"), "--pytorch", str(tmp_path / "mup.py")])
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "table8" in out and "readout.weight" in out
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["optimizer"] == "sgd" and d["params"]["input.weight"]["lr_factor"] == "width_mult"
    compile((tmp_path / "mup.py").read_text(), "mup.py", "exec")
    with pytest.raises(SystemExit):
        parser.parse_args(["--convention", "table7"])


# ============================================================================ the symmetry, through the engine


def _invariants(rep):
    return {name: [(u.A, u.U, u.r) for u in p.uses] for name, p in rep.params.items()}


@pytest.mark.parametrize("name,param,optimizer", [
    ("mlp", "sp", torch.optim.SGD), ("mlp", "sp", torch.optim.Adam), ("cnn", "ntk", torch.optim.SGD),
    ("gpt", "sp", torch.optim.AdamW)])
def test_four_conventions_are_the_same_muP_through_the_engine(name, param, optimizer):
    """TP5 Lemma J.1: built in each convention (rules applied by apply_mup), the engine finds the
    same muP: same stability, nontriviality, r and r_l, and the same invariants a + b and
    2a + c (SGD) / a + c (Adam) for every use of every parameter."""
    ex = example(name, param=param, optimizer="adam")
    seen = {}
    for convention in CONVENTIONS:
        mf, of = apply_mup(ex.factory, BASE, example_inputs=ex.example_inputs, optimizer_cls=optimizer,
                           convention=convention, widths=W, lr=1e-2, check=False)
        rep = analyze(mf, W, example_inputs=ex.example_inputs, make_optimizer=of)
        assert rep.parametrization == "muP", f"{convention}\n{rep}"
        assert rep.stable and rep.nontrivial and rep.feature_learning and rep.every_layer_maximal
        seen[convention] = (rep.r, _invariants(rep))
    for convention in CONVENTIONS[1:]:
        assert seen[convention] == seen["table3"], convention
    # the conventions really differ in form: Table 9 puts sqrt(fan_out) on the first layer
    first = "conv1.weight" if name == "cnn" else "input.weight" if name == "mlp" else "tok_emb.weight"
    forms = {c: rules(ex.factory, W, example_inputs=ex.example_inputs, optimizer=optimizer,
                      convention=c).params[first].mult_exp for c in ("table3", "table9")}
    assert forms == {"table3": 0, "table9": HALF}


# ============================================================================ layers in no table


_CACHE: dict = {}


def _applied(name, optimizer):
    key = (name, optimizer)
    if key not in _CACHE:
        cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
        factory = lambda n: layer_model(name, n)  # noqa: E731
        mf, of = apply_mup(factory, BASE, example_inputs=layer_inputs, optimizer_cls=cls,
                           widths=W, lr=1e-2, check=False)
        rep = analyze(mf, W, example_inputs=layer_inputs, make_optimizer=of)
        _CACHE[key] = (mf, of, mf.rules, rep)
    return _CACHE[key]


# name -> {param: (kind, Adam LR factor at 4x, init factor at 4x (SP init -> muP))}
LAYER_RULES = {
    "swiglu": {"layer.w1.weight": ("hidden", 1 / 4, 1), "layer.w3.weight": ("hidden", 1 / 4, 1),
               "layer.w2.weight": ("hidden", 1 / 4, 1)},
    "gqa": {"layer.q.weight": ("hidden", 1 / 4, 1), "layer.k.weight": ("hidden", 1 / 4, 1),
            "layer.o.weight": ("hidden", 1 / 4, 1)},
    "mqa": {"layer.v.weight": ("hidden", 1 / 4, 1)},
    # depthwise: fan_in = kernel size (finite) -> vector-like: Table 3's "input weights" column
    "depthwise": {"layer.dw.weight": ("input-like", 1, 1), "layer.pw.weight": ("hidden", 1 / 4, 1)},
    # nn.Bilinear(n, n, n): fan_in = n^2: init var 1/n^2 (PyTorch's is 1/(3n): factor 4^-1/2),
    # Adam LR 1/fan_in = n^-2
    "bilinear": {"layer.bil.weight": ("hidden", 1 / 16, 1 / 2), "layer.bil.bias": ("input-like", 1, 1)},
    # LoRA: A (r x n) infinite -> finite: output-like, init var 1/fan_in^2 (Table 3), which in
    # Table 8 is init var constant (PyTorch's kaiming 1/(3n) -> factor 4^{1/2}) with multiplier
    # 1/fan_in and Adam LR 1; B (n x r): input-like, zero init stays zero
    "lora": {"layer.lora_A.weight": ("output-like", 1, 2), "layer.lora_B.weight": ("input-like", 1, 1)},
    "moe": {"layer.router.weight": ("output-like", 1, 2), "layer.experts.0.w2.weight": ("hidden", 1 / 4, 1)},
    "temperature": {"layer.log_temp": ("scalar-like", 1, 1), "layer.score.weight": ("output-like", 1, 2)},
    "recurrent": {"layer.W.weight": ("hidden", 1 / 4, 1), "layer.G.weight": ("hidden", 1 / 4, 1)},
}


@pytest.mark.parametrize("name", list(LAYER_RULES))
def test_layer_rules_and_engine_verdict(name):
    mf, of, r, rep = _applied(name, "adam")
    for pname, (kind, lr4, init4) in LAYER_RULES[name].items():
        p = r.params[pname]
        assert p.kind == kind, (pname, p.kind)
        assert at4(p.lr_factor) == pytest.approx(lr4), pname
        assert at4(p.init_factor) == pytest.approx(init4), pname
    assert rep.parametrization == "muP", str(rep)
    assert rep.stable and rep.nontrivial and rep.feature_learning and not rep.unknown_ops
    if name != "lora":
        assert rep.every_layer_maximal
    # the engine checks the rules: the transformed model at base width is the original
    torch.manual_seed(0)
    a = layer_model(name, BASE)
    torch.manual_seed(0)
    assert torch.equal(a(*layer_inputs()), mf(BASE)(*layer_inputs()))


def test_layer_details():
    _, _, r, rep = _applied("lora", "adam")
    base = r.params["layer.base.weight"]
    assert not base.trainable and base.lr is None and "frozen" in " ".join(base.notes)
    assert rep.params["layer.lora_B.weight"].init_exp == "zero"
    _, _, r, _ = _applied("recurrent", "adam")
    w = r.params["layer.W.weight"]
    assert len(w.uses) == 6 and {u.kind for u in w.uses} == {"hidden"}  # unrolled over 6 steps
    _, _, r, rep = _applied("gqa", "adam")
    (op,) = r.ops
    assert op.fixable and at4(WIDTH_MULT**op.factor_exp) == pytest.approx(0.5)
    assert [a.kind for a in rep.attention] == ["1/d"]
    _, _, r, _ = _applied("temperature", "adam")
    t = r.params["layer.log_temp"]
    assert t.role == "scalar" and t.init_var == 1 and t.lr == 1 and t.multiplier == 1


@pytest.mark.parametrize("name", ["bilinear", "depthwise"])
def test_sgd_rules_and_a_wrong_rule_is_caught(name):
    mf, of, r, rep = _applied(name, "sgd")
    assert rep.parametrization == "muP" and rep.stable and rep.every_layer_maximal, str(rep)
    if name == "depthwise":  # vector-like: SGD LR fan_out
        assert at4(r.params["layer.dw.weight"].lr_factor) == pytest.approx(4)
        return
    # hidden SGD LR is fan_out / fan_in (= Table 3's 1 when both ~ n): 1/n for fan_in n^2
    assert at4(r.params["layer.bil.weight"].lr_factor) == pytest.approx(1 / 4)

    def literal_table3(model):  # Table 3's literal "SGD LR 1" for the bilinear weight
        opt = of(model)
        w = model.get_submodule("layer.bil").weight
        groups = [{**g, "params": [p for p in g["params"] if p is not w]} for g in opt.param_groups]
        groups.append({"params": [w], "lr": 1e-2})
        return torch.optim.SGD([g for g in groups if g["params"]], lr=1e-2)

    bad = analyze(mf, W, example_inputs=layer_inputs, make_optimizer=literal_table3)
    assert not bad.stable and any("layer.bil" in p.module for p in bad.problems)


def test_explicit_attention_needs_a_hand_fix():
    r = rules(lambda n: layer_model("explicit_attention", n), W, example_inputs=layer_inputs,
              convention="table8")
    (op,) = r.ops
    assert op.op == "matmul" and op.attention and not op.fixable and op.module == "layer"
    assert at4(WIDTH_MULT**op.factor_exp) == pytest.approx(0.5)
    assert any("`layer`" in p and "by hand" in p for p in r.problems)
    with pytest.raises(TensorprogError, match="by hand"):
        apply_mup(lambda n: layer_model("explicit_attention", n), BASE, example_inputs=layer_inputs,
                  widths=W)


def test_unknown_convention():
    with pytest.raises(TensorprogError, match="table8"):
        convention_table("table7")
