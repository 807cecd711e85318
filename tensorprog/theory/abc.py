"""Closed-form Tensor Programs theory of the L-hidden-layer MLP, in exact SymPy.

An abc-parametrization (TP4 §2) of an MLP of width n with L hidden layers sets, for layer
l = 1..L+1 (1 = input layer with finite fan-in, 2..L hidden n x n, L+1 = readout)::

    W^l = n^{-a_l} w^l,   w^l_ij ~ N(0, n^{-2 b_l}),   learning rate eta * n^{-c}   (or n^{-c_l})

Everything here follows the papers: TP4 (Yang & Hu 2021, arXiv 2011.14522), TP4b (Yang &
Littwin 2023, arXiv 2308.01814) and TP5 (Yang et al. 2022, arXiv 2203.03466):

* SGD-like optimizers: r from TP4 Def 3.2, per-layer r_l from TP4 Prop 5.3, stability TP4
  Thm 3.3, nontriviality Thm 3.4, feature learning Thm 3.6, kernel regime Thm 3.8.
* Adam-like (entrywise, scale-invariant) optimizers: r_l and the conditions of TP4b
  Thm 2.8.12 (stable) and Thm 2.8.15 (nontrivial), plus TP4 Thm 3.3's initialisation
  conditions, which TP4b assumes throughout (a stable *initialisation* is needed whatever the
  optimizer).

Per-layer learning rates under SGD (not in TP4, which uses one global c) are handled by the
same derivation with c replaced by the exponent of the layer being updated:

    r_l = min(a_{L+1} + b_{L+1}, 2 a_{L+1} + c_{L+1}) + c_l - 1 + 2 a_l + I(l = 1)

(the min is the size of the trained readout weights, which scale the backward pass; the
update of layer l adds n^{-c_l - 2 a_l}), and 2 a_{L+1} + c becomes 2 a_{L+1} + c_{L+1}.
With equal c_l this is exactly TP4 Def 3.2 / Prop 5.3.

Symbolic exponents are welcome: properties then return SymPy expressions and relationals
(``sympy.And`` etc.) instead of Python bools.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from fractions import Fraction
from typing import Any, Sequence

import sympy as sp
from sympy.logic.boolalg import BooleanAtom

from ..errors import TheoryError
from ..graph.optimizers import GEOMETRIES
from .updates import (SHIFT, alignment_name, layer_alignments, optimizer_classes,
                      optimizer_geometry, update_exponents)
from .parse import ExponentParseError, parse_exponent

__all__ = [
    "ABC", "Condition", "TheoryError", "OPTIMIZER_CLASSES", "optimizer_class", "preset",
    "uniform", "max_stable_lr_exponent",
]

HALF = sp.Rational(1, 2)


# --------------------------------------------------------------------------- optimizers

#: Which infinite-width theory an optimizer follows, by the geometry of its update
#: (``tensorprog.graph.optimizers``). "sgd": the update is linear in the gradient (TP4).
#: "adam": the update does not scale with the gradient's size (TP4b, eps -> 0): entrywise
#: (Adam family, RMSprop, Adagrad, Lion, sign methods), parameter-scaled (Adafactor) and
#: orthogonalised (Muon). A snapshot at import; ``optimizer_class`` also sees classes
#: registered later with ``register_optimizer``.
OPTIMIZER_CLASSES: dict[str, str] = optimizer_classes()


def _norm_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def optimizer_class(optimizer: Any) -> str:
    """'sgd' or 'adam' for a name ("AdamW", "sgd", "muon"), a geometry name or a torch.optim
    class or instance (read along its MRO, so subclasses of torch.optim.Adam count as Adam)."""
    geometry, _ = optimizer_geometry(optimizer)
    return "adam" if GEOMETRIES[geometry].adam_like else "sgd"


# --------------------------------------------------------------------------- helpers

def _sym(x: Any, what: str, zero_init: bool = False) -> sp.Expr:
    """An exponent as an exact SymPy expression (floats and decimal strings become Rationals).
    ``zero_init``: b may be +oo (or "zero"): a zero-initialised layer (TP5 App. D.2)."""
    if zero_init and (x == "zero" or x == "oo" or x == sp.oo or x == float("inf")):
        return sp.oo
    if isinstance(x, bool):
        raise TheoryError(f"{what}: expected a number, got the bool {x!r}")
    try:
        if isinstance(x, float):
            return sp.nsimplify(x, rational=True)
        if isinstance(x, Fraction):
            return sp.Rational(x.numerator, x.denominator)
        if isinstance(x, str):  # never sympify: it evaluates the string as Python
            value = parse_exponent(x, what)
        else:
            value = sp.sympify(x, strict=True)
    except ExponentParseError as err:
        raise TheoryError(str(err)) from None
    except (sp.SympifyError, TypeError, SyntaxError) as err:
        raise TheoryError(f"{what}: cannot read {x!r} as an exponent ({err})") from None
    if not isinstance(value, sp.Expr) or value.is_real is False:
        raise TheoryError(f"{what}: {x!r} is not a real exponent")
    return value


def _truth(value: Any) -> Any:
    """Python bool when SymPy could decide, the SymPy boolean otherwise."""
    return bool(value) if isinstance(value, (BooleanAtom, bool)) else value


def _fmt(x: Any) -> str:
    if isinstance(x, tuple):
        return "(" + ", ".join(_fmt(v) for v in x) + ")"
    return str(x)


@dataclass(frozen=True)
class Condition:
    """One theorem condition, evaluated: e.g. ('stable', 'r >= 0', -1, False, 'TP4 Thm 3.3').

    ``holds`` is a Python bool, or a SymPy boolean when the exponents are symbolic.
    """

    name: str
    expression_text: str
    value: Any
    holds: Any
    source: str


# --------------------------------------------------------------------------- ABC

@dataclass(frozen=True)
class ABC:
    """An abc-parametrization of the L-hidden-layer MLP (TP4 §2, TP4b Def 2.2.1 with d = 0).

    ``a``, ``b``: length L+1 (input, hidden..., readout); a b may be oo (or "zero"): a
    zero-initialised layer (TP5 App. D.2's zero readout). ``c``: one global exponent or a
    length-L+1 sequence. Values may be ints, floats, Fractions, strings ("1/2") or SymPy
    expressions; they are stored as SymPy. ``optimizer``: a name, a geometry name or a
    torch.optim class or instance, stored as its class, "sgd" or "adam" (``OPTIMIZER_CLASSES``);
    ``geometry`` (derived from ``optimizer`` unless given): the update geometry of
    ``tensorprog.graph.optimizers`` ("gradient", "entrywise", "parameter-scaled",
    "orthogonalised"), with Muon's ``adjust_lr_fn``. ``alignment``: "tp" (default), "full",
    "none" or L+1 triples (alpha_l, omega_l, u_l) (Everett et al. 2024; ``theory.updates``),
    stored as the triples.
    """

    a: tuple
    b: tuple
    c: Any
    optimizer: Any = "sgd"
    alignment: Any = "tp"
    geometry: str | None = None
    adjust_lr_fn: str | None = None

    def __post_init__(self) -> None:
        try:
            if isinstance(self.a, str) or isinstance(self.b, str):
                raise TypeError
            a, b = tuple(self.a), tuple(self.b)
        except TypeError:
            raise TheoryError("a and b must be sequences of length L+1") from None
        if len(a) != len(b):
            raise TheoryError(f"a has {len(a)} entries but b has {len(b)}; both need L+1")
        if len(a) < 2:
            raise TheoryError(
                f"a and b need L+1 >= 2 entries (input ... readout, L >= 1); got {len(a)}")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("a", tuple(_sym(x, f"a_{i + 1}") for i, x in enumerate(a)))
        set_("b", tuple(_sym(x, f"b_{i + 1}", zero_init=True) for i, x in enumerate(b)))
        if isinstance(self.c, (str, bytes, sp.Basic)) or not hasattr(self.c, "__iter__"):
            set_("c", _sym(self.c, "c"))
        else:
            c = tuple(self.c)
            if len(c) != len(a):
                raise TheoryError(f"per-layer c has {len(c)} entries; it needs L+1 = {len(a)}")
            set_("c", tuple(_sym(x, f"c_{i + 1}") for i, x in enumerate(c)))
        geometry, adjust = optimizer_geometry(self.optimizer)
        if self.geometry is not None and self.geometry != geometry:
            given, _ = optimizer_geometry(self.geometry)
            if GEOMETRIES[given].adam_like != GEOMETRIES[geometry].adam_like:
                raise TheoryError(f"geometry {self.geometry!r} does not step like optimizer "
                                  f"{self.optimizer!r}; give one of them")
            geometry = given
        if geometry == "orthogonalised":
            adjust = self.adjust_lr_fn or adjust or "original"
            if adjust not in ("original", "match_rms_adamw"):
                raise TheoryError(f"Muon's adjust_lr_fn {adjust!r} is not modelled; use "
                                  "'original' or 'match_rms_adamw'.")
        else:
            adjust = None
        set_("optimizer", "adam" if GEOMETRIES[geometry].adam_like else "sgd")
        set_("geometry", geometry)
        set_("adjust_lr_fn", adjust)
        set_("alignment", layer_alignments(self.alignment, len(a) - 1))

    # ----------------------------------------------------------------- exponents
    @property
    def L(self) -> int:
        """Number of hidden layers."""
        return len(self.a) - 1

    @property
    def c_layers(self) -> tuple:
        """(c_1, ..., c_{L+1}); the global c repeated when c is one number."""
        return self.c if isinstance(self.c, tuple) else (self.c,) * (self.L + 1)

    @property
    def readout_init(self) -> sp.Expr:
        """a_{L+1} + b_{L+1}: f_0 = Theta(n^{1/2 - (a_{L+1} + b_{L+1})})."""
        return self.a[-1] + self.b[-1]

    @property
    def update_sizes(self) -> tuple:
        """(d_1, ..., d_{L+1}): dW_l's entries are n^{-d_l} (``theory.updates``): 2a_l + c_l +
        beta_l (SGD), a_l + c_l (Adam), a_l + b_l + c_l (Adafactor), a_l + c_l + (o_l + i_l)/2
        - adjust (Muon)."""
        return update_exponents(self.a, self.b, self.c_layers, self.geometry, self.adjust_lr_fn)

    @property
    def readout_update(self) -> sp.Expr:
        """u with (readout update) x (features) = Theta(n^{-u}): d_{L+1} - alpha_{L+1}; TP:
        2a_{L+1}+c_{L+1}-1 (SGD), a_{L+1}+c_{L+1}-1 (Adam, TP4b's r_{L+1}). Stability needs u >= 0."""
        return self.update_sizes[-1] - self.alignment[-1][0]

    @property
    def r_layers(self) -> tuple:
        """(r_1, ..., r_L): layer l's own update moves h^l by Theta(n^{-r_l}):
        r_l = d_l - alpha_l f_l (f_1 = 0, f_l = 1 for hidden layers).

        SGD, TP alignment (TP4 Prop 5.3): r_l = min(a_{L+1}+b_{L+1}, 2a_{L+1}+c) + c - 1 + 2a_l
        + I(l=1), with c -> c_{L+1} in the min and c -> c_l outside for per-layer learning rates.
        Adam (TP4b): r_1 = c_1 + a_1, r_l = c_l + a_l - 1 for 2 <= l <= L.
        """
        d, al = self.update_sizes, self.alignment
        return tuple(d[i] - (0 if i == 0 else al[i][0]) for i in range(self.L))

    @property
    def propagation(self) -> tuple:
        """(P_1, ..., P_L): a change of h^l reaches h^L times n^{P_l}, P_l = sum over the later
        hidden layers k of omega_k - 1/2 (W_0 dz with a_k + b_k = 1/2); 0 under TP alignment."""
        om = [t[1] - HALF for t in self.alignment[1:self.L]]
        return tuple(sum(om[i:], sp.Integer(0)) for i in range(self.L))

    @property
    def r(self) -> sp.Expr:
        """r with Delta x^L = Theta(n^{-r}): min_l (r_l - P_l) (TP4 Def 3.2; TP4b for Adam;
        P_l = 0 under TP alignment, so r = min_l r_l)."""
        return sp.Min(*(x - p for x, p in zip(self.r_layers, self.propagation)))

    # ----------------------------------------------------------------- conditions
    @cached_property
    def _groups(self) -> dict[str, list[Condition]]:
        """The conditions by theorem: init + stable (all), nontrivial (either), r = 0, r > 0."""
        a, b, L, r, A, u = self.a, self.b, self.L, self.r, self.readout_init, self.readout_update
        sgd = self.optimizer == "sgd"
        al, om = self.alignment[-1][0], self.alignment[-1][1]
        tp = alignment_name(self.alignment, L) == "tp"
        ev = "" if tp else "; alignment: Everett et al. 2024 §3"
        cL = "c_{L+1}" if isinstance(self.c, tuple) else "c"
        src_s = ("TP4 Thm 3.3" if sgd else "TP4b Thm 2.8.12") + ev
        src_i = "TP4 Thm 3.3" if sgd else "TP4 Thm 3.3 (init; assumed by TP4b)"
        src_n = ("TP4 Thm 3.4" if sgd else "TP4b Thm 2.8.15") + ev

        def cond(name, text, value, rel, source):
            return Condition(name, text, value, _truth(rel), source)

        init = [cond("stable (init)", "a_1 + b_1 = 0", a[0] + b[0], sp.Eq(a[0] + b[0], 0), src_i)]
        init += [cond("stable (init)", f"a_{l} + b_{l} = 1/2", a[l - 1] + b[l - 1],
                      sp.Eq(a[l - 1] + b[l - 1], HALF), src_i) for l in range(2, L + 1)]
        init.append(cond("stable (init)", "a_{L+1} + b_{L+1} >= 1/2", A, sp.Ge(A, HALF), src_i))
        d = self.update_sizes[-1]
        if self.geometry == "gradient":
            ro = cond("stable", f"2 a_{{L+1}} + {cL} >= {al}", d, sp.Ge(u, 0), src_s)
            nt = cond("nontrivial", f"2 a_{{L+1}} + {cL} = {al}", d, sp.Eq(u, 0), src_n)
        elif self.geometry == "entrywise":
            ro = cond("stable", f"r_{{L+1}} = a_{{L+1}} + c_{{L+1}} - {al} >= 0", u, sp.Ge(u, 0),
                      src_s)
            nt = cond("nontrivial", f"a_{{L+1}} + c_{{L+1}} = {al}", d, sp.Eq(u, 0), src_n)
        else:  # the readout's update entries n^{-d_{L+1}} (theory.updates), this geometry
            ro = cond("stable", f"r_{{L+1}} = d_{{L+1}} - {al} >= 0 ({self.geometry} update)", u,
                      sp.Ge(u, 0), src_s)
            nt = cond("nontrivial", f"d_{{L+1}} = {al} ({self.geometry} update)", d,
                      sp.Eq(u, 0), src_n)
        stable = [cond("stable", "r >= 0", r, sp.Ge(r, 0), src_s), ro,
                  cond("stable", f"a_{{L+1}} + b_{{L+1}} + r >= {om}", A + r, sp.Ge(A + r, om),
                       src_s)]
        # TP4b Thm 2.8.12 also asks c_{L+1} >= b_{L+1} (the readout's update no larger than its
        # init). It bounds how far the trained readout strays from its init, not the output,
        # whose change is n^{1 - a - c} either way; measured, a b > c readout trains flat (note
        # 9). tensorprog reports it and does not count it against stability.
        grow = d - a[-1] - b[-1]  # readout's w: update n^{-(d - a)} against init n^{-b}
        faithful = [] if sgd or b[-1] == sp.oo else [  # a zero readout is all updates
            cond("faithful", "c_{L+1} - b_{L+1} >= 0" if self.geometry == "entrywise" else
                 "d_{L+1} - a_{L+1} - b_{L+1} >= 0", grow, sp.Ge(grow, 0), src_s)]
        return {
            "init": init,
            "stable": stable,
            "faithful": faithful,
            "nontrivial": [cond("nontrivial", f"a_{{L+1}} + b_{{L+1}} + r = {om}", A + r,
                                sp.Eq(A + r, om), src_n), nt],
            "feature learning": [cond("feature learning", "r = 0", r, sp.Eq(r, 0), "TP4 Thm 3.6")],
            "kernel": [cond("kernel", "r > 0", r, sp.Gt(r, 0), "TP4 Thm 3.8")],
        }

    def why(self) -> list[Condition]:
        """Every theorem condition with its value, in derivation order.

        ``stable`` needs every "stable (init)" and "stable" record; ``nontrivial`` needs
        stable and either "nontrivial" record; ``feature_learning`` / ``kernel_regime`` add
        r = 0 / r > 0 to stable / nontrivial.
        """
        return [c for group in self._groups.values() for c in group]

    @property
    def stable(self) -> Any:
        """TP4 Thm 3.3 (SGD) / TP4b Thm 2.8.12 + initialisation conditions (Adam)."""
        g = self._groups
        return _truth(sp.And(*(c.holds for c in g["init"] + g["stable"])))

    @property
    def nontrivial(self) -> Any:
        """Stable and f moves by Theta(1) (TP4 Thm 3.4 / TP4b Thm 2.8.15):
        a_{L+1}+b_{L+1}+r = 1, or the readout update term is Theta(1)."""
        ors = sp.Or(*(c.holds for c in self._groups["nontrivial"]))
        return _truth(sp.And(self.stable, ors))

    @property
    def feature_learning(self) -> Any:
        """Stable and r = 0: the last-layer features move by Theta(1) (TP4 Thm 3.6)."""
        return _truth(sp.And(self.stable, sp.Eq(self.r, 0)))

    @property
    def kernel_regime(self) -> Any:
        """Stable, nontrivial and r > 0: f evolves by a fixed kernel (TP4 Thm 3.8).
        Never together with feature learning (Dynamical Dichotomy, TP4 Cor 3.9)."""
        return _truth(sp.And(self.nontrivial, sp.Gt(self.r, 0)))

    @property
    def regime(self) -> str:
        """'unstable', 'trivial', 'feature learning' or 'kernel'; 'undetermined' when the
        answer depends on symbols (then read the relationals of ``why()``)."""
        checks = (self.stable, self.nontrivial, self.feature_learning)
        if not all(isinstance(x, bool) for x in checks):
            return "undetermined"
        if not self.stable:
            return "unstable"
        if not self.nontrivial:
            return "trivial"
        return "feature learning" if self.feature_learning else "kernel"

    # ----------------------------------------------------------------- symmetry
    def _with(self, a, b, c) -> "ABC":
        return ABC(a, b, c, self.optimizer, self.alignment, self.geometry, self.adjust_lr_fn)

    def shift(self, t: Any) -> "ABC":
        """(a_l + t, b_l - t, c_l - k t): the same training dynamics at every width, with k = 2
        for SGD (TP4 Eq. 5), 1 for Adam (TP4b Prop 2.2.3) and Muon, 0 for Adafactor (its step
        scales with the parameter; Everett et al. 2024 §2)."""
        t = _sym(t, "t")
        k = SHIFT[self.geometry]
        c = tuple(x - k * t for x in self.c) if isinstance(self.c, tuple) else self.c - k * t
        return self._with(tuple(x + t for x in self.a), tuple(x - t for x in self.b), c)

    def canonical(self) -> "ABC":
        """The representative with a_1 = 0 (input multiplier n^0): shift by t = -a_1.

        Every property above is invariant under ``shift``, so it can be read off here.
        """
        return self.shift(-self.a[0])

    def equivalent(self, other: "ABC") -> bool:
        """Same optimizer geometry, alignment and L, and equal canonical forms (per-layer c
        compared)."""
        key = lambda p: (p.L, p.optimizer, p.geometry, p.adjust_lr_fn, p.alignment)  # noqa: E731
        if not isinstance(other, ABC) or key(self) != key(other):
            return False
        x, y = self.canonical(), other.canonical()
        pairs = zip(x.a + x.b + x.c_layers, y.a + y.b + y.c_layers)
        return all(p == q or sp.simplify(p - q) == 0 for p, q in pairs)

    # ----------------------------------------------------------------- display
    def __str__(self) -> str:
        opt = "SGD (TP4)" if self.optimizer == "sgd" else "Adam-like (TP4b)"
        lines = [f"abc-parametrization, L = {self.L}, optimizer class {opt}"]
        default = "gradient" if self.optimizer == "sgd" else "entrywise"
        name = alignment_name(self.alignment, self.L)
        if self.geometry != default or name != "tp":
            muon = f" ({self.adjust_lr_fn})" if self.adjust_lr_fn else ""
            lines.append(f"  update geometry {self.geometry}{muon}, alignment "
                         f"{name or _fmt(self.alignment)}")
        lines += [
            f"  a = {_fmt(self.a)}",
            f"  b = {_fmt(self.b)}",
            f"  c = {_fmt(self.c)}",
            f"  r_l (l = 1..L) = {_fmt(self.r_layers)}",
            f"  r = min_l r_l = {self.r}",
        ]
        for c in self.why():
            tag = ("ok  " if c.holds else "FAIL") if isinstance(c.holds, bool) else "?   "
            lines.append(f"  [{tag}] {c.name:16s} {c.expression_text:40s} "
                         f"value {c.value}   ({c.source})")
        lines.append(f"  => {self.regime}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- constructors

def _layers(inp, hidden, out, L):
    return (inp,) + (hidden,) * (L - 1) + (out,)


def preset(name: str, L: int = 2, optimizer: Any = "sgd", c: Any = None) -> ABC:
    """A named parametrization (TP4 §3 and App G; TP4b Def 2.5.1); ``c=`` overrides the learning-rate exponent.

    SGD (TP4 table): "SP" a = 0, b = (0, 1/2, ..., 1/2), c = 0 (LR Theta(1): unstable for
    L >= 2; pass c=1 for LR 1/n); "NTK" a = (0, 1/2, ..., 1/2), b = 0, c = 0; "muP"
    a = (-1/2, 0, ..., 1/2), b = 1/2, c = 0; "MF" (L = 1 only) a = (0, 1), b = 0, c = -1.
    Adam: "muP" per TP4b Def 2.5.1, (a, b, c) = input (0, 0, 0), hidden (0, 1/2, 1), readout
    (1, 0, 0); "SP" a = 0, b = (0, 1/2, ...), c = 0; "MF" (L = 1) is Adam-muP with L = 1,
    which already has the mean-field multipliers a = (0, 1), b = 0.
    "NTK" with Adam (our choice; TP4b has no table row): the NTK initialisation a = (0, 1/2,
    ..., 1/2), b = 0, with c = (1/2, 1, ..., 1, 1/2) so that every r_l = 1/2 and both readout
    conditions are tight, as for SGD-NTK; it is uniform(1/2, L, "adam").
    """
    opt = optimizer_class(optimizer)
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise TheoryError(f"L must be an integer >= 1, got {L!r}")
    key = _norm_name(name) if isinstance(name, str) else ""
    names = {"sp": "SP", "ntk": "NTK", "mup": "muP", "mf": "MF", "meanfield": "MF"}
    if key not in names:
        raise TheoryError(f"unknown preset {name!r}; choose one of SP, NTK, muP, MF")
    key = names[key]
    if key == "MF" and L != 1:
        raise TheoryError(f"the mean-field parametrization (MF) is for L = 1 only, got L = {L}")
    h = HALF
    if key == "SP":
        p = ABC((0,) * (L + 1), _layers(0, h, h, L), 0, opt)
    elif key == "NTK":
        p = (ABC(_layers(0, h, h, L), (0,) * (L + 1), 0, opt) if opt == "sgd"
             else uniform(h, L, opt))
    elif key == "muP":
        p = (ABC(_layers(-h, 0, h, L), (h,) * (L + 1), 0, opt) if opt == "sgd"
             else ABC((0,) * L + (1,), (0,) + (h,) * (L - 1) + (0,), _layers(0, 1, 0, L), opt))
    else:  # MF, L == 1
        p = ABC((0, 1), (0, 0), -1 if opt == "sgd" else (0, 0), opt)
    return p if c is None else dataclasses.replace(p, c=c)


def uniform(r: Any, L: int = 2, optimizer: Any = "sgd") -> ABC:
    """UP_r (TP4 App G), 0 <= r <= 1/2: every layer has r_l = r, and both readout conditions
    of nontriviality hold with equality; UP_0 = muP, UP_{1/2} = NTK.

    SGD: a = (r - 1/2, r, ..., r, 1/2), b = (1/2 - r, ..., 1/2 - r), c = 0.
    Adam (same idea, our construction): (a, b, c) = input (0, 0, r), hidden (r, 1/2 - r, 1),
    readout (1 - r, 0, r); UP_0 is TP4b's muP and UP_{1/2} our Adam-NTK preset.
    """
    opt = optimizer_class(optimizer)
    r = _sym(r, "r")
    if r.is_number and not (0 <= r <= HALF):
        raise TheoryError(f"UP_r needs 0 <= r <= 1/2 (r > 1/2 breaks a_{{L+1}} + b_{{L+1}} "
                          f">= 1/2); got {r}")
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise TheoryError(f"L must be an integer >= 1, got {L!r}")
    if opt == "sgd":
        return ABC(_layers(r - HALF, r, HALF, L), (HALF - r,) * (L + 1), 0, opt)
    return ABC(_layers(0, r, 1 - r, L), _layers(0, HALF - r, 0, L), _layers(r, 1, r, L), opt)


def max_stable_lr_exponent(a: Sequence, b: Sequence, optimizer: Any = "sgd",
                           per_layer: bool = False, alignment: Any = "tp",
                           adjust_lr_fn: str | None = None) -> Any:
    """The smallest c (largest learning rate n^{-c}) for which (a, b, c) is stable.

    ``optimizer``: a name, geometry or torch.optim class / instance (its update geometry,
    ``theory.updates``); ``alignment``: "tp", "full", "none" or L+1 triples (alpha_l, omega_l,
    u_l) (Everett et al. 2024, arXiv 2407.05872, §3). The stability conditions (``ABC.why``)
    are monotone in c, so the stable set is [c*, oo) and c* is the max of their lower bounds.
    With A = a_{L+1} + b_{L+1}, K = max(0, omega_{L+1} - A) (from r >= 0 and A + r >=
    omega_{L+1}), P_l the propagation exponents (``ABC.propagation``), f_l the fan-in exponent
    and d_l = c_l + k_l the update exponents (``ABC.update_sizes``):

    * Adam-like (entrywise, parameter-scaled, orthogonalised) layers decouple:
      c_l* = K + P_l + alpha_l f_l - k_l (l <= L), c_{L+1}* = alpha_{L+1} - k_{L+1}; TP
      alignment, Adam (TP4b Thm 2.8.12): c_1 >= K - a_1, c_l >= K + 1 - a_l, c_{L+1} >= 1 - a_{L+1}.
      (TP4b's c_{L+1} >= b_{L+1} is reported, not required: ``ABC.why``'s "faithful" record.)
      ``per_layer=True`` returns these, else the global c* is their max.
    * SGD (TP4 Def 3.2, Thm 3.3): d_l = 2 a_l + c + beta, beta = min(A, 2 a_{L+1} + c). With
      T = K + max_l (P_l + alpha_l f_l - 2 a_l): c* = max(alpha_{L+1} - 2 a_{L+1}, T - A,
      (T - 2 a_{L+1}) / 2); TP alignment: c* = max(1 - 2 a_{L+1}, K + 1 - m - A,
      (K + 1 - m - 2 a_{L+1}) / 2), m = min_l (2 a_l + I(l = 1)). The layers trade off through
      the readout (its LR sizes everyone's gradient), so ``per_layer=True`` fixes the readout
      at its own largest stable LR first: c_{L+1}* = alpha_{L+1} - 2 a_{L+1}, beta* =
      min(A, alpha_{L+1}), then c_l* = K + P_l + alpha_l f_l - 2 a_l - beta*.

    The initialisation conditions must hold: a TheoryError if they fail for every c (with
    symbolic a, b they are assumed).
    """
    if not isinstance(per_layer, bool):
        raise TheoryError(f"per_layer must be True or False, got {per_layer!r}")
    p = ABC(a, b, 0, optimizer, alignment, adjust_lr_fn=adjust_lr_fn)
    init_ok = _truth(sp.And(*(c.holds for c in p._groups["init"])))
    if init_ok is False:
        raise TheoryError("no learning rate makes this stable: the initialisation conditions "
                          "a_1 + b_1 = 0, a_l + b_l = 1/2, a_{L+1} + b_{L+1} >= 1/2 fail")
    a, b, al = p.a, p.b, p.alignment
    A = a[-1] + b[-1]
    K = sp.Max(0, al[-1][1] - A)
    P = p.propagation
    fan = [al[i][0] if i else 0 for i in range(p.L)]  # alpha_l f_l
    if p.geometry == "gradient":
        need = [K + P[i] + fan[i] - 2 * a[i] for i in range(p.L)]
        if per_layer:
            beta = sp.Min(A, al[-1][0])
            return tuple(x - beta for x in need) + (al[-1][0] - 2 * a[-1],)
        T = sp.Max(*need)
        return sp.Max(al[-1][0] - 2 * a[-1], T - A, (T - 2 * a[-1]) / 2)
    k = p.update_sizes  # at c = 0: d_l = c_l + k_l
    cs = tuple(K + P[i] + fan[i] - k[i] for i in range(p.L)) + (al[-1][0] - k[-1],)
    return cs if per_layer else sp.Max(*cs)
