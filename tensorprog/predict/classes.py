"""The class rules: what SP, NTK and muP require of each parameter use (TP5 Table 3, App J).

A use's two invariants of the abc symmetry (TP4 Eq. 5, TP4b Prop 2.2.3): the effective init
scale A = a + b and the effective update scale U = 2a + c (SGD) or a + c (Adam-like, with the
Adam-equivalent learning rate of the parameter's optimizer geometry).
"""
from __future__ import annotations

import sympy as sp

from ..ops import NEG, ZERO

CLASSES = ("muP", "SP", "NTK")
INF = sp.oo


# ----------------------------------------------------------------------------- class rules


def expected(cls: str, role: str, ai, ao, optimizer: str):
    """(init rule, update offset) of class ``cls`` for a parameter use.

    init rule: ("eq", v) means A = v; ("eq0", v) means A = v or zero init; ("ge", v) means
    A >= v (zero init allowed);
    ("in", vs) means A in vs. Update: U = offset + c0, where c0 is a global LR exponent that
    SP and NTK leave free and muP fixes at 0. ai, ao: fan-in and fan-out width exponents.
    Sources: muP - TP5 Table 3; SP - PyTorch's 1/fan_in init or a constant std (GPT-2, BERT,
    Llama's initializer_range), no multipliers, one global LR; NTK - TP4 §2: unit init with
    multiplier fan_in^{-1/2}.
    """
    sgd = optimizer == "sgd"
    if role in ("vector", "scalar"):
        if cls == "muP":
            return ("ge", ZERO), (-ao if sgd and role == "vector" else ZERO)
        return ("ge", ZERO), ZERO
    if cls == "muP":  # zero init is allowed for input and hidden weights too (TP5 App D.2)
        return {
            "input": (("eq0", ai / 2), -ao if sgd else ZERO),
            # SGD: LR fan_out / fan_in (Table 3's 1 when both ~ n; Yang-Simon-Bernstein 2023)
            "hidden": (("eq0", ai / 2), (ai - ao) if sgd else ai),
            "output": (("ge", ai), ai),
        }[role]
    if cls == "SP":
        return ("in", (ai / 2, ZERO)), ZERO
    if cls == "NTK":
        return ("eq0", ai / 2), (ai if sgd else ai / 2)
    raise ValueError(cls)


def init_ok(rule, A) -> bool:
    kind, v = rule
    if kind == "eq":
        return A == v
    if kind == "eq0":
        return A == v or A == INF
    if kind == "ge":
        return A >= v
    return A in v or A == INF  # zero init is legal in every class (SP zero-inits readouts too)


# ----------------------------------------------------------------------------- records


def direction_exp(p, init_exp=None):
    """Entry size of one step's direction for Adam-like geometries (0 for Adam itself);
    ``init_exp`` overrides the parameter's own (a proposed fix's init)."""
    if p.step is None or not p.step.adam_like:
        return ZERO
    dims = [d if d is not None else ZERO for d in p.dims] + [ZERO, ZERO]
    ie = p.init_exp if init_exp is None else init_exp
    init = NEG if ie == "zero" else (ie if ie is not None else ZERO)
    return sp.nsimplify(p.step.direction(ZERO, init, dims[0], dims[1]))
