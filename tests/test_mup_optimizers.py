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
def test_check_refutes_nothing_for_the_hybrid():
    mf, of = _hybrid_mup()
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
