"""Plain JSON for reports: one encoder (``jsonable``) and one decoder (``from_jsonable``) for every
record, and ``JSONMixin``: ``to_json`` / ``from_json`` / equality by content.

The encoding, the same in every file tensorprog writes:

* exponents (SymPy values) are text: "1/2", "-1", "inf" / "-inf" for +-oo (``read_exponent``
  reads them back); expressions in named symbols likewise ("1/fan_in", ``parse_expression``);
* a non-finite float (NaN, +-inf: a diverged run, a value that was not measured) is the object
  ``{"nonfinite": "nan"}`` / ``{"nonfinite": "inf"}`` / ``{"nonfinite": "-inf"}`` wherever it
  stands, numeric arrays included (never a bare NaN, which is not JSON, and never a string where
  a number belongs); ``null`` means "no value" (None), nothing else;
* NumPy arrays are nested lists, NumPy scalars plain numbers.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re

import sympy as sp

__all__ = ["jsonable", "from_jsonable", "dumps", "read_json", "read_exponent",
           "parse_expression", "JSONMixin", "NONFINITE"]

NONFINITE = "nonfinite"


def jsonable(x):
    """Numbers, strings and None as they are (non-finite floats as ``{"nonfinite": ...}``); SymPy
    values as text (oo -> "inf"); NumPy arrays and scalars as lists and numbers; containers
    recursively; anything else as its str()."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        if math.isfinite(x):
            return x
        return {NONFINITE: "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
    if isinstance(x, sp.Basic):
        return "inf" if x == sp.oo else "-inf" if x == -sp.oo else str(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and type(x).__module__ == "numpy":  # arrays and scalars
        return jsonable(x.tolist())
    return str(x)


def from_jsonable(x):
    """Inverse of ``jsonable`` for numbers: ``{"nonfinite": "nan"}`` -> float("nan"), recursively."""
    if isinstance(x, dict):
        if len(x) == 1 and NONFINITE in x:
            return float(x[NONFINITE])
        return {k: from_jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_jsonable(v) for v in x]
    return x


def dumps(d) -> str:
    """``d`` as JSON text in the encoding above (indented; a bare NaN is an error)."""
    return json.dumps(jsonable(d), indent=1, allow_nan=False)


def read_json(source: str):
    """Decoded JSON from a file path or from the JSON text itself."""
    if not source.lstrip().startswith(("{", "[")) and os.path.exists(source):
        with open(source) as f:
            source = f.read()
    return from_jsonable(json.loads(source))


_RATIONAL = re.compile(r"[+-]?\d+(/\d+)?")


def read_exponent(x):
    """An exponent as ``jsonable`` wrote it -> SymPy: "1/2" -> Rational(1, 2), "inf" -> oo,
    "-inf" -> -oo; None stays None; other text ("zero", "?", an expression) is returned as it is.
    Never evaluates anything."""
    if not isinstance(x, str):
        return x
    s = x.strip()
    if s in ("inf", "oo"):
        return sp.oo
    if s in ("-inf", "-oo"):
        return -sp.oo
    if _RATIONAL.fullmatch(s):
        return sp.Rational(s)
    return x


_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b}


def parse_expression(text, symbols: dict):
    """A SymPy expression as ``str()`` printed it, in the named ``symbols`` ({name: Symbol}):
    numbers, + - * / **, sqrt(...) and ``oo`` only (read from Python's syntax tree; names,
    attributes and other calls are refused with ValueError, nothing is evaluated). None -> None."""
    if text is None or not isinstance(text, str):
        return text

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return sp.Integer(node.value) if isinstance(node.value, int) else sp.Float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Name):
            if node.id in symbols:
                return symbols[node.id]
            if node.id == "oo":
                return sp.oo
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id == "sqrt" and len(node.args) == 1 and not node.keywords:
            return sp.sqrt(ev(node.args[0]))
        raise ValueError(f"not an expression in {sorted(symbols)}: {text!r}")

    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an expression: {text!r}") from None
    return ev(tree)


class JSONMixin:
    """``to_json(path=None)`` for any class with a ``to_dict()``; ``from_json`` reads it back
    through the class's ``from_dict`` (the plain decoded dict for a class without one, such as
    ``WidthGraph``). Two objects are equal when their ``to_dict()`` encode the same (a report
    read back from JSON equals the one written)."""

    def to_json(self, path: str | None = None) -> str:
        text = dumps(self.to_dict())
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, source: str):
        """What ``to_json`` wrote: ``source`` is a file path or the JSON text."""
        d = read_json(source)
        from_dict = getattr(cls, "from_dict", None)
        return from_dict(d) if from_dict is not None else d

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return jsonable(self.to_dict()) == jsonable(other.to_dict())

    __hash__ = None
