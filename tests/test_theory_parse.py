"""Exponent strings are parsed, never evaluated (issue 11 item 4): ``sympify`` runs its string as
Python, so a string reaching it from ``ABC`` / ``preset`` / ``uniform`` / the largest stable LR /
the CLI could run a payload. Every entry point goes through ``theory.parse.parse_exponent``."""
from fractions import Fraction

import pytest
import sympy as sp

from tensorprog.errors import TensorprogError
from tensorprog.theory import ABC, TheoryError, max_stable_lr_exponent, preset, uniform
from tensorprog.theory.parse import ExponentParseError, parse_exponent


def _payloads(marker):
    """Strings that run code (creating ``marker``) or reach Python objects when evaluated."""
    return [
        f"__import__('os').system('touch {marker}')",
        f"__import__('pathlib').Path('{marker}').touch()",
        "().__class__.__bases__[0].__subclasses__()",
        "Symbol('x').__class__",
        "(1).__class__",
        "x.__dict__",
        "open('/etc/passwd')",
        "Integer(1)",
        "lambda: 1",
        "[1][0]",
        "__builtins__",
    ]


def _entry_points(s):
    """Every public place a user exponent string enters the theory (and the CLI's readers)."""
    from tensorprog.cli.analyze import parse_lr_rule
    from tensorprog.cli.explain import rationals
    from tensorprog.text.explain_abc import explain_preset

    return {
        "ABC a": lambda: ABC([s, 0, "1/2"], [0, "1/2", "1/2"], 0),
        "ABC b": lambda: ABC([0, 0, 0], [s, "1/2", "1/2"], 0),
        "ABC c": lambda: ABC([0, 0, 0], [0, "1/2", "1/2"], s),
        "ABC per-layer c": lambda: ABC([0, 0, 0], [0, "1/2", "1/2"], [0, s, 0]),
        "preset c": lambda: preset("SP", 2, c=s),
        "uniform": lambda: uniform(s),
        "shift": lambda: preset("muP").shift(s),
        "max_stable_lr_exponent": lambda: max_stable_lr_exponent([0, s, 0], [0, "1/2", "1/2"]),
        "explain_preset lr_exponent": lambda: explain_preset("muP", lr_exponent=s),
        "explain_preset a": lambda: explain_preset(a=[s, 0, 0], b=[0, 0, 0]),
        "cli --a": lambda: rationals([s], "--a"),
        "cli --lr-rule": lambda: parse_lr_rule([f"hidden={s}"]),
    }


@pytest.mark.parametrize("which", list(_entry_points("0")))
def test_payloads_are_rejected_and_nothing_runs(which, tmp_path):
    marker = tmp_path / "pwned"
    for s in _payloads(marker):
        with pytest.raises(TensorprogError):
            _entry_points(s)[which]()
        assert not marker.exists(), f"{which} ran the payload {s!r}"


def test_the_issue_payload_does_not_run():
    """The exact payload of the issue (today's ``sympify`` runs it and creates /tmp/pwned)."""
    import os

    path = "/tmp/pwned"
    if os.path.exists(path):
        os.remove(path)
    with pytest.raises(TheoryError, match="call is not allowed"):
        ABC(a=["__import__('os').system('touch /tmp/pwned')", 0, 0], b=[0, 0, 0], c=0)
    assert not os.path.exists(path)


@pytest.mark.parametrize("text, expected", [
    # expected values from Python's exact fractions, independently of sympy's parser
    ("0", Fraction(0)), ("1/2", Fraction(1, 2)), ("-1/2", Fraction(-1, 2)),
    ("-0.5", Fraction(-1, 2)), ("0.1", Fraction(1, 10)), ("1e-3", Fraction(1, 1000)),
    ("(1 - 1/4) / 2", Fraction(3, 8)), ("2**-1", Fraction(1, 2)), ("+3 * 2 - 1", Fraction(5)),
    (" 3/2 ", Fraction(3, 2)), ("(1/2)**2", Fraction(1, 4)),
])
def test_valid_exponents_are_exact(text, expected):
    v = parse_exponent(text)
    assert isinstance(v, sp.Rational)
    assert (v.p, v.q) == (expected.numerator, expected.denominator)


def test_infinity_and_symbols():
    assert parse_exponent("oo") == sp.oo and parse_exponent("inf") == sp.oo
    assert parse_exponent("-oo") == -sp.oo
    r = sp.Symbol("r")
    assert parse_exponent("(1 - r)/2") == (1 - r) / 2
    with pytest.raises(ExponentParseError, match="name 'r'"):
        parse_exponent("r", symbols=False)


@pytest.mark.parametrize("text", ["", "1/0", "9**9**9", "((9**64)**64)**64", "1 +", "True",
                                  "'1'", "1 < 2", "x" * 300, "1 if 1 else 0", "_x", "1 @ 2"])
def test_malformed_is_a_clear_error(text):
    with pytest.raises(ExponentParseError):
        parse_exponent(text)


def test_theory_reads_strings_as_exponents():
    """String exponents give the same parametrization as the numbers (TP4 muP, SGD, L = 2)."""
    h = sp.Rational(1, 2)
    p = ABC(["-1/2", "0", "0.5"], ["1/2"] * 3, "0")
    assert p.a == (-h, 0, h) and p.regime == "feature learning"
    assert p.equivalent(preset("muP", 2))
    assert ABC([0, 0], ["0", "oo"], 0).b[1] == sp.oo  # a zero-initialised readout
    assert uniform("1/4").r == sp.Rational(1, 4)


def test_report_printers_do_not_evaluate_text(tmp_path):
    """The exponent printers read strings too (exponents stored as text, e.g. read back from a
    JSON report): they parse, never evaluate."""
    from tensorprog.exponents import expr_text, fmt

    marker = tmp_path / "pwned"
    for s in _payloads(marker):
        with pytest.raises(TensorprogError):
            fmt(s)
        with pytest.raises(TensorprogError):
            expr_text(s)
    assert not marker.exists()
    assert fmt("-1/2") == "n^-1/2" and expr_text("1/fan_in") == "1/fan_in"
