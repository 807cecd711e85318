"""apply_mup / rules with an optimizer per parameter (Muon, Adafactor, hybrids).

Expected values, from the geometry of each step (tensorprog.graph.optimizers' module doc) and
TP5 Table 8 (Adam LRs: hidden 1/fan_in, input / vectors / Table-8 readout constant):
* Muon "original" (Yang, Simon, Bernstein 2023, arXiv 2310.17813, spectral condition): hidden
  n x n LR constant in width.
* Muon "match_rms_adamw": step entries 0.2 sqrt(max(A, B)) / sqrt(A B) ~ n^-1/2 for a finite-rank
  gradient of an n x n weight, so the muP LR is n^-1/2 (the same sizing analyze uses; see
  test_optimizers.py, where a constant LR is "mixed").
* Adafactor: entries lr * RMS(W); hidden RMS n^-1/2, so LR = Adam's 1/fan_in / n^-1/2 = n^-1/2.
"""
import functools
import inspect

import pytest
import sympy as sp
import torch

from tensorprog import analyze, check, rules
from tensorprog.errors import TensorprogError
from tensorprog.transform.mup import apply_mup
from tensorprog.zoo import example

h = sp.Rational(1, 2)
EX = example("mlp", param="sp")
HYBRID = {"hidden": torch.optim.Muon, "default": torch.optim.AdamW}


def _rules(opt):
    return rules(EX.factory, (64, 128, 256), example_inputs=EX.example_inputs, optimizer=opt,
                 convention="table8")


@pytest.mark.parametrize("opt,hidden_lr", [
    (torch.optim.AdamW, -1),
    (HYBRID, 0),
    (lambda name, role: torch.optim.Muon if role == "hidden" else torch.optim.AdamW, 0),
    ({"hidden": functools.partial(torch.optim.Muon, adjust_lr_fn="match_rms_adamw"),
      "default": torch.optim.AdamW}, -h),
    (torch.optim.Adafactor, -h),
])
def test_rules_follow_each_parameters_optimizer(opt, hidden_lr):
    r = _rules(opt)
    assert r.params["hidden.0.weight"].lr_exp == hidden_lr
    assert r.params["hidden.0.weight"].lr_adam_exp == -1
    if isinstance(opt, dict) or callable(opt) and not isinstance(opt, type):
        assert r.params["input.weight"].optimizer == "AdamW"
        assert r.params["input.weight"].lr_exp == 0 and r.params["readout.weight"].lr_exp == 0


def test_sgd_and_adam_like_cannot_mix():
    with pytest.raises(TensorprogError, match="SGD"):
        _rules({"hidden": torch.optim.SGD, "default": torch.optim.AdamW})


def test_missing_default_names_the_parameter():
    with pytest.raises(TensorprogError, match="default"):
        _rules({"hidden": torch.optim.Muon})


def _hybrid_mup():
    return apply_mup(EX.factory, 64, example_inputs=EX.example_inputs, optimizer_cls=HYBRID,
                     lr=1e-3, weight_decay=0.0)


def test_apply_mup_muon_adamw_hybrid_is_mup():
    mf, of = _hybrid_mup()
    model = mf(256)
    opts = of(model)
    assert [type(o).__name__ for o in opts] == ["AdamW", "Muon"] or \
        sorted(type(o).__name__ for o in opts) == ["AdamW", "Muon"]
    muon = next(o for o in opts if isinstance(o, torch.optim.Muon))
    assert all(g["lr"] == pytest.approx(1e-3) for g in muon.param_groups)  # constant in width
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    rep = analyze(mf, (64, 128, 256), example_inputs=EX.example_inputs, make_optimizer=of)
    assert rep.graph.params["hidden.0.weight"].step.geometry == "orthogonalised"
    assert rep.parametrization == "muP", str(rep)
    assert rep.feature_learning


@pytest.mark.slow
@pytest.mark.parametrize("made", ["hybrid", "adafactor"])
def test_check_refutes_nothing_for_apply_mups_model(made):
    mf, of = _hybrid_mup() if made == "hybrid" else _adafactor_mup()
    rep = check(mf, (64, 128, 256, 512), example_inputs=EX.example_inputs, make_optimizer=of,
                steps=3, seeds=2, progress=False)
    assert not rep.refuted(), [(r.node, r.kind, r.step, r.predicted, r.slope) for r in rep.refuted()]


def test_muon_for_every_parameter_names_the_hybrid_to_use():
    """torch's Muon refuses parameters that are not matrices: a clear error, not a torch one."""
    from tensorprog import TensorprogError, apply_mup
    from tensorprog.zoo import example

    ex = example("mlp", param="sp")
    mf, of = apply_mup(ex.factory, 64, example_inputs=ex.example_inputs,
                       optimizer_cls=torch.optim.Muon, lr=0.02, check=False)
    with pytest.raises(TensorprogError, match="'hidden': torch.optim.Muon"):
        of(mf(128))


# ----------------------------------------------------------------------------- generated code, CLI

RMS_HYBRID = {"hidden": functools.partial(torch.optim.Muon, adjust_lr_fn="match_rms_adamw"),
              "default": torch.optim.AdamW}


def test_generated_code_builds_both_optimizers_of_a_hybrid():
    # Muon "match_rms_adamw" on the hidden matrices: LR ~ n^-1/2 (spectral condition, module
    # doc); AdamW on the rest with TP5 Table 8's constant LRs. At width 256 = 4 x base 64 the
    # Muon groups get lr_muon * 4^-1/2, every AdamW group lr_adamw.
    r = _rules(RMS_HYBRID)
    code = r.to_pytorch()
    assert "'hidden.0.weight': 'Muon'" in code and "'input.weight': 'AdamW'" in code
    ns: dict = {}
    exec(compile(code, "<rules.to_pytorch>", "exec"), ns)
    model = EX.factory(256)
    opts = ns["mup_optimizers"](model, {"Muon": 0.02, "AdamW": 1e-3}, 256)
    assert sorted(type(o).__name__ for o in opts) == ["AdamW", "Muon"]
    muon = next(o for o in opts if isinstance(o, torch.optim.Muon))
    adamw = next(o for o in opts if isinstance(o, torch.optim.AdamW))
    assert muon.defaults["adjust_lr_fn"] == "match_rms_adamw"
    names = {id(p): n for n, p in model.named_parameters()}
    owned = [names[id(p)] for o in opts for g in o.param_groups for p in g["params"]]
    assert sorted(owned) == sorted(names.values())  # every parameter in exactly one optimizer
    assert {names[id(p)] for g in muon.param_groups for p in g["params"]} == \
        {"hidden.0.weight", "hidden.1.weight"}
    assert all(g["lr"] == pytest.approx(0.02 * 4 ** -0.5) for g in muon.param_groups)
    assert all(g["lr"] == pytest.approx(1e-3) for g in adamw.param_groups)


def _cli(*args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "tensorprog", "rules", "--example", "mlp",
                           "--param", "sp", "--convention", "table8", "--widths", "64", "128",
                           *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("spec, hidden_lr", [("muon+adamw", "0"),
                                             ("hidden=muon:match_rms_adamw,default=adamw", "-1/2")])
def test_cli_rules_accepts_hybrids(tmp_path, spec, hidden_lr):
    import json

    out = _cli("--optimizer", spec, "--json", str(tmp_path / "r.json"), "--pytorch",
               str(tmp_path / "r.py"), "--eps-scaling", "mup")
    assert out.returncode == 0, out.stderr
    # --eps-scaling mup: the code scales AdamW's eps (EPS lists it), never Muon's
    ns: dict = {}
    exec(compile((tmp_path / "r.py").read_text(), "r.py", "exec"), ns)
    assert ns["EPS"] == {"AdamW": 1e-8} and ns["EPS_EXP"]["input.weight"] == -1
    d = json.loads((tmp_path / "r.json").read_text())["params"]
    assert d["hidden.0.weight"]["optimizer"] == "Muon" and d["hidden.0.weight"]["lr_exp"] == hidden_lr
    assert d["input.weight"]["optimizer"] == "AdamW" and d["input.weight"]["lr_exp"] == "0"


def test_cli_rules_bad_optimizer_is_a_clear_error():
    out = _cli("--optimizer", "muon+nosuchopt")
    assert out.returncode != 0
    assert "unknown optimizer 'nosuchopt'" in out.stderr and "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- Adafactor

def _adafactor_mup():
    return apply_mup(EX.factory, 64, example_inputs=EX.example_inputs,
                     optimizer_cls=torch.optim.Adafactor, lr=1e-2, weight_decay=0.0)


def test_apply_mup_adafactor_is_mup():
    # Adafactor's step is lr x RMS(W): the hidden weight's muP LR is Adam's 1/fan_in over its
    # RMS n^-1/2, i.e. n^-1/2 (module doc); analyze reads the optimizer object and agrees.
    mf, of = _adafactor_mup()
    model = mf(256)
    (opt,) = of(model) if isinstance(of(model), (list, tuple)) else (of(model),)
    assert isinstance(opt, torch.optim.Adafactor)
    hidden = dict(model.named_parameters())["hidden.0.weight"]
    lr = next(g["lr"] for g in opt.param_groups if any(p is hidden for p in g["params"]))
    assert lr == pytest.approx(1e-2 * 4 ** -0.5)
    rep = analyze(mf, (64, 128, 256), example_inputs=EX.example_inputs, make_optimizer=of)
    assert rep.graph.params["hidden.0.weight"].step.geometry == "parameter-scaled"
    assert rep.parametrization == "muP", str(rep)


# ----------------------------------------------------------------------------- alignment

def test_rules_alignment_none_matches_the_theorys_largest_stable_lrs():
    # TP5 Table 3 with Adam: LRs (1, 1/fan_in, 1/fan_in) under TP alignment. Without alignment
    # (Everett et al. 2024: dW z_0 sums its fan-in CLT-like, n^{1/2}) the largest stable Adam
    # LR of a layer contracting over n is n^{1/2} larger: (1, n^-1/2, n^-1/2); the MLP theory
    # says the same (test_theory_geometry.py derives it by hand).
    from tensorprog.theory.abc import max_stable_lr_exponent

    r = rules(EX.factory, (64, 128, 256), example_inputs=EX.example_inputs, optimizer="adam",
              convention="table3", alignment="none")
    got = tuple(r.params[n].lr_exp for n in ("input.weight", "hidden.0.weight", "readout.weight"))
    assert got == (0, -h, -h)
    c = max_stable_lr_exponent((0, 0, 0), (0, h, 1), "adam", per_layer=True, alignment="none")
    assert got == tuple(-x for x in c)
    assert _rules(HYBRID).params["hidden.0.weight"].lr_exp == 0  # TP by default
    muon = rules(EX.factory, (64, 128, 256), example_inputs=EX.example_inputs, optimizer=HYBRID,
                 convention="table8", alignment="none")
    assert muon.params["hidden.0.weight"].lr_exp == h  # Muon's LR follows: n^{1/2} larger


def test_rules_alignment_under_sgd_is_a_clear_error():
    with pytest.raises(TensorprogError, match="max_stable_lr_exponent"):
        rules(EX.factory, (64, 128), example_inputs=EX.example_inputs, optimizer="sgd",
              alignment="none")


# ----------------------------------------------------------------------------- eps

@pytest.mark.parametrize("convention", ["table8", "table3"])
def test_apply_mup_scales_adam_eps_like_the_measured_gradient(convention):
    # eps_scaling="mup": each group's eps ~ its parameter's muP gradient entries. Measured here:
    # the RMS gradient of each weight of the muP model (one backward pass, 0.5 mean((y - t)^2))
    # at widths 64 and 512 falls with the exponent the eps follows.
    import math

    mf, of = apply_mup(EX.factory, 64, example_inputs=EX.example_inputs,
                       optimizer_cls=torch.optim.Adam, lr=1e-3, eps=1e-8, eps_scaling="mup",
                       convention=convention)
    exps = {n: float(p.eps_exp) for n, p in of.rules.params.items() if p.eps_exp is not None}
    assert exps["hidden.0.weight"] == -1  # 1/fan_in (TP5 App. B's eps for hidden weights)
    # the readout: Theta(1) gradient with Table 3's unit multiplier, 1/n with Table 8's 1/n
    assert exps["readout.weight"] == (0 if convention == "table3" else -1)
    rms = {}
    for n in (64, 512):
        torch.manual_seed(0)
        model = mf(n)
        opt = of(model)
        eps_of = {id(p): g["eps"] for g in opt.param_groups for p in g["params"]}
        named = dict(model.named_parameters())
        for name, e in exps.items():
            assert eps_of[id(named[name])] == pytest.approx(1e-8 * (n / 64) ** e)
        (x,) = EX.example_inputs(n) if callable(EX.example_inputs) else EX.example_inputs
        y = model(x)
        t = torch.randn(tuple(y.shape), generator=torch.Generator().manual_seed(1234))
        (0.5 * (y - t).pow(2).mean()).backward()
        rms[n] = {name: float(named[name].grad.pow(2).mean().sqrt()) for name in exps}
    for name in ("input.weight", "hidden.0.weight", "hidden.1.weight", "readout.weight"):
        slope = math.log(rms[512][name] / rms[64][name]) / math.log(8)
        assert abs(slope - exps[name]) < 0.2, (name, slope, exps[name])


def test_apply_mup_eps_scaling_is_validated():
    with pytest.raises(TensorprogError, match="eps_scaling"):
        apply_mup(EX.factory, 64, example_inputs=EX.example_inputs, eps_scaling="sometimes")


@pytest.mark.parametrize("opt", [torch.optim.Adam, {"hidden": torch.optim.Muon,
                                                     "default": torch.optim.Adam}])
def test_generated_code_scales_eps_like_apply_mup(opt):
    # to_pytorch(eps_scaling="mup") exec'd: every parameter's group eps equals apply_mup's
    # (eps_scaling="mup") at width 256 = 4 x base 64; independently of both, TP5 App. B: a hidden
    # weight's eps is eps / width_mult (its muP gradient entries ~ 1/fan_in), and Muon's own eps
    # (Newton-Schulz normaliser) is left at its default
    mf, of = apply_mup(EX.factory, 64, example_inputs=EX.example_inputs, optimizer_cls=opt,
                       lr=1e-3, eps_scaling="mup", convention="table8")
    code = of.rules.to_pytorch(eps_scaling="mup")
    assert "EPS_EXP" not in of.rules.to_pytorch()  # only when asked
    ns: dict = {}
    exec(compile(code, "<rules.to_pytorch>", "exec"), ns)
    torch.manual_seed(0)
    ours = EX.factory(256)
    ns["mup_init_"](ours, 256)
    gen = ns["mup_optimizers"](ours, 1e-3, 256)
    theirs = mf(256)
    ref = of(theirs)
    ref = ref if isinstance(ref, list) else [ref]

    def eps_by_name(model_opts, model):
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: (type(o).__name__, g["eps"])
                for o in model_opts for g in o.param_groups for p in g["params"]}

    got = eps_by_name(gen, ours)
    want = eps_by_name(ref, theirs)
    assert got.keys() == want.keys() and len(got) == 8
    for name in got:
        assert got[name][0] == want[name][0], name
        assert got[name][1] == pytest.approx(want[name][1]), name
    hidden = got["hidden.0.weight"]
    if opt is torch.optim.Adam:
        assert hidden[1] == pytest.approx(1e-8 / 4)
    else:
        assert hidden == ("Muon", torch.optim.Muon([torch.zeros(2, 2)]).defaults["eps"])
        assert got["input.weight"][1] == pytest.approx(1e-8 / 4)


def test_generated_code_eps_scaling_is_validated():
    with pytest.raises(TensorprogError, match="eps_scaling"):
        _rules(torch.optim.Adam).to_pytorch(eps_scaling="sometimes")


# ----------------------------------------------------------------------------- per-optimizer kwargs

MUON_EPS = inspect.signature(torch.optim.Muon).parameters["eps"].default  # Newton-Schulz eps


@pytest.fixture(scope="module")
def hybrid_labelled():
    """Muon + AdamW with lr and eps keyed by class name, as the generated mup_optimizers takes."""
    return apply_mup(EX.factory, 64, example_inputs=EX.example_inputs, optimizer_cls=HYBRID,
                     lr={"Muon": 0.02, "AdamW": 1e-3}, eps={"AdamW": 1e-6}, check=False)


def test_hybrid_kwargs_by_label_reach_only_their_optimizer(hybrid_labelled):
    # Muon "original": hidden LR constant in width; AdamW: TP5 Table 8's constant input /
    # readout / vector LRs; so at 4 x base every group keeps its optimizer's base lr. Muon's
    # eps (its Newton-Schulz normaliser) stays torch's default, read from its signature.
    mf, of = hybrid_labelled
    opts = of(mf(256))
    muon = next(o for o in opts if isinstance(o, torch.optim.Muon))
    adamw = next(o for o in opts if isinstance(o, torch.optim.AdamW))
    assert all(g["lr"] == pytest.approx(0.02) and g["eps"] == MUON_EPS for g in muon.param_groups)
    assert all(g["lr"] == pytest.approx(1e-3) and g["eps"] == 1e-6 for g in adamw.param_groups)
    # a class works as a key too, and an override replaces the constructor's value
    opts = of(mf(128), eps={torch.optim.AdamW: 1e-7})
    adamw = next(o for o in opts if isinstance(o, torch.optim.AdamW))
    assert all(g["eps"] == 1e-7 for g in adamw.param_groups)


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 1e-8}, r"eps=1e-08 would reach .*Muon.*Newton-Schulz.*eps=\{"),
    ({"eps": {"Lion": 1e-8}}, r"'Lion' is not one of this model's optimizers.*'AdamW'"),
    ({"betas": {"Muon": (0.9, 0.95)}}, "Muon takes no 'betas'"),
    ({"nosuch": 1}, "no optimizer takes 'nosuch'"),
])
def test_hybrid_ambiguous_or_unknown_kwargs_are_refused(hybrid_labelled, kwargs, match):
    mf, of = hybrid_labelled
    with pytest.raises(TensorprogError, match=match):
        of(mf(128), **kwargs)


def test_hybrid_plain_eps_is_refused_at_apply_mup():
    """A plain eps meant for AdamW used to reach Muon's Newton-Schulz eps as well."""
    with pytest.raises(TensorprogError, match=r"AdamW.*denominator.*eps=\{"):
        apply_mup(EX.factory, 64, example_inputs=EX.example_inputs, optimizer_cls=HYBRID,
                  lr=1e-3, eps=1e-8, check=False)


def test_coupled_and_decoupled_weight_decay_are_refused_together():
    # Adam's weight_decay is an L2 term in the gradient, Muon's a decoupled shrink
    # (Loshchilov & Hutter 2019, arXiv 1711.05101): one plain number would mean two things;
    # zero means no decay in both
    mixed = {"hidden": torch.optim.Muon, "default": torch.optim.Adam}
    mf, of = apply_mup(EX.factory, 64, example_inputs=EX.example_inputs, check=False, lr=1e-3,
                       optimizer_cls=mixed, weight_decay=0.0)
    with pytest.raises(TensorprogError, match=r"weight_decay=0.1 .*L2.*decoupled"):
        of(mf(128), weight_decay=0.1)
    # each value to its optimizer; every group's LR factor is 1 (Muon "original": hidden LR
    # constant; Table 8: Adam's input / vector / readout LRs constant), so wd / 1
    opts = of(mf(128), weight_decay={"Adam": 0.1, "Muon": 0.01})
    assert {(type(o).__name__, g["weight_decay"]) for o in opts for g in o.param_groups} == \
        {("Adam", 0.1), ("Muon", 0.01)}


def test_one_optimizer_takes_every_kwarg_as_before():
    mf, of = apply_mup(EX.factory, 64, example_inputs=EX.example_inputs, check=False,
                       optimizer_cls=torch.optim.AdamW, lr=1e-3, eps=1e-6)
    assert all(g["eps"] == 1e-6 for g in of(mf(128)).param_groups)
