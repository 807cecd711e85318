"""The verdict on real architectures: the zoo, the public mup package, HuggingFace models.

Expected names come from how each model was built (the zoo's variants follow TP5 Table 3 / 8 and
TP4 §2 by hand; mup's MuReadout + MuAdam is muP by construction; torch defaults are SP).
"""
import json
import warnings

import pytest
import sympy as sp
import torch
import torch.nn as nn

from tensorprog.predict.analyze import analyze
from tensorprog.cli import main as cli_main
from tensorprog.zoo import example

EXPECTED = {"sp": "SP", "ntk": "NTK", "mup": "muP", "mup_table8": "muP"}


def zoo(name, param, optimizer, widths=(64, 128, 256), **kw):
    ex = example(name, param=param, optimizer=optimizer, **kw)
    return analyze(ex.factory, widths, example_inputs=ex.example_inputs,
                   make_optimizer=ex.make_optimizer)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("param", list(EXPECTED))
@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
def test_each_zoo_variant_gets_its_own_name(name, param, optimizer):
    rep = zoo(name, param, optimizer, widths=(64, 128))
    assert rep.parametrization == EXPECTED[param], str(rep)
    if param.startswith("mup"):
        # TP4 Thm 5.6: muP is stable, nontrivial, and every layer updates maximally.
        assert rep.stable and rep.nontrivial and rep.feature_learning and rep.every_layer_maximal
    if param == "sp":
        assert not rep.stable  # SP with a width-independent LR blows up (sheet §1, §2)


def test_sp_report_names_each_part_that_is_not_mup():
    rep = zoo("gpt", "sp", "adam")
    bad = {p.name for p in rep.not_mup()}
    assert "readout.weight" in bad and "blocks.0.mlp.fc.weight" in bad
    assert "tok_emb.weight" not in bad  # SP embedding init and LR coincide with muP under Adam
    text = str(rep)
    assert "1/d_head instead of 1/sqrt(d_head)" in text
    assert "1/fan_in" in text  # hidden Adam LR


def test_heads_growing_needs_no_attention_fix():
    rep = zoo("gpt", "mup", "adam", grow="heads")
    assert rep.parametrization == "muP"
    assert all(a.kind == "fixed d_head" for a in rep.attention)


def test_tied_mup_gpt():
    rep = zoo("gpt", "mup", "adam", tie=True)
    assert rep.parametrization == "muP", str(rep)
    assert rep.params["tok_emb.weight"].role == "input+output"


def test_mup_with_sqrt_attention_is_mixed_and_the_fix_says_so():
    ex = example("gpt", param="mup", optimizer="adam")

    def factory(n):
        m = ex.factory(n)
        for blk in m.blocks:
            blk.attn.scale = None  # back to torch's default 1/sqrt(d_head)
        return m

    rep = analyze(factory, (64, 128, 256), example_inputs=ex.example_inputs,
                  make_optimizer=ex.make_optimizer)
    assert rep.parametrization == "mixed"
    assert not rep.stable
    assert any("attention logits blow up" in p.what for p in rep.problems)
    assert "1/d_head instead of 1/sqrt(d_head)" in str(rep)


# ----------------------------------------------------------------------------- the mup package


class MupNet(nn.Module):
    def __init__(self, n, readout):
        super().__init__()
        self.inp, self.hid = nn.Linear(16, n), nn.Linear(n, n)
        self.out = readout(n, 10)

    def forward(self, x):
        return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))


def _mup_factory(n):
    from mup import MuReadout, set_base_shapes

    m = MupNet(n, MuReadout)
    set_base_shapes(m, MupNet(32, MuReadout), delta=MupNet(64, MuReadout))
    return m


@pytest.mark.parametrize("opt", ["MuAdam", "MuSGD"])
def test_mup_package_model_is_mup(opt):
    import mup

    rep = analyze(_mup_factory, (64, 128, 256), example_inputs=(torch.randn(4, 16),),
                  make_optimizer=lambda m: getattr(mup, opt)(m.parameters(), lr=1e-2))
    assert rep.parametrization == "muP", str(rep)
    assert rep.feature_learning and rep.every_layer_maximal


def test_same_model_with_torch_defaults_is_sp():
    rep = analyze(lambda n: MupNet(n, nn.Linear), (64, 128, 256), example_inputs=(torch.randn(4, 16),),
                  make_optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))
    assert rep.parametrization == "SP"
    assert {p.name for p in rep.not_mup()} >= {"out.weight", "hid.weight"}


# ----------------------------------------------------------------------------- HuggingFace


def _hf(kind):
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        return lambda n: GPT2LMHeadModel(GPT2Config(n_embd=n, n_layer=2, n_head=4, vocab_size=128,
                                                    n_positions=32, use_cache=False))
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        return lambda n: LlamaForCausalLM(LlamaConfig(
            hidden_size=n, intermediate_size=2 * n, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=32, use_cache=False))
    from transformers import BertConfig, BertForMaskedLM
    return lambda n: BertForMaskedLM(BertConfig(hidden_size=n, intermediate_size=4 * n,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                vocab_size=128, max_position_embeddings=32))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_hf_models_with_adamw_are_sp(kind):
    rep = analyze(_hf(kind), (64, 128, 256), example_inputs=(torch.randint(0, 128, (2, 16)),),
                  make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
    assert rep.parametrization == "SP", str(rep)
    assert not rep.unknown_ops
    hidden = [p for p in rep.params.values() if p.role == "hidden"]
    assert hidden and all("muP" not in p.classes for p in hidden)
    assert all(p.fixes for p in hidden)  # each part that is not muP comes with its fix
    assert all(a.kind == "1/sqrt(d)" for a in rep.attention)


# ----------------------------------------------------------------------------- outputs


def test_json_report_has_the_documented_keys(tmp_path):
    rep = zoo("mlp", "mup", "adam", widths=(64, 128))
    path = tmp_path / "r.json"
    rep.to_json(str(path))
    d = json.loads(path.read_text())
    for key in ("parametrization", "stable", "nontrivial", "feature_learning", "regime", "r",
                "params", "attention", "problems", "unknown_ops"):
        assert key in d
    assert d["parametrization"] == "muP" and d["r"] == "0"
    assert d["params"]["hidden.0.weight"]["role"] == "hidden"


def test_cli_analyze_example_and_file(tmp_path, capsys):
    assert cli_main(["analyze", "--example", "mlp", "--param", "ntk", "--optimizer", "sgd",
                     "--widths", "64", "128"]) == 0
    assert "verdict: NTK" in capsys.readouterr().out
    f = tmp_path / "net.py"
    f.write_text(
        "import torch, torch.nn as nn\n"
        "def make(n):\n"
        "    return nn.Sequential(nn.Linear(8, n), nn.Tanh(), nn.Linear(n, n), nn.Tanh(), nn.Linear(n, 3))\n"
        "example_inputs = (torch.randn(4, 8),)\n")
    out_json = tmp_path / "o.json"
    assert cli_main(["analyze", f"{f}:make", "--optimizer", "adam", "--json", str(out_json)]) == 0
    assert "verdict: SP" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["parametrization"] == "SP"
    # --lr-rule turns the same file into muP-for-LR; the readout still needs its multiplier.
    assert cli_main(["analyze", f"{f}:make", "--optimizer", "adam", "--lr-rule", "hidden=-1",
                     "output=-1"]) == 0
    assert "readout" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys):
    assert cli_main(["analyze", "missing.py:f"]) == 2
    assert "no such file" in capsys.readouterr().err
    f = tmp_path / "m.py"
    f.write_text("x = 1\n")
    assert cli_main(["analyze", f"{f}:make"]) == 2
    assert "has no 'make'" in capsys.readouterr().err
    assert cli_main(["analyze", "--example", "resnet"]) == 2
    assert cli_main(["analyze", "--example", "mlp", "--lr-rule", "hid=-1"]) == 2


def test_cli_rejects_a_non_numeric_lr_rule_before_tracing(capsys):
    assert cli_main(["analyze", "--example", "mlp", "--lr-rule", "hidden=abc"]) == 2
    assert "not a number" in capsys.readouterr().err


def test_output_without_gradient_is_an_error_not_a_verdict():
    from tensorprog import TensorprogError

    class Argmax(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.inp, self.out = nn.Linear(8, n), nn.Linear(n, 3)

        def forward(self, x):
            return self.out(torch.relu(self.inp(x))).argmax(-1)

    with pytest.raises(TensorprogError, match="no gradient reaches any parameter"):
        analyze(Argmax, (64, 128), example_inputs=(torch.randn(4, 8),))


def test_l2_norm_over_the_width_grows_like_sqrt_n():
    """||h||_2 of a Theta(1)-coordinate vector of n entries is ~ n^{1/2} (a sum of n squares)."""

    class Norm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.inp, self.hid = nn.Linear(8, n), nn.Linear(n, n)

        def forward(self, x):
            return torch.linalg.vector_norm(self.hid(torch.relu(self.inp(x))), dim=-1, keepdim=True)

    rep = analyze(Norm, (64, 128, 256), example_inputs=(torch.randn(4, 8),))
    assert rep.output_init == sp.Rational(1, 2) and not rep.stable


def test_softmax_over_the_width_spreads_its_mass():
    """softmax over n entries of Theta(1) logits: each coordinate is Theta(1/n)."""
    from tensorprog.predict.engine import propagate
    from tensorprog.graph.trace import trace

    class Soft(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.inp, self.out = nn.Linear(8, n), nn.Linear(n, 3)

        def forward(self, x):
            return self.out(torch.softmax(self.inp(x), dim=-1))

    g = trace(Soft, (64, 128, 256), example_inputs=(torch.randn(4, 8),))
    node = next(n for n in g.order if g.node(n)["op"] == "softmax")
    assert propagate(g, "adam").steps[0][node].x == -1
