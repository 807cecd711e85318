"""Width exponents: fit size ~ n^alpha across widths, exactly where the data are exact.

Two kinds of fit, kept apart on purpose:

* ``exact_exponent``: tensor dimensions and scalar constants are deterministic functions of the
  width, so alpha must reproduce every measurement to rounding error; anything else is "no power
  law" (for example ``n + 1`` or ``2 ** n``), reported rather than rounded.
* ``noisy_exponent``: initial weight scales are random; the slope of log RMS against log width is
  fitted by least squares and snapped to the nearest multiple of 1/4 (every parametrization in the
  Tensor Programs papers uses halves; quarters leave room for mixed rules), with the raw slope kept.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np
import sympy as sp

from .theory.parse import parse_exponent

#: Largest denominator an exact exponent may have (n^{1/8} and finer are not parametrizations).
MAX_DENOMINATOR = 8


def _slope(widths: Sequence[float], values: Sequence[float]) -> float:
    x = np.log(np.asarray(widths, dtype=float))
    y = np.log(np.asarray(values, dtype=float))
    if len(x) == 2:
        return float((y[1] - y[0]) / (x[1] - x[0]))
    return float(np.polyfit(x, y, 1)[0])


def exact_exponent(widths: Sequence[float], values: Sequence[float], rtol: float = 1e-6):
    """alpha with |values| = C * width^alpha exactly (to ``rtol``), as a SymPy Rational.

    Returns ``None`` when the values follow no power law of small denominator. A value that is
    zero at every width returns ``None`` too; callers test for zero first where it matters.
    """
    vals = [abs(float(v)) for v in values]
    if any(v == 0 or not math.isfinite(v) for v in vals):
        return None
    if all(v == vals[0] for v in vals):
        return sp.Integer(0)
    alpha = Fraction(_slope(widths, vals)).limit_denominator(MAX_DENOMINATOR)
    a = float(alpha)
    c = [v / w**a for v, w in zip(vals, widths)]
    if max(c) - min(c) > rtol * max(c):
        return None
    return sp.Rational(alpha.numerator, alpha.denominator)


def noisy_exponent(widths: Sequence[float], values: Sequence[float], step: Fraction = Fraction(1, 4)):
    """(snapped Rational, fitted slope) for random-valued measurements such as init RMS."""
    slope = _slope(widths, values)
    snapped = Fraction(round(slope / step)) * step
    return sp.Rational(snapped.numerator, snapped.denominator), slope


#: How every report and printer spells a quantity that is exactly zero (exponent -oo).
EXACT_ZERO = "0 (exact)"


def fmt(e) -> str:
    """The one printer of a width exponent e (a quantity ~ n^e), used by every report.

    0 -> '1', 1 -> 'n', -1/2 -> 'n^-1/2'; exactly zero (e = -oo, or the string "zero" that
    trace records for a zero init) -> '0 (exact)'; +oo -> 'inf'; unknown (None) -> '?'.
    """
    if e is None:
        return "?"
    if isinstance(e, str):
        if e in ("zero", "-inf", "-oo"):
            return EXACT_ZERO
        if e in ("inf", "oo"):
            return "inf"
        e = parse_exponent(e)  # never sympify text: it evaluates it as Python
    e = sp.nsimplify(e)
    if e == -sp.oo:
        return EXACT_ZERO
    if e == sp.oo:
        return "inf"
    if e == 0:
        return "1"
    if e == 1:
        return "n"
    return f"n^{e}" if e.is_Rational or e.is_Atom else f"n^({e})"


def expr_text(expr) -> str:
    """A rule (an expression in fan_in, fan_out, width_mult) as text: '1/fan_in'."""
    if expr is None:
        return "-"
    num, den = sp.fraction(parse_exponent(expr, "rule") if isinstance(expr, str) else sp.sympify(expr))
    text = str(num) if den == 1 else (f"{num}/{den}" if den.is_Atom or den.is_Pow else f"{num}/({den})")
    return text.replace("**", "^")
