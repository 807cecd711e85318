"""The op table's vocabulary: what an entry holds, what its rules see, and the exponent arithmetic.

Every tensor's coordinates are Theta(n^e) for an exponent e (a SymPy Rational; -oo means exactly
zero). A rule sees an ``Op``: the node's attributes and the ``Sizes`` of its tensor inputs:

* ``x``  - the coordinate size at initialisation;
* ``dx`` - the coordinate size of its change from init after t steps;
* ``g``  - the coordinate size of the loss gradient flowing into it.

Sizes combine by the arithmetic of TP5 Table 14: a contraction over a dim of size n^alpha adds
alpha / 2 when the operands are independent (central limit theorem) and alpha when they are
correlated (law of large numbers). Which is which is the ``Alignment``.

An ``OpSpec`` is everything any stage needs to know about one ATen op (or family): its exponent
rules (forward, backward), how it consumes a parameter (fan-in and fan-out dims), which operand is
data and which is weight, how it maps dims when it only re-views its input, what a numeric
argument on it means, and which input gradients sum to zero by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

NEG = -sp.oo  # the exponent of an exactly-zero quantity
HALF = sp.Rational(1, 2)
ZERO = sp.Integer(0)
ONE = sp.Integer(1)


def mx(*vals):
    """Max of exponents (the larger term dominates a sum); NaN (oo - oo) counts as a blow-up."""
    vals = [sp.oo if v is sp.nan else v for v in vals if v is not None]
    return max(vals) if vals else NEG


def add(*vals):
    """Sum of exponents (a product of sizes), where an exactly-zero factor wins over a growing
    one: n^-oo * n^oo is zero here, never NaN."""
    if any(v == NEG for v in vals):
        return NEG
    return sum(vals, ZERO)


def sub(a, b):
    """Exponent of a size over another (a ratio): zero over anything is zero, anything nonzero
    over zero or infinite over infinite is a blow-up (oo), never NaN."""
    if a == NEG:
        return NEG
    if b == NEG or (a == sp.oo and b == sp.oo):
        return sp.oo
    return a - b


# ----------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class Alignment:
    """Exponent fraction a contraction over an infinite dim contributes, per term.

    For y = W z after a step, dy = dW z_0 + W_0 dz + dW dz (Everett et al. 2024, §3). Each term
    gains ``alignment * alpha`` for a contraction over a dim of size n^alpha. Tensor Programs
    (TP4, TP5 Table 14): dW z_0 and dW dz are outer-product updates against correlated vectors
    (LLN, 1); W_0 dz is CLT-like (1/2) for an iid matrix but LLN-like (1) for a readout, whose
    output dim is finite and whose input change dz is built by backprop from W_0 itself.
    Everett et al.'s "full alignment" ("everett", also "full") uses 1/2 for W_0 dz everywhere;
    their "no alignment" ("none") uses 1/2 for every term (each contraction CLT-like).
    """

    dw_z0: sp.Rational = ONE
    w0_dz_hidden: sp.Rational = HALF
    w0_dz_readout: sp.Rational = ONE
    dw_dz: sp.Rational = ONE
    name: str = "tp"


ALIGNMENTS = {
    "tp": Alignment(),
    "everett": Alignment(w0_dz_readout=HALF, name="everett"),
    "full": Alignment(w0_dz_readout=HALF, name="full"),
    "none": Alignment(HALF, HALF, HALF, HALF, name="none"),
}


def alignment(name_or_obj) -> Alignment:
    """The ``Alignment`` for a name or an ``Alignment``; ValueError for anything else, and for an
    ``Alignment`` whose fields are not numbers in [1/2, 1] (strings are refused, never
    evaluated)."""
    if isinstance(name_or_obj, Alignment):
        fields = {}
        for f in ("dw_z0", "w0_dz_hidden", "w0_dz_readout", "dw_dz"):
            v = getattr(name_or_obj, f)
            ok = not isinstance(v, bool) and isinstance(v, (int, float, sp.Rational))
            v = sp.Rational(repr(float(v))) if isinstance(v, float) and ok and v == v else v
            if not ok or not (v == v and HALF <= v <= 1):
                raise ValueError(f"Alignment.{f} must be a number in [1/2, 1] (Everett et al. "
                                 f"2024, arXiv 2407.05872, §3), got {v!r}")
            fields[f] = sp.Rational(v)
        return Alignment(**fields, name=name_or_obj.name)
    if not isinstance(name_or_obj, str) or name_or_obj not in ALIGNMENTS:
        extra = (" (per-layer triples are for theory.ABC / max_stable_lr_exponent; a model's "
                 "analysis takes one alignment for every layer)"
                 if not isinstance(name_or_obj, str) else "")
        raise ValueError(f"unknown alignment {name_or_obj!r}; choose one of {sorted(ALIGNMENTS)} "
                         f"or pass an Alignment(...){extra}")
    return ALIGNMENTS[name_or_obj]


# ----------------------------------------------------------------------------- what a rule sees


@dataclass
class Sizes:
    """Exponents of one node: at init, change since init, gradient; random sources for
    telling independent operands from correlated ones at init."""

    x: object = ZERO
    dx: object = NEG
    g: object = NEG
    src: frozenset = frozenset()
    terms: dict = field(default_factory=dict)  # contraction terms, for per-layer r_l
    logits: tuple | None = None  # (x, dx) of attention logits
    gz: frozenset | None = None  # dims along which the gradient sums to exactly zero
    uncapped: dict = field(default_factory=dict)  # {"x"|"dx": exponent before a saturation cap}
    centered: bool = False  # the init coordinates have mean zero (E Z = 0): sums of them are CLT
    sign: int = 0  # +1: never negative, -1: never positive, 0: either (for exp of a decay)
    ident: str = ""  # the tensor this node is, seen through views (for facts between nodes)
    upper_of: frozenset = frozenset()  # tensors every entry of which this bounds from above
    value: float | None = None  # a one-element constant's value (a buffer eps)
    rel: object = NEG  # a change proportional to the value itself (decoupled weight decay)


@dataclass
class Op:
    """What a rule sees: the node's attributes and the sizes of its tensor inputs."""

    name: str
    attrs: dict
    ins: list[Sizes]
    in_names: list[str]
    pos: list[str]
    in_dims: list[tuple | None]
    weight: str | None = None  # position of a parameter operand consumed as a matrix, if any
    readout: bool = False  # the weight's outputs are all finite (TP's readout alignment)
    align: Alignment = field(default_factory=Alignment)

    @property
    def op(self):
        return self.attrs["op"]

    @property
    def dims(self):
        return self.attrs["dims"] or ()

    def arg(self, i, default=None):
        args = self.attrs["args"]
        if isinstance(i, int) and i < len(args):
            return args[i]
        return self.attrs["kwargs"].get(i, default)

    def scalar(self, pos):
        s = self.attrs["scalars"].get(pos)
        return None if s is None else s["exp"]

    def scalar_exps(self, skip=()):
        """Exponents of the numeric arguments (``x * c``): None where one follows no power law."""
        return [v["exp"] for k, v in self.attrs["scalars"].items() if k not in skip]

    def input_at(self, pos) -> Sizes | None:
        for p, s in zip(self.pos, self.ins):
            if p == pos:
                return s
        return None

    def index_at(self, pos) -> int | None:
        return self.pos.index(pos) if pos in self.pos else None

    def dims_at(self, pos):
        i = self.index_at(pos)
        return self.in_dims[i] if i is not None else None


class Undetermined(Exception):
    """Raised by a rule that cannot size its output: the engine records the reason, and the
    verdict says "undetermined" wherever the op reaches the output."""


# ----------------------------------------------------------------------------- the entry


@dataclass(frozen=True)
class Use:
    """How an op consumes a tensor at one argument position.

    kind: "matrix" (contracted: a weight), "vector" (elementwise: a bias or gain), "index" (a
    lookup table: rows picked by integer ids), "unknown". fan_in / fan_out: dims of the tensor
    (as it enters the op) that the op contracts / that index its output."""

    kind: str
    fan_in: frozenset = frozenset()
    fan_out: frozenset = frozenset()


def vector_use(ndim) -> Use:
    return Use("vector", frozenset(), frozenset(range(ndim)))


@dataclass(frozen=True)
class OpSpec:
    """Everything the pipeline knows about one ATen op or family of ops.

    forward(op) -> (x, dx, extra): sizes of the output (extra: "dW z0"/"W0 dz"/"dW dz" terms,
        "logits", "uncapped").
    backward(op, g) -> [g of each tensor input].
    use(attrs, pos, ndim) -> Use: how a parameter (or any tensor) at ``pos`` is consumed.
    data_pos(attrs, weight_pos) -> the position of the data operand a weight at ``weight_pos``
        multiplies (where a scalar multiplier on the input lands on the weight).
    view: moves, copies or re-views its first argument (sizes pass, dims map by ``dim_map``).
    multiplier: its numeric arguments scale the tensor (``x * c``, ``x / c``): a width-dependent
        one is an abc multiplier on whatever it multiplies (TP4 §2: W = n^{-a} w).
    sign: +1 when the scalar multiplies, -1 when it divides.
    numeric_args: names of numeric arguments that carry meaning (sdpa's "scale"); "*": every
        numeric argument is recorded (``x + eps``, ``x ** 2``).
    new_source: its output is a fresh random source (a contraction with a parameter, a lookup).
    zero_sum: {input index: fn(op, ndim) -> dims} along which that input's gradient sums to zero.
    attention: contracts two activations into logits (q k^T): its scale is judged as TP5's 1/d.
    bias_pos: the position of a bias added inside the op (its gradient sums the output rows).
    bias_dim: the output dim the bias runs along (-1: the last, linear / addmm; 1: the channels
        of a convolution, whose other dims all sum into the bias gradient).
    contract_pos: the positions of the two operands an attention-like op contracts.
    scale_arg: the numeric argument that scales that product (baddbmm's alpha).
    positive: its output is never negative (exp, softplus, relu, norms): the sign an exp of a
        product needs to tell a decay exp(-|z|) from a blow-up.
    """

    names: tuple[str, ...]
    forward: Callable
    backward: Callable
    use: Callable | None = None
    data_pos: Callable | None = None
    view: bool = False
    dim_map: Callable | None = None
    multiplier: bool = False
    sign: int = 1
    numeric_args: tuple = ()
    new_source: bool = False
    zero_sum: dict = field(default_factory=dict)
    attention: bool = False
    bias_pos: str | None = None
    bias_dim: int = -1
    contract_pos: tuple = ()
    scale_arg: str | None = None
    positive: bool = False
    doc: str = ""


def pass_back(op: Op, g):
    """The gradient reaches the first input unchanged; the others get none."""
    return [g] + [NEG] * (len(op.ins) - 1)


def all_back(op: Op, g):
    return [g] * len(op.ins)


def no_back(op: Op, g):
    return [NEG] * len(op.ins)


def same(op: Op):
    z = op.ins[0] if op.ins else Sizes()
    return z.x, z.dx, {}


def cap_note(**raw):
    """Record the size (x) or change (dx) a bounded op would have had: at finite widths it grows
    until it saturates, so a measurement may see growth up to n^raw before the Theta(1) cap."""
    return {"uncapped": {k: v for k, v in raw.items() if v > 0}}


def sum_dims(dims, which) -> object:
    if dims is None:
        return ZERO
    vals = [dims[d] for d in which if -len(dims) <= d < len(dims)]
    return sum((v if v is not None else ZERO for v in vals), ZERO)


def independent(a: Sizes, b: Sizes) -> bool:
    return not (a.src & b.src)


def contract(a: Sizes, b: Sizes, alpha, init_align, c_da_b0, c_a0_db, c_da_db):
    """Size and change of sum_i a_i b_i over n^alpha terms, and the three change terms."""
    x = add(a.x, b.x, alpha * init_align)
    terms = {"da b0": add(a.dx, b.x, alpha * c_da_b0), "a0 db": add(a.x, b.dx, alpha * c_a0_db),
             "da db": add(a.dx, b.dx, alpha * c_da_db)}
    return x, mx(*terms.values()), terms


def grad_through(g, other: Sizes, alpha, align: Alignment):
    """Size of sum_i g_i * other_i over n^alpha terms: CLT against the init part of ``other``
    (gradient independence, TP4), LLN against its change (correlated with the gradients it
    was built from)."""
    return mx(add(g, other.x, alpha * HALF), add(g, other.dx, alpha * align.dw_dz))
