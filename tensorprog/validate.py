"""The one validation of widths, base widths and step counts, for every public entry point.

``trace``, ``analyze``, ``check``, ``rules``, ``apply_mup`` and ``sweep`` take widths; each calls
``check_widths`` with its own error class, so ``widths="128"`` (which iterates as "1", "2", "8"),
``128.5`` (truncated by ``int``), ``True`` (an int to Python), repeated or too few widths are
one clear error everywhere, never a silent coercion.

Integers: a Python or NumPy integer; a float only when it is exactly integral (``128.0`` is
128, so ``2.0 ** k`` and ``np.logspace`` widths work; ``128.5`` is an error); never a bool or a
string.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any

from .errors import TensorprogError

__all__ = ["as_int", "positive_int", "check_widths", "check_base_width", "check_steps",
           "positive_number", "check_file_path"]


def as_int(value: Any, what: str, error=TensorprogError) -> int:
    """``value`` as an int under the rule above, else ``error`` naming ``what``."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise error(f"{what} must be an integer, got the bool {value!r}.")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, numbers.Real):
        raise error(f"{what} must be an integer, got {value!r}: widths, steps and seeds must be "
                    "whole numbers (they are never rounded).")
    raise error(f"{what} must be an integer, got {type(value).__name__} {value!r}.")


def positive_int(value: Any, what: str, error=TensorprogError, why: str = "") -> int:
    """``value`` as a positive int (``as_int``'s rule), else ``error`` naming ``what``."""
    n = as_int(value, what, error)
    if n < 1:
        raise error(f"{what} must be a positive integer{' (' + why + ')' if why else ''}, "
                    f"got {value!r}.")
    return n


def positive_number(value: Any, what: str, error=TensorprogError, *, zero: bool = False) -> float:
    """A finite real number > 0 (``zero=True``: >= 0), never a bool or a string."""
    bound = ">= 0" if zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{what} must be a finite number {bound}, got {type(value).__name__} "
                    f"{value!r}.")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise error(f"{what} must be a finite number {bound}, got {value!r}.")
    return v


def check_widths(widths: Any, *, error=TensorprogError, what: str = "widths", minimum: int = 2,
                 why: str = "to fit exponents") -> list[int]:
    """Sorted distinct positive int widths, at least ``minimum`` of them; ``error`` otherwise."""
    example = "e.g. depths=(2, 4, 8)" if "depth" in what else "e.g. widths=(64, 128, 256)"
    noun = "depths" if "depth" in what else "widths"
    if isinstance(widths, (str, bytes)) or not _iterable(widths):
        raise error(f"{what} must be a sequence of positive integers ({example}), got "
                    f"{type(widths).__name__} {widths!r}.")
    ws = [as_int(w, f"each of {what}", error) for w in widths]
    bad = [w for w in ws if w <= 0]
    if bad:
        raise error(f"{what} must be positive, got {bad[0]} in {list(widths)!r} ({example}).")
    if len(set(ws)) != len(ws):
        dup = sorted({w for w in ws if ws.count(w) > 1})
        raise error(f"{what} has repeated values {dup} in {list(widths)!r}: give each value once.")
    if len(ws) < minimum:
        word = {1: "one", 2: "two", 3: "three"}.get(minimum, str(minimum))
        raise error(f"{what} needs at least {minimum} values (at least {word} distinct positive "
                    f"{noun} {why}), got {list(widths)!r}. "
                    f"Pass {example}; three or more make the fit checkable.")
    return sorted(ws)


def check_base_width(base_width: Any, error=TensorprogError) -> int:
    """A positive int base width (the width where every muP factor is 1)."""
    b = as_int(base_width, "base_width", error)
    if b <= 0:
        raise error(f"base_width must be a positive integer (the width where every muP factor "
                    f"is 1), got {base_width!r}.")
    return b


def check_steps(steps: Any, error=TensorprogError, what: str = "steps") -> int:
    """A positive int number of training steps (0 steps train nothing: no verdict to give)."""
    if isinstance(steps, (bool, float)) or not isinstance(steps, numbers.Integral):
        raise error(f"{what} must be a positive integer (training steps), got {steps!r}.")
    s = as_int(steps, what, error)
    if s < 1:
        raise error(f"{what} must be a positive integer (training steps), got {steps!r}: with no "
                    "step there is no training to analyse.")
    return s


def _iterable(x) -> bool:
    try:
        iter(x)
    except TypeError:
        return False
    return True


def check_file_path(path: Any, what: str, error=TensorprogError, *, example: str = "out.txt",
                    read: bool = False, why: str = "") -> str:
    """``path`` names a file an output can go to, checked before a run so that a typo costs
    nothing: a str / PathLike, not a folder, in a folder that exists, and writable (``read``:
    also readable, for a file read back such as ``tune``'s store): the file if it exists, else
    its folder. ``what`` names it in the messages (``--json 'r.json'``, ``store='t.jsonl'``);
    ``example``: a file name to suggest inside a folder; ``why``: why a missing folder matters.
    Returns the path as a str."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise error(f"{what} must be a file path (str), e.g. {example!r}; got {path!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise error(f"{what} is a directory; give a file name inside it, e.g. "
                    f"{os.path.join(path, example)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise error(f"{what}: the directory {folder!r} does not exist; create it first or write "
                    f"elsewhere{' (' + why + ')' if why else ''}")
    mode = os.W_OK | (os.R_OK if read else 0)
    if not os.access(path, mode) if os.path.exists(path) else not os.access(folder, os.W_OK):
        raise error(f"{what} is not {'readable and ' if read else ''}writable (permissions); fix "
                    "them or write elsewhere")
    return path
