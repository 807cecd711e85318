"""A non-finite measurement is never a confirmation (issue 11 item 1): before, ``check`` marked a
predicted growth "confirmed" by NaN / inf values, whatever made them (a NaN in the model, float16
where Adam's eps = 1e-8 underflows to 0)."""
import math

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn as nn

from tensorprog import check
from tensorprog.measure.judge import Tolerance, judge

WIDTHS = (16, 32, 64)


class MLP(nn.Module):
    def __init__(self, n, nan=False):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 1)
        self.nan = nan

    def forward(self, x):
        y = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return y * float("nan") if self.nan else y


EX = (torch.randn(4, 8, generator=torch.Generator().manual_seed(0)),)


def _assert_never_confirmed_by_non_finite(rep):
    bad = [r for r in rep.records if not all(math.isfinite(v) for vs in r.values.values() for v in vs)
           and any(math.isnan(v) or math.isinf(v) for vs in r.values.values() for v in vs)]
    assert bad, "the model was meant to produce non-finite values"
    for r in bad:
        assert r.blowup and r.status != "confirmed", (r.node, r.kind, r.step, r.status, r.note)
        assert "non-finite" in r.note and "first non-finite: width" in r.note
    assert rep.verdict != "confirmed"


def test_nan_model_is_not_confirmed():
    rep = check(lambda n: MLP(n, nan=True), WIDTHS, example_inputs=EX, steps=1, seeds=1,
                progress=False)
    _assert_never_confirmed_by_non_finite(rep)
    # where: every width, seed 0, step 0 (the NaN is in the forward), at the multiplication
    assert sorted(b.width for b in rep.blowups) == list(WIDTHS)
    assert all(b.step == 0 and b.seed == 0 and b.node.startswith("mul") for b in rep.blowups)
    # NaN at every width is a numerical fault, not a width effect: undetermined, not refuted
    out = [r for r in rep.records if r.node.startswith("mul") and r.step == 0]
    assert out and all(r.status == "inconclusive" and "every width" in r.note for r in out)


def test_float16_adam_eps_underflow_is_not_confirmed():
    """float16 on CPU: Adam's eps = 1e-8 is 0 in float16 (its smallest subnormal is 6e-8), so
    an entry whose squared gradient underflows steps by 0/0. The NaN parameters after step 1
    confirm nothing, and the report names the cause."""
    assert float(torch.tensor(1e-8, dtype=torch.float16)) == 0.0  # the premise
    rep = check(MLP, WIDTHS, example_inputs=EX, steps=1, seeds=1, progress=False,
                dtype=torch.float16, device="cpu")
    _assert_never_confirmed_by_non_finite(rep)
    assert rep.blowups and all(b.step == 1 for b in rep.blowups)
    assert any("eps = 1e-08 is 0 in float16" in n for n in rep.notes)
    assert "never counted as a confirmation" in str(rep)


def _judge(pred, vals):
    a = {"module": "m", "op": "mm"}
    return judge("n", a, "size", 1, pred, np.array(vals, dtype=float), None, WIDTHS,
                 Tolerance(), True)


@pytest.mark.parametrize("pred", [sp.Integer(1), sp.Rational(1, 2)])
def test_predicted_growth_with_blowup_is_undetermined(pred):
    r = _judge(pred, [[1.0], [2.0], [math.inf]])
    assert r.status == "inconclusive" and "measures nothing" in r.note


def test_blowup_at_the_widest_widths_refutes_theta_one():
    r = _judge(sp.Integer(0), [[1.0], [math.nan], [math.inf]])
    assert r.status == "refuted" and "from width 32 on" in r.note


@pytest.mark.parametrize("vals", [[[math.nan]] * 3, [[1.0], [math.nan], [1.0]]])
def test_non_finite_not_growing_with_width_is_undetermined(vals):
    r = _judge(sp.Integer(0), vals)
    assert r.status == "inconclusive" and r.note.startswith("undetermined")


class SkipNonFinite(torch.optim.SGD):
    """SGD that skips a step whose gradients are not finite (as a loss scaler does)."""

    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if all(torch.isfinite(x).all() for x in grads):
            super().step(closure)


def test_non_finite_loss_gradient_taints_the_rest_of_the_run():
    """The loss gradient is NaN at every update while every measured value stays finite (the
    optimizer skips such steps): the steps after it measure no training, so they are reported
    non-finite at the loss gradient, not judged as a model that did not move."""
    rep = check(MLP, WIDTHS, example_inputs=EX, steps=2, seeds=1, progress=False,
                make_optimizer=lambda m: SkipNonFinite(m.parameters(), lr=0.1),
                loss=lambda out, inputs: (out * float("nan")).sum())
    assert [(b.width, b.step, b.node) for b in rep.blowups] == [(w, 1, "d loss / d output")
                                                                for w in WIDTHS]
    later = [r for r in rep.records if r.step >= 1]
    assert later and all(r.blowup and r.status != "confirmed" for r in later)
    assert all(not r.blowup for r in rep.records if r.step == 0)
