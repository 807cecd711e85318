"""A safe reader of exponent strings: ``"1/2"``, ``"-0.5"``, ``"(1 - r)/2"``, ``"oo"``.

``sympy.sympify`` evaluates its string as Python (``sympify("__import__('os').system(...)")``
runs the command), so no user text reaches it. ``parse_exponent`` reads the string with Python's
``ast`` parser (which only builds a tree, runs nothing) and accepts a tree made of

* numbers: integers and decimals (``0.1`` is exactly 1/10: decimals become Rationals);
* ``oo`` / ``inf`` / ``infinity`` (+oo; ``-oo`` by the unary minus);
* plain names (``r``, ``c``, ``a_1``): SymPy symbols, for symbolic exponents;
* ``+ - * / **`` and parentheses.

Anything else (calls, attribute access, subscripts, strings, lambdas, comparisons, names that
start with an underscore) is a ``TheoryError`` naming the offending piece. The tree is turned
into SymPy objects by hand, never through ``sympify`` or ``eval``.
"""
from __future__ import annotations

import ast
import math
import numbers
import re

import sympy as sp

from ..errors import TensorprogError

__all__ = ["parse_exponent", "exact_number", "ExponentParseError", "MAX_LENGTH", "MAX_POWER"]

#: Longest accepted string (an exponent is a short formula; this also bounds the parse's depth).
MAX_LENGTH = 200
#: Largest |integer power| accepted in ``x ** k`` (``9 ** 9 ** 9`` would not finish).
MAX_POWER = 64
#: Largest exact number (in bits) a power may build (``((9**64)**64)**64`` would not finish).
MAX_BITS = 4096

_INFINITY = {"oo", "inf", "infinity"}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_BINARY = {ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y,
           ast.Mult: lambda x, y: x * y, ast.Div: lambda x, y: x / y}


class ExponentParseError(TensorprogError, ValueError):
    """A string that is not an exponent formula (see ``parse_exponent``)."""


def parse_exponent(text: str, what: str = "exponent", *, symbols: bool = True) -> sp.Expr:
    """The exact SymPy value of an exponent string; ``ExponentParseError`` for anything else.

    ``symbols=False`` refuses names other than ``oo`` / ``inf`` (a purely numeric exponent).
    """
    if not isinstance(text, str):
        raise ExponentParseError(f"{what}: expected a string, got {type(text).__name__}")
    src = text.strip()
    if not src:
        raise ExponentParseError(f"{what}: empty string; write a number such as 0, 1/2 or -1")
    if len(src) > MAX_LENGTH:
        raise ExponentParseError(f"{what}: {len(src)} characters is too long for an exponent "
                                 f"(at most {MAX_LENGTH})")
    try:
        tree = ast.parse(src, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ExponentParseError(f"{what}: cannot read {text!r} as an exponent; write a number "
                                 "(0, 1/2, -0.5), oo, or arithmetic of those") from None
    return _build(tree.body, src, text, what, symbols)


def exact_number(x, what: str = "value") -> sp.Expr:
    """A finite real number given as an int, float, Fraction, SymPy number or a string such as
    "1/2", as an exact SymPy number (floats through their decimal form); ``ExponentParseError``
    otherwise (a bool, NaN, inf, a name, anything else). Strings go through ``parse_exponent``
    with ``symbols=False``: nothing is evaluated as Python."""
    if isinstance(x, bool) or type(x).__name__ == "bool_":
        raise ExponentParseError(f"{what}: expected a number, got the bool {x!r}")
    if isinstance(x, str):
        v = parse_exponent(x, what, symbols=False)
    elif isinstance(x, numbers.Rational):
        v = sp.Rational(x.numerator, x.denominator)
    elif isinstance(x, numbers.Real):
        if not math.isfinite(float(x)):
            raise ExponentParseError(f"{what}: expected a finite number, got {x!r}")
        v = sp.Rational(repr(float(x)))
    elif isinstance(x, sp.Basic) and x.is_number:
        v = x
    else:
        raise ExponentParseError(f"{what}: expected a number (e.g. 1, 0.5 or '1/2'), got "
                                 f"{type(x).__name__} {x!r}")
    if not (v.is_real and v.is_finite):
        raise ExponentParseError(f"{what}: expected a finite real number, got {x!r}")
    return v


def _refuse(text, what, piece):
    return ExponentParseError(
        f"{what}: {text!r} is not an exponent formula ({piece} is not allowed). Exponents are "
        "numbers (0, 1/2, -0.5), oo, names of symbols and + - * / ** with parentheses; nothing "
        "is evaluated as Python.")


def _build(node, src, text, what, symbols):
    rec = lambda n: _build(n, src, text, what, symbols)  # noqa: E731
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _refuse(text, what, f"the literal {v!r}")
        if isinstance(v, int):
            return sp.Integer(v)
        literal = ast.get_source_segment(src, node) or repr(v)
        try:
            return sp.Rational(literal.replace("_", ""))  # "0.1" -> 1/10 exactly
        except (TypeError, ValueError):
            if v == float("inf"):  # 1e999
                return sp.oo
            return sp.nsimplify(v, rational=True)
    if isinstance(node, ast.Name):
        name = node.id
        if name.lower() in _INFINITY:
            return sp.oo
        if symbols and _NAME.match(name):
            return sp.Symbol(name)
        raise _refuse(text, what, f"the name {name!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = rec(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        x, y = rec(node.left), rec(node.right)
        if isinstance(node.op, ast.Div) and y == 0:
            raise ExponentParseError(f"{what}: {text!r} divides by zero")
        return _BINARY[type(node.op)](x, y)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        x, y = rec(node.left), rec(node.right)
        if y.is_number and (not y.is_finite or abs(y) > MAX_POWER):
            raise ExponentParseError(f"{what}: the power {y} in {text!r} is too large for an "
                                     f"exponent (|power| <= {MAX_POWER})")
        if x.is_number and y.is_number and x == 0 and y.is_negative:
            raise ExponentParseError(f"{what}: {text!r} divides by zero")
        if isinstance(x, sp.Rational) and isinstance(y, sp.Integer) and \
                max(abs(x.p).bit_length(), x.q.bit_length()) * abs(int(y)) > MAX_BITS:
            raise ExponentParseError(f"{what}: {text!r} is too large a number for an exponent")
        return x ** y
    piece = {ast.Call: "a call", ast.Attribute: "attribute access", ast.Subscript: "indexing",
             ast.Lambda: "a lambda", ast.Compare: "a comparison", ast.BoolOp: "a boolean operator"
             }.get(type(node), f"`{type(node).__name__}`")
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        piece = f"the operator `{type(node.op).__name__}`"
    raise _refuse(text, what, piece)
