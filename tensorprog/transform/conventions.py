"""The muP conventions as tables: per kind of parameter (input-like, hidden, output-like,
scalar-like), its init variance, multiplier and SGD / Adam learning rate as monomials in its
fan_in and fan_out. TP5 Table 3 (init and LR only), Table 8 (the mup package's readout
multiplier 1/fan_in), Table 9 (TP4's form), and "unit" (u-muP's unit init, arXiv 2407.17465,
obtained from Table 3 by TP5 Lemma J.1's symmetry with t = Table 3's init std).
"""
from __future__ import annotations

import sympy as sp

from ..errors import TensorprogError

__all__ = ["FAN_IN", "FAN_OUT", "WIDTH_MULT", "KINDS", "CONVENTIONS", "CONVENTION_NAMES", "TABLES",
           "convention_table", "check_convention", "width_exp", "fan_power", "kind_of"]

FAN_IN, FAN_OUT, WIDTH_MULT = sp.symbols("fan_in fan_out width_mult", positive=True)
_N = sp.Symbol("n", positive=True)  # the width, for exponents

KINDS = ("input-like", "hidden", "output-like", "scalar-like")
CONVENTIONS = ("table3", "table8", "table9", "unit")
CONVENTION_NAMES = {
    "table3": "TP5 Table 3 (init and learning rate only)",
    "table8": "TP5 Table 8 (the mup package: readout multiplier 1/fan_in)",
    "table9": "TP5 Table 9 (TP4's form: input multiplier sqrt(fan_out), readout 1/sqrt(fan_in))",
    "unit": "unit init with multipliers (u-muP's form, muP's learning rates)",
}
_ONE = sp.Integer(1)


def _table3():
    return {
        #              init var          multiplier  SGD LR          Adam LR
        "input-like": (1 / FAN_IN, _ONE, FAN_OUT, _ONE),
        "hidden": (1 / FAN_IN, _ONE, FAN_OUT / FAN_IN, 1 / FAN_IN),
        "output-like": (1 / FAN_IN**2, _ONE, 1 / FAN_IN, 1 / FAN_IN),
        "scalar-like": (_ONE, _ONE, _ONE, _ONE),
    }


def _tables():
    t3 = _table3()
    t8 = dict(t3, **{"output-like": (_ONE, 1 / FAN_IN, FAN_IN, _ONE)})
    t9 = dict(t3, **{
        "input-like": (1 / FAN_OUT, sp.sqrt(FAN_OUT), _ONE, 1 / sp.sqrt(FAN_OUT)),
        "output-like": (1 / FAN_IN, 1 / sp.sqrt(FAN_IN), _ONE, 1 / sp.sqrt(FAN_IN)),
    })
    unit = {}
    for kind, (var, mult, sgd, adam) in t3.items():  # Lemma J.1 with t = Table 3's init std
        t = sp.sqrt(var)
        unit[kind] = (_ONE, sp.simplify(mult * t), sp.simplify(sgd / t**2), sp.simplify(adam / t))
    return {"table3": t3, "table8": t8, "table9": t9, "unit": unit}


TABLES = _tables()


def convention_table(convention: str) -> dict[str, dict[str, sp.Expr]]:
    """{kind: {"init_var", "multiplier", "lr_sgd", "lr_adam"}} of a convention (SymPy in
    FAN_IN / FAN_OUT)."""
    check_convention(convention)
    return {k: dict(zip(("init_var", "multiplier", "lr_sgd", "lr_adam"), v))
            for k, v in TABLES[convention].items()}


def check_convention(convention):
    if convention not in CONVENTIONS:
        raise TensorprogError(f"unknown convention {convention!r}; choose one of: "
                              f"{', '.join(CONVENTIONS)} ({'; '.join(f'{k}: {v}' for k, v in CONVENTION_NAMES.items())}).")


def width_exp(expr, ai, ao):
    """Width exponent of a monomial in FAN_IN, FAN_OUT, WIDTH_MULT given fan exponents."""
    e = sp.sympify(expr).subs({FAN_IN: _N**ai, FAN_OUT: _N**ao, WIDTH_MULT: _N})
    e = sp.powsimp(sp.expand_power_base(e, force=True), force=True)
    _, k = e.as_coeff_exponent(_N)
    return sp.nsimplify(k)


def fan_power(e, ai, ao):
    """A width exponent as a power of the use's own fan_in (or fan_out, or width_mult)."""
    e = sp.nsimplify(e)
    if e == 0:
        return _ONE
    if ai:
        return FAN_IN ** (e / ai)
    if ao:
        return FAN_OUT ** (e / ao)
    return WIDTH_MULT**e


def kind_of(ai, ao) -> str:
    """input-like / hidden / output-like / scalar-like from fan-in and fan-out exponents."""
    i, o = ai is None or ai > 0, ao is None or ao > 0
    return {(False, True): "input-like", (True, True): "hidden", (True, False): "output-like",
            (False, False): "scalar-like"}[(i, o)]
