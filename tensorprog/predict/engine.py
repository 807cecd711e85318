"""Propagate coordinate-size exponents through a traced graph (TP4, TP5 Table 14).

Every tensor's coordinates are Theta(n^e) for an exponent e (a SymPy Rational; -oo means zero).
For every node the engine computes, in one forward / backward sweep per training step:

* ``x``  - the coordinate size at initialisation;
* ``dx`` - the coordinate size of its change from init after t steps;
* ``g``  - the coordinate size of the loss gradient flowing into it (at the current weights).

A parameter starts at its init exponent; each step adds an update of size ``lr + g`` (SGD) or
``lr`` (Adam-like: the update is sign-like, Theta(1) per coordinate, TP4b). Sizes combine by
the arithmetic of TP5 Table 14: a contraction over a dim of size n^alpha adds alpha / 2 when the
operands are independent (central limit theorem) and alpha when they are correlated (law of
large numbers). Which is which is the ``Alignment``.

Each ATen op owns one entry in ``RULES``: a forward function (x, dx of the output from those of
the inputs) and a backward function (g of each input from g of the output). An op without an
entry is treated as elementwise with a Theta(1) Jacobian and listed in ``Propagation.unknown``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from ..graph.trace import VIEW_OPS, WidthGraph

NEG = -sp.oo  # the exponent of an exactly-zero quantity
HALF = sp.Rational(1, 2)
ZERO = sp.Integer(0)


def mx(*vals):
    """Max of exponents (the larger term dominates a sum); NaN (oo - oo) counts as a blow-up."""
    vals = [sp.oo if v is sp.nan else v for v in vals if v is not None]
    return max(vals) if vals else NEG


# ----------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class Alignment:
    """Exponent fraction a contraction over an infinite dim contributes, per term.

    For y = W z after a step, dy = dW z_0 + W_0 dz + dW dz (Everett et al. 2024, §3). Each term
    gains ``alignment * alpha`` for a contraction over a dim of size n^alpha. Tensor Programs
    (TP4, TP5 Table 14): dW z_0 and dW dz are outer-product updates against correlated vectors
    (LLN, 1); W_0 dz is CLT-like (1/2) for an iid matrix but LLN-like (1) for a readout, whose
    output dim is finite and whose input change dz is built by backprop from W_0 itself.
    Everett et al.'s "full alignment" uses 1/2 for W_0 dz everywhere.
    """

    dw_z0: sp.Rational = sp.Integer(1)
    w0_dz_hidden: sp.Rational = HALF
    w0_dz_readout: sp.Rational = sp.Integer(1)
    dw_dz: sp.Rational = sp.Integer(1)
    name: str = "tp"


ALIGNMENTS = {
    "tp": Alignment(),
    "everett": Alignment(w0_dz_readout=HALF, name="everett"),
}


def alignment(name_or_obj) -> Alignment:
    if isinstance(name_or_obj, Alignment):
        return name_or_obj
    try:
        return ALIGNMENTS[name_or_obj]
    except KeyError:
        raise ValueError(f"unknown alignment {name_or_obj!r}; choose one of {sorted(ALIGNMENTS)} "
                         "or pass an Alignment(...)") from None


# ----------------------------------------------------------------------------- per-op view


@dataclass
class Sizes:
    """Exponents of one node: at init, change since init, gradient; random sources for
    telling independent operands from correlated ones at init."""

    x: object = ZERO
    dx: object = NEG
    g: object = NEG
    src: frozenset = frozenset()
    terms: dict = field(default_factory=dict)  # contraction terms, for per-layer r_l
    logits: tuple | None = None  # (x, dx) of attention logits inside sdpa
    gz: frozenset | None = None  # dims along which the gradient sums to exactly zero
    uncapped: dict = field(default_factory=dict)  # {"x"|"dx": exponent before a saturation cap}


@dataclass
class Op:
    """What a rule sees: the node's attributes and the sizes of its tensor inputs."""

    name: str
    attrs: dict
    ins: list[Sizes]
    in_names: list[str]
    pos: list[str]
    in_dims: list[tuple | None]
    weight: str | None  # position of a parameter operand consumed as a matrix, if any
    readout: bool  # the weight's outputs are all finite (TP's readout alignment)
    align: Alignment

    @property
    def op(self):
        return self.attrs["op"]

    @property
    def dims(self):
        return self.attrs["dims"] or ()

    def arg(self, i, default=None):
        args = self.attrs["args"]
        return args[i] if i < len(args) else self.attrs["kwargs"].get(i, default)

    def scalar(self, pos):
        s = self.attrs["scalars"].get(pos)
        return None if s is None else s["exp"]

    def input_at(self, pos) -> Sizes | None:
        for p, s in zip(self.pos, self.ins):
            if p == pos:
                return s
        return None

    def index_at(self, pos) -> int | None:
        return self.pos.index(pos) if pos in self.pos else None


def _sum_dims(dims, which) -> object:
    if dims is None:
        return ZERO
    vals = [dims[d] for d in which if -len(dims) <= d < len(dims)]
    return sum((v if v is not None else ZERO for v in vals), ZERO)


# ----------------------------------------------------------------------------- rules

RULES: dict[str, tuple[Callable, Callable]] = {}


def rule(*names):
    """Register (forward, backward) for the named ops: @rule("relu", "gelu")(fwd, bwd)."""
    def register(fwd, bwd):
        for n in names:
            RULES[n] = (fwd, bwd)
        return fwd
    return register


def _contract(a: Sizes, b: Sizes, alpha, init_align, c_da_b0, c_a0_db, c_da_db):
    """Size and change of sum_i a_i b_i over alpha-many terms; the three change terms."""
    x = a.x + b.x + alpha * init_align
    terms = {"da b0": a.dx + b.x + alpha * c_da_b0, "a0 db": a.x + b.dx + alpha * c_a0_db,
             "da db": a.dx + b.dx + alpha * c_da_db}
    return x, mx(*terms.values()), terms


def _independent(a: Sizes, b: Sizes) -> bool:
    return not (a.src & b.src)


# --- matrix ops: linear, addmm, mm/bmm/matmul, conv, embedding


def _matrix_fwd(op: Op):
    """y = W z (+ bias). Data operand z, weight W (a parameter) or a second activation."""
    kind = op.op
    if kind == "linear":
        data, other, bias, alpha = op.input_at("0"), op.input_at("1"), op.input_at("2"), _last(op, "0")
    elif kind == "addmm":
        data, other, bias, alpha = op.input_at("1"), op.input_at("2"), op.input_at("0"), _last(op, "1")
    elif kind.startswith("conv"):
        data, other, bias = op.input_at("0"), op.input_at("1"), op.input_at("2")
        wdims = op.in_dims[op.index_at("1")] or ()
        transposed = kind.startswith("conv_transpose") or (kind == "convolution" and op.arg(6) is True)
        alpha = _sum_dims(wdims, [0] + list(range(2, len(wdims)))) if transposed else \
            _sum_dims(wdims, range(1, len(wdims)))
    else:  # mm, bmm, matmul: contraction over A's last dim
        a_dims = op.in_dims[0] or ()
        data, other, bias = op.ins[0], op.ins[1] if len(op.ins) > 1 else op.ins[0], None
        alpha = a_dims[-1] if a_dims and a_dims[-1] is not None else ZERO
        if op.weight == "0":
            data, other = other, data
    if other is None:
        return data.x, data.dx, {}
    if op.weight is not None:  # activation times parameter: TP alignment
        w0dz = op.align.w0_dz_readout if op.readout else op.align.w0_dz_hidden
        x, dx, terms = _contract(other, data, alpha, HALF, op.align.dw_z0, w0dz, op.align.dw_dz)
        terms = {"dW z0": terms["da b0"], "W0 dz": terms["a0 db"], "dW dz": terms["da db"]}
    else:  # two activations (q k^T, attention weights times v): correlated after training
        x, dx, terms = _contract(data, other, alpha, HALF if _independent(data, other) else 1, 1, 1, 1)
    if bias is not None:
        x, dx = mx(x, bias.x), mx(dx, bias.dx)
    return x, dx, terms


def _last(op, pos):
    dims = op.in_dims[op.index_at(pos)] if op.index_at(pos) is not None else None
    return dims[-1] if dims and dims[-1] is not None else ZERO


def _matrix_bwd(op: Op, g):
    """g_z = W^T g: a sum over the output dim, CLT against W_0 (gradient independence, TP4)
    and LLN against the change dW, which is built from earlier gradients. g_W = g z^T sums
    over the rows of the output (batch, sequence: usually finite) in the same way."""
    grads = [NEG] * len(op.ins)
    kind = op.op
    if kind in ("linear", "addmm") or kind.startswith("conv"):
        d_pos, w_pos, b_pos = ("1", "2", "0") if kind == "addmm" else ("0", "1", "2")
    else:
        d_pos, w_pos, b_pos = ("1", "0", None) if op.weight == "0" else ("0", "1", None)
    di, wi = op.index_at(d_pos), op.index_at(w_pos)
    bi = op.index_at(b_pos) if b_pos else None
    data = op.ins[di] if di is not None else None
    w = op.ins[wi] if wi is not None else None
    if data is not None:
        grads[di] = g if w is None else _grad_through(g, w, _out_alpha(op), op.align)
    if w is not None:
        grads[wi] = g if data is None else _grad_through(g, data, _row_alpha(op), op.align)
    if bi is not None:
        grads[bi] = g
    return grads


def _grad_through(g, other: Sizes, alpha, align: Alignment):
    """Size of sum_i g_i * other_i over alpha-many terms: CLT against the init part of
    ``other``, LLN against its change (correlated with the gradients it was built from)."""
    return mx(g + other.x + alpha * HALF, g + other.dx + alpha * align.dw_dz)


def _row_alpha(op: Op):
    """Width exponent of the output rows a weight gradient sums over (batch, sequence...)."""
    dims = op.dims
    if not dims:
        return ZERO
    if op.op.startswith("conv"):
        keep = {1}
    elif op.op in ("mm", "bmm", "matmul") and op.weight is None:
        keep = {len(dims) - 1} | set(range(len(dims) - 2))  # batch dims pair up, not summed
    else:
        keep = {len(dims) - 1}
    return sum((d for i, d in enumerate(dims) if i not in keep and d is not None), ZERO)


def _out_alpha(op: Op):
    dims = op.dims
    if not dims:
        return ZERO
    if op.op.startswith("conv"):
        out = dims[1] if len(dims) > 1 and dims[1] is not None else ZERO
        # each input channel feeds the out_channels / groups outputs of its group:
        # weight (out, in / groups, k...) and input (B, in, ...) give out / groups =
        # out * (in / groups) / in (a depthwise conv: 1 output per input channel).
        wi, di = op.index_at("1"), op.index_at("0")
        wd = op.in_dims[wi] if wi is not None else None
        xd = op.in_dims[di] if di is not None else None
        transposed = op.op.startswith("conv_transpose") or (op.op == "convolution" and op.arg(6) is True)
        if wd and xd and len(xd) > 1 and not transposed and None not in (wd[0], wd[1], xd[1]):
            out = wd[0] + wd[1] - xd[1]
        return out
    return dims[-1] if dims[-1] is not None else ZERO


rule("linear", "addmm", "mm", "bmm", "matmul", "conv1d", "conv2d", "conv3d", "convolution",
     "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")(_matrix_fwd, _matrix_bwd)


def _embedding_fwd(op: Op):
    w = op.input_at("0")
    return w.x, w.dx, {"dW z0": w.dx}


rule("embedding")(_embedding_fwd, lambda op, g: [g] + [NEG] * (len(op.ins) - 1))


# --- bilinear: y_k = sum_ij W_kij x1_i x2_j + b_k


def _outer(a: Sizes, b: Sizes) -> Sizes:
    """The outer product x1 (x) x2 that a bilinear weight contracts against."""
    return Sizes(x=a.x + b.x, dx=mx(a.dx + b.x, a.x + b.dx, a.dx + b.dx), src=a.src | b.src)


def _bilinear_fwd(op: Op):
    """W (out, in1, in2) contracted with x1 (x) x2 over in1 * in2: the matrix rule with the
    outer product as the data operand (TP alignment: CLT against W_0, LLN against dW)."""
    x1, x2, w, b = op.input_at("0"), op.input_at("1"), op.input_at("2"), op.input_at("3")
    wd = op.in_dims[op.index_at("2")] or (ZERO, ZERO, ZERO)
    alpha = sum((d for d in wd[1:] if d is not None), ZERO)
    w0dz = op.align.w0_dz_readout if op.readout else op.align.w0_dz_hidden
    x, dx, terms = _contract(w, _outer(x1, x2), alpha, HALF, op.align.dw_z0, w0dz, op.align.dw_dz)
    terms = {"dW z0": terms["da b0"], "W0 dz": terms["a0 db"], "dW dz": terms["da db"]}
    if b is not None:
        x, dx = mx(x, b.x), mx(dx, b.dx)
    return x, dx, terms


def _bilinear_bwd(op: Op, g):
    """g_x1 = sum_kj W_kij x2_j g_k (over out and in2), g_x2 likewise, g_W = g x1 x2 summed
    over the rows, g_b = g."""
    x1, x2, w = op.input_at("0"), op.input_at("1"), op.input_at("2")
    wd = op.in_dims[op.index_at("2")] or (ZERO, ZERO, ZERO)
    d = [v if v is not None else ZERO for v in wd]
    size = (lambda s: mx(s.x, s.dx))
    grads = [NEG] * len(op.ins)
    grads[op.index_at("0")] = _grad_through(g + size(x2), w, d[0] + d[2], op.align)
    grads[op.index_at("1")] = _grad_through(g + size(x1), w, d[0] + d[1], op.align)
    grads[op.index_at("2")] = _grad_through(g + size(x1), x2, _row_alpha(op), op.align)
    if op.index_at("3") is not None:
        grads[op.index_at("3")] = g
    return grads


rule("bilinear")(_bilinear_fwd, _bilinear_bwd)


# --- attention


def _sdpa_fwd(op: Op):
    """softmax(q k^T * scale) v. The logits contract q with k over d_head: independent at init
    (CLT), correlated after training (LLN) - why muP needs scale ~ 1/d (TP5 Def 4.1)."""
    q, k, v = op.ins[0], op.ins[1], op.ins[2]
    d = (op.in_dims[0] or (ZERO,))[-1]
    d = ZERO if d is None else d
    scale = op.scalar("scale")
    if scale is None:
        scale = -d / 2  # torch's default scale 1/sqrt(d_head)
    lx, ldx, terms = _contract(q, k, d, HALF if _independent(q, k) else 1, 1, 1, 1)
    lx, ldx = lx + scale, ldx + scale
    mask = op.input_at("3")
    out_x = v.x
    out_dx = mx(v.dx, v.x + min(ldx, ZERO))  # softmax saturates: its change is at most Theta(1)
    if mask is not None:
        out_dx = mx(out_dx, v.x + mask.dx)
    return out_x, out_dx, {"logits": (lx, ldx), "scale": scale, "d_head": d}


def _sdpa_bwd(op: Op, g):
    q, k, v = op.ins[0], op.ins[1], op.ins[2]
    d = (op.in_dims[0] or (ZERO,))[-1] or ZERO
    scale = op.scalar("scale")
    scale = -d / 2 if scale is None else scale
    g_logits = _grad_through(g, v, d, op.align)
    grads = [g_logits + mx(k.x, k.dx) + scale, g_logits + mx(q.x, q.dx) + scale, g]
    return grads + [NEG] * (len(op.ins) - 3)


rule("scaled_dot_product_attention")(_sdpa_fwd, _sdpa_bwd)


# --- normalisation


def _norm_fwd(op: Op):
    """(z - mean) / std * gain + shift: Theta(1) whatever the input scale; its change is the
    input's change relative to the input (dz - z), plus the gain's and shift's changes."""
    z = op.ins[0]
    gain, shift = _norm_params(op)
    gx = gain.x if gain is not None else ZERO
    x = mx(gx, shift.x if shift is not None else NEG)
    # the normalised part is O(1) whatever happens to z: its change is capped at Theta(1)
    dx = mx(gx + min(z.dx - z.x, ZERO), gain.dx if gain is not None else NEG,
            shift.dx if shift is not None else NEG)
    return x, dx, _cap_note(dx=gx + z.dx - z.x)


def _norm_params(op):
    from ..graph.trace import NORM_PARAM_POS
    positions = NORM_PARAM_POS.get(op.op, ())
    gain = op.input_at(str(positions[0])) if positions else None
    shift = op.input_at(str(positions[1])) if len(positions) > 1 else None
    return gain, shift


def _norm_bwd(op: Op, g):
    z = op.ins[0]
    gain, shift = _norm_params(op)
    gx = mx(gain.x, gain.dx) if gain is not None else ZERO
    grads = [NEG] * len(op.ins)
    grads[0] = g + gx - z.x
    for p in (gain, shift):
        if p is not None:
            grads[op.ins.index(p)] = g
    return grads


rule("layer_norm", "group_norm", "batch_norm", "native_batch_norm", "instance_norm", "rms_norm",
     "_native_batch_norm_legit_no_training")(_norm_fwd, _norm_bwd)


# --- elementwise


def _same(op: Op):
    z = op.ins[0] if op.ins else Sizes()
    return z.x, z.dx, {}


def _pass_back(op: Op, g):
    return [g] + [NEG] * (len(op.ins) - 1)


def _all_back(op: Op, g):
    return [g] * len(op.ins)


# View-like ops, copies, dropout, pooling, gathering: sizes pass through unchanged.
rule(*VIEW_OPS, "getitem", "select", "index", "index_select", "gather", "max_pool1d", "max_pool2d",
     "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
     "adaptive_avg_pool2d", "adaptive_max_pool2d", "roll", "flip", "repeat", "repeat_interleave", "tile",
     "pad", "constant_pad_nd", "masked_fill", "tril", "triu", "split", "chunk", "unbind",
     "split_with_sizes", "narrow", "movedim", "unflatten", "view_as", "reshape_as", "squeeze_",
     "unsqueeze_", "neg", "positive", "relu", "gelu", "silu", "leaky_relu", "elu", "selu", "celu",
     "mish", "hardswish", "relu6", "abs", "prelu", "log_sigmoid", "identity")(_same, _pass_back)
RULES["detach"] = (_same, lambda op, g: [NEG] * len(op.ins))


def _bounded_fwd(op: Op):
    """tanh-like: ~z for small z, saturates at Theta(1); so does its change (|tanh_t - tanh_0| <= 2)."""
    z = op.ins[0]
    return min(z.x, ZERO), min(z.dx, ZERO), _cap_note(x=z.x, dx=z.dx)


rule("tanh", "erf", "sin", "hardtanh", "atan", "softsign", "hardsigmoid_centered")(_bounded_fwd, _pass_back)


def _offset_fwd(op: Op):
    """sigmoid, cos, softmax: Theta(1) at zero input, bounded, so their change is at most
    Theta(1). Softmax over a dim of n^alpha entries spreads mass 1 over them: n^{-alpha}."""
    z = op.ins[0]
    spread = ZERO
    if op.op in ("softmax", "_softmax") and op.in_dims and op.in_dims[0]:
        d = op.in_dims[0][op.arg(1, -1) % len(op.in_dims[0])]
        spread = -(d or ZERO)
    return spread, min(z.dx, ZERO) + spread, _cap_note(dx=z.dx + spread)


def _cap_note(**raw):
    """Record the size (x) or change (dx) a bounded op would have had: at finite widths it grows
    until it saturates, so a measurement may see growth up to n^raw before the Theta(1) cap."""
    return {"uncapped": {k: v for k, v in raw.items() if v > 0}}


rule("sigmoid", "cos", "softmax", "_softmax", "hardsigmoid", "special_expit")(_offset_fwd, _pass_back)


def _softplus_fwd(op: Op):
    """softplus, log_softmax: Theta(1) at zero input, ~|z| for large z (unbounded)."""
    z = op.ins[0]
    return mx(ZERO, z.x), z.dx, {}


rule("softplus", "log_softmax", "_log_softmax", "logsumexp")(_softplus_fwd, _pass_back)


def _exp_fwd(op: Op):
    """exp: Theta(1) for inputs O(1), unbounded (oo: a blow-up) for growing ones."""
    z = op.ins[0]
    x = ZERO if z.x <= 0 else sp.oo
    dx = NEG if z.dx == NEG else (sp.oo if z.dx > 0 or x == sp.oo else z.dx)
    return x, dx, {}


rule("exp")(_exp_fwd, lambda op, g: [g + (ZERO if op.ins[0].x <= 0 else sp.oo)])


def _power(op: Op) -> object:
    return {"rsqrt": -HALF, "sqrt": HALF, "reciprocal": sp.Integer(-1), "square": sp.Integer(2)}.get(
        op.op, sp.nsimplify(op.arg(1)) if op.op == "pow" else sp.Integer(1))


def _pow_fwd(op: Op):
    """z^p: size p z; change (p - 1) z + dz."""
    z, p = op.ins[0], _power(op)
    return p * z.x, (p - 1) * z.x + z.dx, {}


def _pow_bwd(op: Op, g):
    z, p = op.ins[0], _power(op)
    return [g + (p - 1) * z.x] + [NEG] * (len(op.ins) - 1)


rule("pow", "rsqrt", "sqrt", "reciprocal", "square")(_pow_fwd, _pow_bwd)


def _add_fwd(op: Op):
    """a + b: the larger term (cancellation is not assumed)."""
    xs = [s.x for s in op.ins] + [v["exp"] for k, v in op.attrs["scalars"].items()
                                  if v["exp"] is not None and v["values"][-1] != 0 and k != "alpha"]
    return mx(*xs), mx(*(s.dx for s in op.ins)), {}


rule("add", "sub", "rsub", "where", "cat", "stack", "maximum", "minimum", "clamp", "clip",
     "lerp", "add_", "sub_", "hstack", "vstack")(_add_fwd, _all_back)


def _mul_fwd(op: Op):
    """a * b (or a * c): sizes add; change da b + a db + da db."""
    s = sum((v["exp"] for v in op.attrs["scalars"].values() if v["exp"] is not None), ZERO)
    if len(op.ins) == 1:
        return op.ins[0].x + s, op.ins[0].dx + s, {}
    a, b = op.ins[0], op.ins[1]
    return a.x + b.x + s, mx(a.dx + b.x, a.x + b.dx, a.dx + b.dx) + s, {}


def _mul_bwd(op: Op, g):
    s = sum((v["exp"] for v in op.attrs["scalars"].values() if v["exp"] is not None), ZERO)
    if len(op.ins) == 1:
        return [g + s]
    a, b = op.ins[0], op.ins[1]
    return [g + mx(b.x, b.dx) + s, g + mx(a.x, a.dx) + s]


def _div_fwd(op: Op):
    s = sum((v["exp"] for v in op.attrs["scalars"].values() if v["exp"] is not None), ZERO)
    if len(op.ins) == 1:
        return op.ins[0].x - s, op.ins[0].dx - s, {}
    a, b = op.ins[0], op.ins[1]
    return a.x - b.x, mx(a.dx - b.x, a.x - 2 * b.x + b.dx), {}


def _div_bwd(op: Op, g):
    s = sum((v["exp"] for v in op.attrs["scalars"].values() if v["exp"] is not None), ZERO)
    if len(op.ins) == 1:
        return [g - s]
    a, b = op.ins[0], op.ins[1]
    return [g - b.x, g + a.x - 2 * b.x]


rule("mul", "mul_", "addcmul")(_mul_fwd, _mul_bwd)
rule("div", "div_", "true_divide")(_div_fwd, _div_bwd)


# --- reductions


def _reduced_alpha(op: Op):
    """Width exponent of the number of reduced elements: input dims minus output dims."""
    din = op.in_dims[0] if op.in_dims else None
    if din is None or op.attrs["dims"] is None:
        return ZERO
    return _sum_dims(din, range(len(din))) - _sum_dims(op.attrs["dims"], range(len(op.attrs["dims"])))


def _mean_fwd(op: Op):
    """mean over dims: bounded by the coordinate size (exact for positive terms, e.g. z^2)."""
    z = op.ins[0]
    return z.x, z.dx, {}


def _sum_fwd(op: Op):
    z, a = op.ins[0], _reduced_alpha(op)
    return z.x + a, z.dx + a, {}


rule("mean", "std", "median")(_mean_fwd, lambda op, g: [g - _reduced_alpha(op)] + [NEG] * (len(op.ins) - 1))
# max picks one entry: its gradient lands there whole
rule("amax", "amin", "max", "min")(_mean_fwd, _pass_back)


def _norm2_fwd(op: Op):
    """||z||_2 over n^alpha entries: z * n^{alpha/2} (a sum of squares, LLN)."""
    z, a = op.ins[0], _reduced_alpha(op)
    return z.x + a / 2, z.dx + a / 2, {}


rule("norm", "linalg_vector_norm")(
    _norm2_fwd, lambda op, g: [g - _reduced_alpha(op) / 2] + [NEG] * (len(op.ins) - 1))


def _var_fwd(op: Op):
    """variance: a mean of squares, size 2 z; change z + dz."""
    z = op.ins[0]
    return 2 * z.x, z.x + z.dx, {}


rule("var")(_var_fwd, lambda op, g: [g + op.ins[0].x - _reduced_alpha(op)] + [NEG] * (len(op.ins) - 1))
rule("sum", "cumsum", "nansum")(_sum_fwd, _pass_back)


# --- losses (when the model returns its loss): Theta(1) per output coordinate


def _loss_fwd(op: Op):
    z = op.ins[0]
    return mx(z.x, ZERO), z.dx, {}


rule("cross_entropy_loss", "nll_loss", "nll_loss_nd", "mse_loss", "l1_loss", "smooth_l1_loss",
     "huber_loss", "binary_cross_entropy_with_logits", "binary_cross_entropy", "kl_div")(_loss_fwd, _pass_back)


# --- constants: masks, positions, comparisons


def _const_fwd(op: Op):
    return ZERO, NEG, {}


rule("arange", "zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like",
     "empty_like", "new_ones", "new_zeros", "new_full", "new_empty", "scalar_tensor", "eq", "ne",
     "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "__and__", "__or__",
     "bitwise_and", "bitwise_or", "bitwise_not", "any", "all", "isnan", "isinf", "diff",
     "argmax", "argmin", "randn_like", "rand_like", "randint", "lift_fresh", "sym_size",
     "_assert_scalar", "sym_constrain_range_for_size", "bernoulli",
     "_assert_tensor_metadata")(_const_fwd, lambda op, g: [NEG] * len(op.ins))


# ----------------------------------------------------------------------------- propagation


@dataclass
class Propagation:
    """Sizes of every node after each step, and what the engine could not cover."""

    graph: WidthGraph
    optimizer: str
    steps: list[dict[str, Sizes]]  # steps[t][node]: sizes after t updates (t = 0: init)
    updates: list[dict[str, object]]  # updates[t][param]: exponent of the cumulative change
    unknown: dict[str, list[str]]  # op -> nodes treated by the fallback rule
    outputs: list[str]
    alignment: Alignment

    @property
    def final(self) -> dict[str, Sizes]:
        return self.steps[-1]


def propagate(graph: WidthGraph, optimizer: str = "adam", *, steps: int = 3,
              align="tp", output: int = 0) -> Propagation:
    """Run ``steps`` training steps in exponents. optimizer: "sgd" or "adam" (sign-like).

    The loss gradient is Theta(1) per coordinate of model output ``output`` (TP4: the loss is
    a Theta(1) function of the finite-dim output f).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam' (the class), got {optimizer!r}")
    align = alignment(align)
    weight_pos = _matrix_weight_positions(graph)
    out_node = next(n for n in graph.order if graph.node(n)["kind"] == "output")
    outputs = graph.inputs(out_node)
    unknown: dict[str, list[str]] = {}
    dW = {p: NEG for p in graph.params}
    history, updates = [], []
    for t in range(steps + 1):
        sizes = _forward(graph, dW, weight_pos, align, unknown)
        if outputs:
            _backward(graph, sizes, outputs[min(output, len(outputs) - 1)], weight_pos, align)
        history.append(sizes)
        updates.append(dict(dW))
        if t == steps:
            break
        for pname, p in graph.params.items():
            lr = _lr_exp(p)
            if lr is None or not p.trainable:
                continue
            g = mx(*(sizes[n].g for n in p.nodes))
            if g == NEG:
                continue
            step = lr + (g if optimizer == "sgd" else ZERO)
            dW[pname] = mx(dW[pname], step)
    return Propagation(graph=graph, optimizer=optimizer, steps=history, updates=updates,
                       unknown=unknown, outputs=outputs, alignment=align)


def _lr_exp(p):
    if p.lr_exp == "zero":
        return None
    return ZERO if p.lr_exp is None and not p.lr else p.lr_exp


def _matrix_weight_positions(graph):
    """node -> (position of its parameter operand, readout?) for matrix uses of parameters."""
    out = {}
    for p in graph.params.values():
        for u in p.uses:
            if u.kind == "matrix" and u.op != "embedding":
                pos = _param_position(graph, u.node, p)
                readout = not any(p.dims[d] is None or p.dims[d] > 0 for d in u.fan_out)
                out[u.node] = (pos, readout)
    return out


def _param_position(graph, node, p):
    """Argument position through which a parameter (possibly via views) reaches ``node``."""
    for u, _, d in graph.nx.in_edges(node, data=True):
        seen, cur = set(), u
        while cur is not None and cur not in seen:
            seen.add(cur)
            if graph.node(cur)["param"] == p.name:
                return d["pos"]
            ins = graph.inputs(cur)
            cur = ins[0] if ins and graph.node(cur)["kind"] == "call_function" else None
    return "1"


def _init_exp(p):
    if p.init_exp == "zero":
        return NEG
    return p.init_exp if p.init_exp is not None else ZERO


def _forward(graph, dW, weight_pos, align, unknown) -> dict[str, Sizes]:
    sizes: dict[str, Sizes] = {}
    for name in graph.order:
        a = graph.node(name)
        if a["kind"] == "placeholder":
            sizes[name] = _placeholder(graph, a, name, dW)
            continue
        if a["kind"] != "call_function":
            continue
        op, in_edges = _op_view(graph, sizes, name, weight_pos, align)
        ins, wp = op.ins, weight_pos.get(name)
        fwd = RULES.get(a["op"], (None, None))[0]
        if fwd is None:
            unknown.setdefault(a["op"], [])
            if name not in unknown[a["op"]]:
                unknown[a["op"]].append(name)
            x, dx, extra = (mx(*(s.x for s in ins)) if ins else ZERO), mx(*(s.dx for s in ins)), {}
        else:
            x, dx, extra = fwd(op)
        src = _sources(graph, name, a, ins, wp)
        uncapped = extra.get("uncapped")
        if uncapped is None:  # ops that pass a size or change through pass its cap through too
            uncapped = {k: max(s.uncapped[k] for s in ins if k in s.uncapped)
                        for k in ("x", "dx") if any(k in s.uncapped for s in ins)
                        and (x if k == "x" else dx) >= max(getattr(s, k) for s in ins if k in s.uncapped)}
        sizes[name] = Sizes(x=x, dx=dx, src=src, terms={k: v for k, v in extra.items()
                                                          if k in ("dW z0", "W0 dz", "dW dz")},
                            logits=extra.get("logits"), uncapped={k: v for k, v in uncapped.items() if v})
    return sizes


def _op_view(graph, sizes, name, weight_pos, align):
    """(the ``Op`` a rule sees for node ``name``, its input edges in argument order)."""
    in_edges = sorted(graph.nx.in_edges(name, data=True), key=lambda e: e[2]["order"])
    wp = weight_pos.get(name)
    op = Op(name=name, attrs=graph.node(name), ins=[sizes.get(u, Sizes()) for u, _, _ in in_edges],
            in_names=[u for u, _, _ in in_edges], pos=[d["pos"] for _, _, d in in_edges],
            in_dims=[graph.node(u)["dims"] for u, _, _ in in_edges],
            weight=wp[0] if wp else None, readout=bool(wp and wp[1]), align=align)
    return op, in_edges


def _placeholder(graph, a, name, dW):
    if a["param"]:
        p = graph.params[a["param"]]
        return Sizes(x=_init_exp(p), dx=dW[p.name], src=frozenset({p.name}))
    if a["buffer"]:
        v = a["scalars"].get("value")
        return Sizes(x=v["exp"] if v and v["exp"] is not None else ZERO, dx=NEG)
    return Sizes(x=ZERO, dx=NEG, src=frozenset({name}))


def _sources(graph, name, a, ins, wp):
    """Random sources a node's coordinates depend on: a contraction with a parameter starts a
    new source (TP's independent Gaussian vectors); pieces of a split are distinct sources."""
    if wp is not None or a["op"] == "embedding":
        return frozenset({name})
    if a["op"] == "getitem" and ins:
        return frozenset((s, a["args"][1]) for s in ins[0].src)
    return frozenset().union(*(s.src for s in ins)) if ins else frozenset()


def _backward(graph, sizes, out_name, weight_pos, align):
    """Gradient exponents, from Theta(1) per coordinate at the output back to the parameters."""
    for s in sizes.values():
        s.g = NEG
    sizes[out_name].g = ZERO
    for name in reversed(graph.order):
        a = graph.node(name)
        if a["kind"] != "call_function" or name not in sizes:
            continue
        g = sizes[name].g
        if g == NEG:
            continue
        op, in_edges = _op_view(graph, sizes, name, weight_pos, align)
        bwd = RULES.get(a["op"], (None, _all_back))[1]
        grads = bwd(op, g)
        z_out = sizes[name].gz or frozenset()
        for i, ((u, _, _), gi) in enumerate(zip(in_edges, grads)):
            if u not in sizes or gi is None or gi == NEG:
                continue
            z = _zero_sum_input(graph, op, i, u, z_out)
            if z is None:  # summed over a dim whose gradient cancels: exactly zero
                continue
            s = sizes[u]
            s.g = mx(s.g, gi)
            s.gz = z if s.gz is None else s.gz & z


#: Ops whose gradient into an input sums to zero along some of its dims, by construction:
#: softmax is invariant to a shift shared by all keys, so the gradient into k sums to zero over
#: the key positions (why a key bias never trains). op -> {input index: dims(ndim)}.
#: Batch norm in training mode subtracts each channel's batch mean, so the gradient into its
#: input sums to zero over the batch and spatial dims (why a conv bias before it never trains).
ZERO_SUM = {
    "scaled_dot_product_attention": {1: lambda op, ndim: {ndim - 2}},
    "batch_norm": {0: lambda op, ndim: ({0} | set(range(2, ndim))) if op.arg(5) is True else set()},
}


def _zero_sum_input(graph, op: Op, i, u, z_out):
    """Dims of input ``u`` along which its gradient sums to zero, given the output's; None when
    the input is broadcast along such a dim through a linear op (its gradient is exactly 0)."""
    from ..graph.trace import _follow

    declared = ZERO_SUM.get(op.op, {}).get(i)
    if declared is not None:
        return frozenset(declared(op, len(graph.node(u)["shapes"][graph.widths[-1]] or ())))
    if not z_out:
        return frozenset()
    w = graph.widths[-1]
    shp_in, shp_out = graph.node(u)["shapes"][w], op.attrs["shapes"][w]
    if shp_in is None or shp_out is None:
        return frozenset()
    if op.op in VIEW_OPS:
        m = _follow(graph, u, op.name) or []
        return frozenset(o for o, tgt in enumerate(m) if len(tgt) == 1 and next(iter(tgt)) in z_out
                         and shp_in[o] == shp_out[next(iter(tgt))])
    data_pos, bias_pos = {"linear": ("0", "2"), "addmm": ("1", "0")}.get(op.op, (None, None))
    if op.pos[i] == data_pos:
        return frozenset(d for d in z_out if d < len(shp_in) - 1)  # rows pass through
    if op.pos[i] == bias_pos:  # the bias gradient sums the rows
        return None if any(d < len(shp_out) - 1 for d in z_out) else frozenset()
    if op.op in ("add", "sub"):  # right-aligned broadcasting
        off = len(shp_out) - len(shp_in)
        broadcast = {d for d in range(len(shp_out)) if d < off or shp_in[d - off] != shp_out[d]}
        if broadcast & z_out:
            return None
        return frozenset(d - off for d in z_out)
    return frozenset()
