"""The verdict's records: per use, per parameter, per attention op, per problem (plain data)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy as sp

INF = sp.oo


@dataclass
class UseVerdict:
    node: str
    op: str
    role: str
    fan_in_exp: Any
    fan_out_exp: Any
    mult_exp: Any
    A: Any  # effective init exponent a + b (oo for zero init)
    U: Any  # effective update exponent 2a + c (SGD) or a + c (Adam); None without LR
    r: Any = None  # r_l of this layer: its own update moves its output by n^{-r}
    classes: list[str] = field(default_factory=list)


@dataclass
class ParamVerdict:
    name: str
    role: str
    shape: tuple
    trainable: bool
    fan_in_exp: Any
    fan_out_exp: Any
    init_exp: Any
    mult_exp: Any
    lr_exp: Any
    uses: list[UseVerdict]
    classes: list[str]
    fixes: list[str]  # one complete alternative per string (the text of ``fix_sets``)
    fix_sets: list["FixSet"] = field(default_factory=list)

    @property
    def abc(self):
        """(a, b, c) of the primary use in TP4's convention."""
        a = -self.mult_exp
        b = INF if self.init_exp == "zero" else -self.init_exp
        c = None if self.lr_exp in (None, "zero") else -self.lr_exp
        return a, b, c


@dataclass
class Change:
    """One change of a width exponent: ``what`` is "init" (std), "multiplier" (on the use at
    ``node``) or "lr" (the learning rate the optimizer is given); ``now`` and ``to`` are the
    exponents of n (``now`` may be "zero" for a zero init). Apply it by multiplying the current
    value by (width / base_width) ** (to - now)."""

    what: str
    now: Any
    to: Any
    node: str | None = None

    @property
    def factor_exp(self):
        return self.to - (0 if self.now in (None, "zero") else self.now)


@dataclass
class FixSet:
    """One complete way to put a parameter in muP (TP5 Table 3, Table 8, or the abc-symmetric
    form that keeps the current multiplier): every change it needs, applied together, and the
    resulting init, multiplier and LR exponents."""

    name: str
    changes: list[Change]
    init_exp: Any
    mult_exp: Any
    lr_exp: Any
    text: str = ""


@dataclass
class AttentionVerdict:
    node: str
    module: str
    d_head_exp: Any
    scale_exp: Any
    kind: str  # "1/d", "1/sqrt(d)", "fixed d_head", or "n^e"
    logits_init: Any
    logits_trained: Any



@dataclass
class Problem:
    node: str
    module: str
    what: str  # "blows up" / "vanishes"
    when: str  # "at init" / "after training"
    exponent: Any
