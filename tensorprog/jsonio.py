"""Plain JSON for reports: exponents as strings ("1/2", "inf"), one ``to_json`` for every record."""
from __future__ import annotations

import json

import sympy as sp


def jsonable(x):
    """Numbers, strings and None as they are; SymPy values as text (oo -> "inf"); containers
    recursively; anything else as its str()."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, sp.Basic):
        return "inf" if x == sp.oo else "-inf" if x == -sp.oo else str(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return str(x)


class JSONMixin:
    """``to_json(path=None)`` for any class with a ``to_dict()``, and ``from_json`` to read it back
    (as the plain dict: the SymPy values, graph and propagation of a report are not rebuilt)."""

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, source: str) -> dict:
        """What ``to_json`` wrote, as a plain dict: ``source`` is a file path or the JSON text."""
        if not source.lstrip().startswith(("{", "[")):
            with open(source) as f:
                source = f.read()
        return json.loads(source)
