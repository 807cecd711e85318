"""Tests for tensorprog.check: training at growing widths against the engine's exponents.

Expectations come from the theory (TP4 Thm 3.3-3.8, TP4b, TP5 Table 3), not
from the code under test: muP changes every feature by Theta(1) (slope ~0); NTK + SGD moves
hidden features by n^-1/2 (kernel regime); SP with a width-independent learning rate makes the
output change grow with width; NaN is a blow-up, not a crash. Widths are small (CPU), one
torch thread (contended multi-threaded BLAS is slower than one thread on small matrices).
"""
import json
import os

import pytest
import sympy as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

import dataclasses

from tensorprog.ops import SPECS
from tensorprog.measure.check import CheckReport, check, default_loss
from tensorprog.errors import CheckError
from tensorprog.zoo import example

WIDTHS = (64, 128, 256, 512)


def run_zoo(name, param, opt, widths=WIDTHS, steps=3, seeds=2, **kw):
    ex = example(name, param=param, optimizer=opt, **kw)
    return check(ex.factory, widths, example_inputs=ex.example_inputs,
                 make_optimizer=ex.make_optimizer, loss=ex.loss, steps=steps, seeds=seeds,
                 progress=False)


def features(rep, module_prefix=""):
    """Names of the matrix-op outputs (linear / conv / embedding / sdpa) of the report."""
    return [n for n in dict.fromkeys(r.node for r in rep.focus())
            if rep.get(n, "size", 0).op in ("linear", "conv2d", "embedding",
                                             "scaled_dot_product_attention")
            and rep.get(n, "size", 0).module.startswith(module_prefix)]


# ------------------------------------------------------------------ zoo MLP: SP / NTK / muP


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_mup_mlp_every_change_is_width_independent(opt):
    rep = run_zoo("mlp", "mup", opt)
    assert rep.verdict == "confirmed", str(rep)
    for n in features(rep):
        for t in (1, 2, 3):
            r = rep.get(n, "change", t)
            assert r.predicted == 0 and r.status == "confirmed"
            assert abs(r.slope) < 0.25, (n, t, r.slope)  # Theta(1): feature learning, TP4 Thm 3.6
    # muP readout: init variance 1/fan_in^2 -> output ~ n^-1/2 at init (TP5 Table 3)
    out = rep.get("linear_3", "size", 0)
    assert out.predicted == sp.Rational(-1, 2) and abs(out.slope + 0.5) < 0.15


def test_ntk_sgd_is_kernel_regime():
    rep = run_zoo("mlp", "ntk", "sgd")
    assert rep.verdict == "confirmed", str(rep)
    # hidden features after the 1/sqrt(fan_in) multiplier move by n^-1/2 (TP4 Thm 3.8, r = 1/2)
    for n in ("mul_1", "mul_2"):
        r = rep.get(n, "change", 1)
        assert r.predicted == sp.Rational(-1, 2) and r.status == "confirmed"
        assert -0.8 < r.slope < -0.3, (n, r.slope)
    # ... while the output moves by Theta(1) (nontrivial)
    r = rep.get("add_3", "change", 1)
    assert r.predicted == 0 and abs(r.slope) < 0.35


def test_ntk_adam_is_unstable():
    """NTK multipliers with a width-independent Adam LR: r_l = c + a - 1 = -1/2 < 0 (TP4b)."""
    rep = run_zoo("mlp", "ntk", "adam", steps=1)
    assert not rep.refuted(), str(rep)
    r = rep.get("mul_1", "change", 1)
    assert r.predicted > 0 and r.status == "confirmed" and r.slope > 0.25


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_sp_output_change_grows(opt):
    """SP with a width-independent learning rate is unstable (TP4 §2 table, r = -1; TP4b
    Thm 2.8.12): the logits' change grows with width from the first step."""
    rep = run_zoo("mlp", "sp", opt)
    assert not rep.refuted(), str(rep)
    r = rep.get("linear_3", "change", 1)
    assert r.predicted > 0 and r.status == "confirmed"
    assert r.slope > (0.8 if opt == "adam" else 0.4), r.slope  # Adam: ~n (measured ~1.1)
    assert any(u.node == "linear_3" for u in rep.unstable())
    # the input layer is not the problem: its features stay Theta(1) at init
    assert rep.get("linear", "size", 0).status == "confirmed"
    # the hidden features' size (init Theta(1) + a growing change) has not grown yet at these
    # widths: never confirmed from its parts alone, so inconclusive rather than confirmed
    if opt == "adam":
        r = rep.get("linear_1", "size", 1)
        assert r.predicted > 0 and r.slope < 0.25 and r.status == "inconclusive"


def test_sp_sgd_one_step_confirmed():
    """One SGD step, where the engine's assumptions (Theta(1) loss gradient) still hold: nothing
    refuted, every change confirmed (sizes whose growth has not shown yet: inconclusive)."""
    rep = run_zoo("mlp", "sp", "sgd", steps=1, seeds=3)
    assert not rep.refuted(), str(rep)
    assert all(r.status == "confirmed" for r in rep.records if r.kind == "change"), str(rep)
    # the input layer's change: lr * g * x with g ~ n^-1/2 (readout weights ~ n^-1/2)
    r = rep.get("linear", "change", 1)
    assert r.predicted == sp.Rational(-1, 2) and abs(r.slope + 0.5) < 0.15


# ------------------------------------------------------------------ GPT


def test_gpt_mup_adam():
    """muP GPT: every feature change Theta(1), at small widths already."""
    rep = run_zoo("gpt", "mup", "adam", widths=(64, 128, 256), steps=2)
    for n in features(rep):
        r = rep.get(n, "change", 2)
        assert r.predicted == 0 and r.status == "confirmed", (n, r.slope, r.stderr)
    assert not rep.refuted(), str(rep)


def test_parameters_with_exactly_zero_gradient():
    """The attention key bias (q.(k + b) = q.k + q.b shifts each query's logits by a constant,
    which softmax ignores) and a conv bias followed by BatchNorm in training mode (which
    subtracts the per-channel batch mean) have exactly zero gradient: they never train; Adam
    moves them only by roundoff divided by its eps. Whatever the engine predicts for them, the
    check must side with that: a predicted zero confirmed, a predicted Theta(1) refuted."""
    gpt = run_zoo("gpt", "mup", "adam", widths=(64, 128, 256), steps=2, seeds=1)
    cnn = run_zoo("cnn", "mup", "adam", widths=(32, 64, 128), steps=2, seeds=1)
    for rep, node in ((gpt, "p_blocks_0_attn_key_bias"), (gpt, "p_blocks_1_attn_key_bias"),
                      (cnn, "p_conv2_bias")):
        r = rep.get(node, "change", 2)
        assert r.slope < -0.5  # roundoff only: vanishes with width
        if r.predicted == -sp.oo:  # confirmed through the float64 re-measurement
            assert r.status == "confirmed", (node, r.note)
        else:
            assert r.status == "refuted", (node, r.predicted, r.status)


# ------------------------------------------------------------------ a wrong prediction


def test_wrong_engine_rule_is_refuted(monkeypatch):
    spec = SPECS["tanh"]
    fwd = spec.forward

    def wrong(op):
        x, dx, extra = fwd(op)
        return x + sp.Rational(1, 2), dx + sp.Rational(1, 2), extra
    monkeypatch.setitem(SPECS, "tanh", dataclasses.replace(spec, forward=wrong))
    rep = run_zoo("mlp", "mup", "adam", widths=(64, 128, 256), steps=1)
    assert rep.verdict == "refuted"
    bad = {(r.node, r.kind, r.step) for r in rep.refuted()}
    for n in ("tanh", "tanh_1", "tanh_2"):
        assert (n, "size", 0) in bad  # predicted n^1/2, |tanh| <= 1 measured flat
        r = rep.get(n, "size", 0)
        assert abs(r.slope) < 0.1 and r.predicted == sp.Rational(1, 2)
    assert "REFUTED" in str(rep)


def test_wrong_zero_prediction_is_refuted(monkeypatch):
    """A predicted exact zero that is not one (tanh outputs do change) stays refuted after the
    float64 re-measurement: a real change does not shrink with the precision."""
    spec = SPECS["tanh"]
    fwd = spec.forward

    def frozen(op):
        x, dx, extra = fwd(op)
        return x, -sp.oo, extra
    monkeypatch.setitem(SPECS, "tanh", dataclasses.replace(spec, forward=frozen))
    rep = run_zoo("mlp", "mup", "adam", widths=(64, 128, 256), steps=1, seeds=1)
    r = rep.get("tanh_1", "change", 1)
    assert r.predicted == -sp.oo and r.status == "refuted" and "not roundoff" in r.note


def test_wrong_linear_rule_is_refuted(monkeypatch):
    spec = SPECS["linear"]
    fwd = spec.forward

    def wrong(op):
        x, dx, extra = fwd(op)
        return x + sp.Rational(1, 2), dx, extra
    monkeypatch.setitem(SPECS, "linear", dataclasses.replace(spec, forward=wrong))
    rep = run_zoo("mlp", "mup", "sgd", widths=(64, 128, 256), steps=1, seeds=1)
    assert ("linear_1", "size", 0) in {(r.node, r.kind, r.step) for r in rep.refuted()}


# ------------------------------------------------------------------ the mup package


try:
    import mup
except ImportError:  # the public mup package is optional
    mup = None
needs_mup = pytest.mark.skipif(mup is None, reason="needs the mup package")


class MuMLP(nn.Module):
    """The mup package's example MLP: nn.Linear layers and a MuReadout (or nn.Linear) readout."""

    def __init__(self, width, d_in=32, d_out=10, readout="mu"):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, width)
        self.readout = mup.MuReadout(width, d_out) if readout == "mu" else nn.Linear(width, d_out)

    def forward(self, x):
        return self.readout(F.relu(self.fc2(F.relu(self.fc1(x)))))


def mu_factory(width):
    model = MuMLP(width)
    mup.set_base_shapes(model, MuMLP(64), delta=MuMLP(128))
    return model


def sp_factory(width):
    return MuMLP(width, readout="sp")


def mlp_inputs(width):
    return (torch.randn(16, 32, generator=torch.Generator().manual_seed(0)),)


@needs_mup
def test_mup_package_mlp_passes():
    rep = check(mu_factory, WIDTHS, example_inputs=mlp_inputs,
                make_optimizer=lambda m: mup.MuAdam(m.parameters(), lr=1e-2), seeds=2,
                progress=False)
    assert rep.optimizer == "adam"
    assert rep.verdict == "confirmed", str(rep)
    assert not rep.unstable()
    for t in (1, 2, 3):
        r = rep.get("linear_2", "change", t)  # the MuReadout's output
        assert r.module == "readout" and r.predicted == 0 and abs(r.slope) < 0.2


@needs_mup
def test_same_model_in_sp_fails_on_the_readout():
    rep = check(sp_factory, WIDTHS, example_inputs=mlp_inputs,
                make_optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), seeds=2,
                progress=False)
    assert not rep.refuted(), str(rep)
    r = rep.get("linear_2", "change", 1)
    assert r.module == "readout" and r.predicted > 0 and r.status == "confirmed" and r.slope > 0.7
    assert any(u.module == "readout" for u in rep.unstable())
    assert "growing with width" in str(rep) and "readout" in str(rep)


# ------------------------------------------------------------------ blow-ups, data, errors


def test_nan_is_a_blowup_not_a_crash():
    ex = example("mlp", param="sp", optimizer="sgd", lr=1e6, nonlinearity="relu")
    rep = check(ex.factory, (64, 128, 256), example_inputs=ex.example_inputs,
                make_optimizer=ex.make_optimizer, loss=ex.loss, steps=3, seeds=1, progress=False)
    assert rep.blowups
    b = rep.blowups[0]
    assert b.step >= 1 and b.width in (64, 128, 256)
    blown = [r for r in rep.records if r.blowup]
    assert blown and all(r.step >= 1 for r in blown)
    # a blow-up is never a confirmation: a predicted growth stays undetermined, a predicted
    # Theta(1) or less is refuted only by non-finite values at the widest widths (issue 11)
    for r in blown:
        assert r.status != "confirmed"
        assert r.status == "inconclusive" if r.predicted > 0 else r.status in ("refuted", "inconclusive")
    assert "blow-up" in str(rep)
    json.loads(rep.to_json())  # nan / inf survive as {"nonfinite": ...}


def test_data_batches_and_frozen_copy():
    """A new batch each step: x_0 comes from a frozen initial copy on that batch."""
    ex = example("mlp", param="mup", optimizer="adam")
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 32, generator=g),) for _ in range(4)]
    rep = check(ex.factory, (64, 128, 256), data=batches, make_optimizer=ex.make_optimizer,
                loss=ex.loss, steps=3, seeds=1, progress=False, sample=1024)  # subsets too
    assert not rep.refuted(), str(rep)
    r = rep.get("linear_1", "change", 3)
    assert r.predicted == 0 and abs(r.slope) < 0.25
    # against a fixed batch the change at step 3 differs (other batch, other x_0)
    rep2 = check(ex.factory, (64, 128, 256), example_inputs=batches[0],
                 make_optimizer=ex.make_optimizer, loss=ex.loss, steps=3, seeds=1, progress=False)
    assert rep2.get("linear_1", "change", 3).values != r.values


def test_optimizer_groups_by_name_and_frozen_layers():
    """make_optimizer runs on the original model: groups by parameter name work, and a layer
    with learning rate 0 is predicted (and measured) exactly unchanged."""
    ex = example("mlp", param="mup", optimizer="adam")

    def make_opt(model):
        frozen = [p for n, p in model.named_parameters() if n.startswith("input.")]
        rest = [p for n, p in model.named_parameters() if not n.startswith("input.")]
        return torch.optim.Adam([{"params": frozen, "lr": 0.0}, {"params": rest, "lr": 1e-3}])
    rep = check(ex.factory, (64, 128, 256), example_inputs=ex.example_inputs,
                make_optimizer=make_opt, loss=ex.loss, steps=2, seeds=1, progress=False)
    r = rep.get("linear", "change", 2)  # the input layer's output: nothing upstream trains
    assert r.predicted == -sp.oo and r.status == "confirmed"
    assert all(v == 0.0 for vs in r.values.values() for v in vs)
    assert rep.get("linear_1", "change", 2).status == "confirmed"


def test_bad_inputs_raise_check_error():
    ex = example("mlp", param="mup", optimizer="adam")
    kw = dict(example_inputs=ex.example_inputs, make_optimizer=ex.make_optimizer, progress=False)
    with pytest.raises(CheckError, match="two distinct"):
        check(ex.factory, (64,), **kw)
    with pytest.raises(CheckError, match="scalar"):
        check(ex.factory, (64, 128), loss=lambda out, inp: out, steps=1, seeds=1, **kw)
    with pytest.raises(CheckError, match="static"):
        check(ex.factory, (64, 128), data=[(torch.randn(8, 32),), (torch.randn(5, 32),)],
              make_optimizer=ex.make_optimizer, steps=1, seeds=1, progress=False)
    with pytest.raises(CheckError, match="steps"):
        check(ex.factory, (64, 128), steps=0, **kw)
    with pytest.raises(CheckError, match="factory"):
        check(ex.factory(64), (64, 128), **kw)


def test_default_loss_has_theta1_gradient():
    y = torch.zeros(4, 10, requires_grad=True)
    default_loss(y, ()).backward()
    assert y.grad.abs().mean() > 0.01  # a zero output still gets a Theta(1) gradient
    assert default_loss(torch.tensor(2.5), ()).item() == 2.5  # a scalar output is the loss


# ------------------------------------------------------------------ report, plot, CLI


def test_report_json_plot_and_cli(tmp_path):
    rep = run_zoo("mlp", "mup", "adam", widths=(64, 128, 256), steps=1, seeds=1)
    assert isinstance(rep, CheckReport)
    d = json.loads(rep.to_json(str(tmp_path / "r.json")))
    assert d["verdict"] == rep.verdict and len(d["records"]) == len(rep.records)
    assert {"node", "module", "op", "kind", "step", "slope", "stderr", "predicted", "status"} <= \
        set(d["records"][0])
    path = rep.plot(str(tmp_path / "coord.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = str(rep)
    assert "linear_1" in text and "hidden.0" in text

    import argparse
    from tensorprog.cli.check import add_arguments as add_cli_arguments, run as cli_main
    parser = add_cli_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--example", "mlp", "--param", "mup", "--widths", "64,128",
                              "--steps", "1", "--seeds", "1", "--quiet", "--device", "cpu",
                              "--json", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png")])
    assert cli_main(args) in (0, 1)
    assert os.path.exists(tmp_path / "c.json") and os.path.exists(tmp_path / "c.png")


def test_cli_file_target(tmp_path, capsys):
    f = tmp_path / "model.py"
    f.write_text(
        "import torch, torch.nn as nn\n"
        "def factory(n):\n"
        "    return nn.Sequential(nn.Linear(16, n), nn.Tanh(), nn.Linear(n, 4))\n"
        "example_inputs = (torch.randn(8, 16),)\n")
    import argparse
    from tensorprog.cli.check import add_arguments as add_cli_arguments, run as cli_main
    args = add_cli_arguments(argparse.ArgumentParser()).parse_args(
        [f"{f}:factory", "--widths", "64,128,256", "--steps", "1", "--seeds", "1", "--quiet",
         "--device", "cpu", "--optimizer", "sgd"])
    code = cli_main(args)
    out = capsys.readouterr().out
    assert "tensorprog check" in out and code in (0, 1)


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_mup_mlp_confirmed():
    ex = example("mlp", param="mup", optimizer="adam")
    rep = check(ex.factory, (128, 256, 512, 1024, 2048), example_inputs=ex.example_inputs,
                make_optimizer=ex.make_optimizer, loss=ex.loss, steps=3, seeds=2,
                progress=False, device="auto")
    assert rep.device.startswith("cuda")
    assert rep.verdict == "confirmed", str(rep)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_sp_adam_logits_grow():
    ex = example("mlp", param="sp", optimizer="adam")
    rep = check(ex.factory, (128, 256, 512, 1024, 2048), example_inputs=ex.example_inputs,
                make_optimizer=ex.make_optimizer, loss=ex.loss, steps=1, seeds=2,
                progress=False, device="cuda")
    r = rep.get("linear_3", "change", 1)
    assert r.predicted > 0 and r.status == "confirmed" and r.slope > 0.8


def test_subset_sampling_matches_exact():
    """Large tensors are measured on a fixed random subset of entries: the slopes must agree
    with the exact means to well within the tolerance."""
    ex = example("mlp", param="mup", optimizer="adam")
    kw = dict(example_inputs=ex.example_inputs, make_optimizer=ex.make_optimizer, loss=ex.loss,
              steps=2, seeds=1, progress=False)
    exact = check(ex.factory, (64, 128, 256), sample=None, **kw)
    sub = check(ex.factory, (64, 128, 256), sample=2048, graph=exact.graph, **kw)
    for n in ("p_hidden_0_weight", "linear_1", "p_readout_weight"):
        for kind in ("size", "change"):
            a, b = exact.get(n, kind, 2), sub.get(n, kind, 2)
            assert abs(a.slope - b.slope) < 0.05, (n, kind, a.slope, b.slope)


def test_hf_gpt2_predictions_hold_including_saturating_ops():
    """HF GPT-2 keeps a constant 0.02 init, so its MLP pre-activations grow like n^{1/2}; its
    tanh-GELU is predicted to saturate (Theta(1)) and, at these widths, is still growing towards
    it. Nothing the engine predicts may be refuted."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()

    def make(n):
        return GPT2LMHeadModel(GPT2Config(n_embd=n, n_layer=2, n_head=4, vocab_size=128,
                                          n_positions=32, use_cache=False))

    x = (torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0)),)
    rep = check(make, (64, 128, 256), example_inputs=x, steps=2, seeds=1, progress=False,
                make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
    assert not rep.refuted(), [(r.node, r.kind, r.step, r.slope, r.predicted) for r in rep.refuted()]
    tanh = rep.get("tanh", "size", 0)
    assert tanh.status == "confirmed" and tanh.slope > 0.3 and "saturating" in tanh.note


def test_plot_series_styles_are_all_different():
    """Every series of the coordinate-check figure gets its own (colour, marker): the README's
    figure has 11 groups, and tab10 alone would repeat its first colour."""
    from tensorprog.measure.plots import series_styles

    for count in (3, 10, 11, 16, 20):
        styles = series_styles(count)
        assert len(styles) == count
        keys = [(str(c), m) for c, m in styles]
        assert len(set(keys)) == count, (count, keys)
