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
    fixes: list[str]

    @property
    def abc(self):
        """(a, b, c) of the primary use in TP4's convention."""
        a = -self.mult_exp
        b = INF if self.init_exp == "zero" else -self.init_exp
        c = None if self.lr_exp in (None, "zero") else -self.lr_exp
        return a, b, c


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
