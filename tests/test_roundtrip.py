"""Every report survives JSON (issue 11, item 5): ``X.from_json(x.to_json()) == x`` for Report,
CheckReport, Rules and Sweep from real small runs, with NaN / inf values among them, and one
encoding of non-finite numbers everywhere (``{"nonfinite": ...}``, never a bare NaN or a string
inside a numeric array)."""
import functools
import json
import math

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn as nn

from tensorprog import zoo
from tensorprog.jsonio import from_jsonable, jsonable, read_exponent, parse_expression
from tensorprog.measure.check import CheckReport, check
from tensorprog.predict.analyze import Report, analyze
from tensorprog.transfer import Sweep, sweep, teacher_student_data, zoo_optimizer
from tensorprog.transform.rules import Rules, rules


def no_bare_nonfinite(text: str):
    """The JSON parses strictly (no NaN / Infinity tokens) and no number is written as text."""
    def refuse(token):
        raise AssertionError(f"bare {token} in JSON")
    d = json.loads(text, parse_constant=refuse)

    def walk(x):
        if isinstance(x, list):
            kinds = {type(v) for v in x if v is not None}
            if float in kinds or int in kinds:  # a numeric array: numbers or {"nonfinite": ...}
                for v in x:
                    assert isinstance(v, (int, float, dict)) or v is None, (v, x[:5])
                    if isinstance(v, dict):
                        assert list(v) == ["nonfinite"] and v["nonfinite"] in ("nan", "inf", "-inf")
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
    walk(d)
    return d


class ZeroReadout(nn.Module):
    """An MLP with a zero-initialised readout: its init exponent is -oo (TP5 App. D.2)."""

    def __init__(self, w):
        super().__init__()
        self.inp, self.hid, self.out = nn.Linear(8, w), nn.Linear(w, w), nn.Linear(w, 3)
        nn.init.zeros_(self.out.weight)

    def forward(self, x):
        return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))


def inputs(w):
    return (torch.randn(4, 8),)


def test_report_round_trip():
    ex = zoo.example("gpt", param="sp")  # attention, problems, fix sets
    for rep in (analyze(ex.factory, (32, 64, 128), example_inputs=ex.example_inputs,
                        make_optimizer=ex.make_optimizer),
                analyze(ZeroReadout, (16, 32, 64), example_inputs=inputs, optimizer="adam")):
        text = rep.to_json()
        no_bare_nonfinite(text)
        back = Report.from_json(text)
        assert isinstance(back, Report) and back == rep
        assert back.to_json() == text and str(back) == str(rep)
        for name, p in rep.params.items():  # exponents come back as SymPy values
            assert back.params[name].init_exp == p.init_exp and back.params[name].abc == p.abc
    assert "inf" in text  # the zero readout's exponent


def test_check_report_round_trip_with_nan_and_inf(tmp_path):
    # SGD at lr 1e30: the first update overflows, so later measurements are inf / nan
    rep = check(ZeroReadout, (16, 32, 64), example_inputs=inputs, steps=2, seeds=1,
                device="cpu", progress=False,
                make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=1e30))
    vals = [v for r in rep.records for vs in r.values.values() for v in vs]
    assert any(math.isnan(v) for v in vals) or any(math.isinf(v) for v in vals)
    path = tmp_path / "check.json"
    text = rep.to_json(str(path))
    no_bare_nonfinite(text)
    back = CheckReport.from_json(str(path))
    assert isinstance(back, CheckReport) and back == rep and back.to_json() == text
    assert back.verdict == rep.verdict and back.counts() == rep.counts()
    for a, b in zip(rep.records, back.records):
        assert a.predicted == b.predicted and a.status == b.status
        for w in a.values:
            np.testing.assert_array_equal(a.values[w], b.values[w])  # nan where nan
    assert str(back) == str(rep)


def test_rules_round_trip():
    ex = zoo.example("gpt", param="sp")
    for convention in ("table3", "unit"):
        r = rules(ex.factory, (32, 64, 128), example_inputs=ex.example_inputs,
                  convention=convention)
        text = r.to_json()
        back = Rules.from_json(text)
        assert isinstance(back, Rules) and back == r and back.to_json() == text
        assert str(back) == str(r) and back.to_pytorch() == r.to_pytorch()
        for name, p in r.params.items():
            assert sp.simplify(back.params[name].init_var - p.init_var) == 0


def test_sweep_round_trip_with_divergence_and_a_partial_sweep(tmp_path):
    relu = functools.partial(zoo.MLP, param="sp", depth=2, d_in=8, d_out=3, nonlinearity="relu")
    s = sweep(relu, (16, 32), (1e-2, 1e3), steps=12, backend="serial", progress=False,
              data=teacher_student_data(d_in=8, d_out=3, batch_size=16, teacher_width=32),
              make_optimizer=zoo_optimizer("sgd"))
    assert np.isinf(s.losses).any() and np.isnan(s.histories).any()
    text = s.to_json(str(tmp_path / "s.json"))
    no_bare_nonfinite(text)
    back = Sweep.from_json(str(tmp_path / "s.json"))
    assert back == s and back.to_json() == text
    np.testing.assert_array_equal(back.losses, s.losses)
    np.testing.assert_array_equal(back.histories, s.histories)  # inf, then nan after divergence
    # a sweep stopped early: trials not run stay "not run" (nan), not "diverged" (inf)
    losses = s.losses.copy()
    losses[1, 0, 0] = np.nan
    part = Sweep(widths=s.widths, lrs=s.lrs, losses=losses, pending=np.isnan(losses),
                 meta={"partial": "interrupted after 3 of 4 trials"})
    assert part.partial and not part.diverged[1, 0, 0] and part.verdict == "inconclusive"
    back = Sweep.from_json(part.to_json())
    assert back == part and back.partial and np.isnan(back.losses[1, 0, 0])
    assert "PARTIAL" in str(back)


def test_one_encoding_of_non_finite_numbers():
    d = {"a": [1.0, math.nan, math.inf, -math.inf, None], "e": sp.oo, "n": np.array([np.nan, 2])}
    enc = jsonable(d)
    assert enc["a"] == [1.0, {"nonfinite": "nan"}, {"nonfinite": "inf"}, {"nonfinite": "-inf"}, None]
    assert enc["e"] == "inf" and enc["n"] == [{"nonfinite": "nan"}, 2.0]
    back = from_jsonable(json.loads(json.dumps(enc, allow_nan=False)))
    assert math.isnan(back["a"][1]) and back["a"][2] == math.inf and back["a"][3] == -math.inf


def test_readers_parse_and_never_evaluate():
    assert read_exponent("-1/2") == sp.Rational(-1, 2) and read_exponent("-inf") == -sp.oo
    assert read_exponent("zero") == "zero" and read_exponent(None) is None
    fan_in = sp.Symbol("fan_in", positive=True)
    assert parse_expression("1/sqrt(fan_in)", {"fan_in": fan_in}) == 1 / sp.sqrt(fan_in)
    for bad in ("__import__('os').system('true')", "fan_in.__class__", "exp(fan_in)", "x"):
        with pytest.raises(ValueError):
            parse_expression(bad, {"fan_in": fan_in})
