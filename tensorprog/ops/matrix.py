"""Contractions: linear, addmm, mm / bmm / matmul, einsum, convolutions, bilinear, embedding.

y = W z contracts the weight's fan-in dims against the data. With a parameter W the change after
a step is dW z0 + W0 dz + dW dz, each term sized by the ``Alignment`` (TP4, TP5 Table 14); two
activations (q k^T, attention weights times v) contract CLT-like while independent (at init,
from different random sources) and LLN-like once training has correlated them.
"""
from __future__ import annotations

from .core import (HALF, NEG, ZERO, Op, OpSpec, Sizes, Undetermined, Use, add, contract,
                   grad_through, mx, sum_dims, vector_use)
from .registry import register

CONVS = ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
         "conv_transpose3d")


def _transposed(op_name, args) -> bool:
    return op_name.startswith("conv_transpose") or (
        op_name == "convolution" and len(args) > 6 and args[6] is True)


# ----------------------------------------------------------------------------- operand roles


def _linear_use(attrs, pos, ndim):
    return Use("matrix", frozenset({1}), frozenset({0})) if pos == "1" else vector_use(ndim)


def _addmm_use(attrs, pos, ndim):
    if pos == "2":
        return Use("matrix", frozenset({0}), frozenset({1}))
    if pos == "1":
        return Use("matrix", frozenset({1}), frozenset({0}))
    return vector_use(ndim)


def _mm_use(attrs, pos, ndim):
    """A @ B: A's last dim meets B's second-to-last; batch dims index the output."""
    if ndim == 1:
        return Use("matrix", frozenset({0}), frozenset())
    batch = frozenset(range(ndim - 2))
    if pos == "1":
        return Use("matrix", frozenset({ndim - 2}), frozenset({ndim - 1}) | batch)
    return Use("matrix", frozenset({ndim - 1}), frozenset({ndim - 2}) | batch)


def _conv_use(attrs, pos, ndim):
    if pos != "1":
        return vector_use(ndim)
    if _transposed(attrs["op"], attrs["args"]):
        return Use("matrix", frozenset({0} | set(range(2, ndim))), frozenset({1}))
    return Use("matrix", frozenset(range(1, ndim)), frozenset({0}))


def _bilinear_use(attrs, pos, ndim):
    """y_k = sum_ij W_kij x1_i x2_j + b_k: W contracts (in1, in2)."""
    return Use("matrix", frozenset({1, 2}), frozenset({0})) if pos == "2" else vector_use(ndim)


def _embedding_use(attrs, pos, ndim):
    """embedding(W, ids) reads row ids[t] of W: no sum over the vocabulary, so the fan-in is the
    one-hot id's, 1 (as a bias's; TP5 App B: an embedding is an input weight whatever its
    vocabulary size). A vocabulary that grows with width is then no fan-in: the table is an
    input weight when d grows, scalar-like when d is finite, never a readout or hidden."""
    return Use("matrix", frozenset(), frozenset({1})) if pos == "0" else Use("index")


def _fixed(pos):
    return lambda attrs, weight_pos: pos


def _other_operand(attrs, weight_pos):
    return "0" if weight_pos == "1" else "1"


# ----------------------------------------------------------------------------- einsum


def parse_einsum(equation: str, n_operands: int):
    """('bti,oi->bto', 2) -> (['bti', 'oi'], 'bto'), ellipses as one letter '.' ."""
    eq = equation.replace(" ", "").replace("...", ".")
    if "->" in eq:
        lhs, out = eq.split("->")
    else:
        lhs = eq
        letters = lhs.replace(",", "")
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c != "."))
        out = ("." if "." in letters else "") + out
    ins = lhs.split(",")
    if len(ins) != n_operands:
        raise Undetermined(f"einsum equation {equation!r} names {len(ins)} operands, got {n_operands}")
    return ins, out


def _einsum_operands(attrs):
    ops = attrs["args"][1] if len(attrs["args"]) > 1 else []
    return parse_einsum(attrs["args"][0], len(ops))


def _einsum_use(attrs, pos, ndim):
    """Operand i ('1.i'): letters absent from the output are contracted (fan-in), letters in the
    output index it (fan-out). An ellipsis is taken as batch (fan-out)."""
    try:
        ins, out = _einsum_operands(attrs)
        i = int(pos.split(".")[1])
        letters = ins[i]
    except (Undetermined, IndexError, ValueError):
        return Use("unknown")
    if "." in letters:
        k = letters.index(".")
        extra = ndim - (len(letters) - 1)
        letters = letters[:k] + "." * extra + letters[k + 1:]
    if len(letters) != ndim:
        return Use("unknown")
    fan_in = frozenset(d for d, c in enumerate(letters) if c not in out)
    return Use("matrix", fan_in, frozenset(range(ndim)) - fan_in)


def _einsum_data_pos(attrs, weight_pos):
    return "1.1" if weight_pos == "1.0" else "1.0"


def _letter_exps(letters, dims):
    """{letter: width exponent} of one einsum operand ('.' covers the leading extra dims)."""
    if dims is None:
        return {}
    out = {}
    if "." in letters:
        k = letters.index(".")
        extra = len(dims) - (len(letters) - 1)
        letters = letters[:k] + "." * extra + letters[k + 1:]
    for c, d in zip(letters, dims):
        out[c] = mx(out.get(c, NEG), d if d is not None else ZERO)
    return out


def _einsum_fwd(op: Op):
    ins, out = _einsum_operands(op.attrs)
    if len(ins) == 1:  # a sum over the dropped letters (a trace, a reduction)
        z = op.ins[0]
        ex = _letter_exps(ins[0], op.in_dims[0])
        alpha = sum((v for c, v in ex.items() if c not in out), ZERO)
        return add(z.x, alpha), add(z.dx, alpha), {}
    if len(ins) != 2:
        raise Undetermined(f"einsum over {len(ins)} operands")
    ea, eb = _letter_exps(ins[0], op.in_dims[0]), _letter_exps(ins[1], op.in_dims[1])
    alpha = sum((v for c, v in ea.items() if c not in out and c in eb), ZERO)
    only = sum((v for c, v in {**ea, **eb}.items() if c not in out and not (c in ea and c in eb)), ZERO)
    a, b = op.ins
    if op.weight is not None:
        w, z = (a, b) if op.weight == "1.0" else (b, a)
        x, dx, terms = _weight_contract(op, w, z, alpha)
    else:
        x, dx, terms = contract(a, b, alpha, HALF if not (a.src & b.src) else 1, 1, 1, 1)
    return add(x, only), add(dx, only), terms


def _einsum_bwd(op: Op, g):
    """g_a = sum over the letters of b and of the output that a lacks, of g * b."""
    ins, out = _einsum_operands(op.attrs)
    if len(ins) == 1:
        return [g]
    if len(ins) != 2:
        raise Undetermined(f"einsum over {len(ins)} operands")
    ea, eb = _letter_exps(ins[0], op.in_dims[0]), _letter_exps(ins[1], op.in_dims[1])
    eo = {**{c: v for c, v in ea.items() if c in out}, **{c: v for c, v in eb.items() if c in out}}
    a, b = op.ins
    summed_a = sum((v for c, v in {**eb, **eo}.items() if c not in ea), ZERO)
    summed_b = sum((v for c, v in {**ea, **eo}.items() if c not in eb), ZERO)
    return [grad_through(g, b, summed_a, op.align), grad_through(g, a, summed_b, op.align)]


# ----------------------------------------------------------------------------- matrix rules


def _weight_contract(op: Op, w: Sizes, z: Sizes, alpha):
    """W z with W a parameter: TP alignment for the three change terms."""
    w0dz = op.align.w0_dz_readout if op.readout else op.align.w0_dz_hidden
    x, dx, terms = contract(w, z, alpha, HALF, op.align.dw_z0, w0dz, op.align.dw_dz)
    return x, dx, {"dW z0": terms["da b0"], "W0 dz": terms["a0 db"], "dW dz": terms["da db"]}


def _last(op, pos):
    dims = op.dims_at(pos)
    return dims[-1] if dims and dims[-1] is not None else ZERO


def _matrix_fwd(op: Op):
    """y = W z (+ bias). Data operand z, weight W (a parameter) or a second activation."""
    kind = op.op
    if kind == "linear":
        data, other, bias, alpha = op.input_at("0"), op.input_at("1"), op.input_at("2"), _last(op, "0")
    elif kind == "addmm":
        data, other, bias, alpha = op.input_at("1"), op.input_at("2"), op.input_at("0"), _last(op, "1")
    elif kind in CONVS:
        data, other, bias = op.input_at("0"), op.input_at("1"), op.input_at("2")
        wdims = op.dims_at("1") or ()
        alpha = sum_dims(wdims, [0] + list(range(2, len(wdims)))) if _transposed(kind, op.attrs["args"]) \
            else sum_dims(wdims, range(1, len(wdims)))
    else:  # mm, bmm, matmul: contraction over A's last dim
        a_dims = op.in_dims[0] or ()
        data, other, bias = op.ins[0], op.ins[1] if len(op.ins) > 1 else op.ins[0], None
        alpha = a_dims[-1] if a_dims and a_dims[-1] is not None else ZERO
        if op.weight == "0":
            data, other = other, data
    if other is None:
        return data.x, data.dx, {}
    if op.weight is not None:
        x, dx, terms = _weight_contract(op, other, data, alpha)
    else:  # two activations: correlated after training
        x, dx, terms = contract(data, other, alpha, HALF if not (data.src & other.src) else 1, 1, 1, 1)
    if bias is not None:
        x, dx = mx(x, bias.x), mx(dx, bias.dx)
    return x, dx, terms


def _matrix_bwd(op: Op, g):
    """g_z = W^T g: a sum over the output dim, CLT against W_0 (gradient independence, TP4)
    and LLN against the change dW, which is built from earlier gradients. g_W = g z^T sums
    over the rows of the output (batch, sequence: usually finite) in the same way."""
    grads = [NEG] * len(op.ins)
    kind = op.op
    if kind in ("linear", "addmm") or kind in CONVS:
        d_pos, w_pos, b_pos = ("1", "2", "0") if kind == "addmm" else ("0", "1", "2")
    else:
        d_pos, w_pos, b_pos = ("1", "0", None) if op.weight == "0" else ("0", "1", None)
    di, wi = op.index_at(d_pos), op.index_at(w_pos)
    bi = op.index_at(b_pos) if b_pos else None
    data = op.ins[di] if di is not None else None
    w = op.ins[wi] if wi is not None else None
    if data is not None:
        grads[di] = g if w is None else grad_through(g, w, _out_alpha(op), op.align)
    if w is not None:
        grads[wi] = g if data is None else grad_through(g, data, _row_alpha(op), op.align)
    if bi is not None:
        grads[bi] = g
    return grads


def _row_alpha(op: Op):
    """Width exponent of the output rows a weight gradient sums over (batch, sequence...)."""
    dims = op.dims
    if not dims:
        return ZERO
    if op.op in CONVS:
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
    if op.op in CONVS:
        out = dims[1] if len(dims) > 1 and dims[1] is not None else ZERO
        # each input channel feeds the out_channels / groups outputs of its group:
        # weight (out, in / groups, k...) and input (B, in, ...) give out / groups =
        # out * (in / groups) / in (a depthwise conv: 1 output per input channel).
        wd, xd = op.dims_at("1"), op.dims_at("0")
        if wd and xd and len(xd) > 1 and not _transposed(op.op, op.attrs["args"]) \
                and None not in (wd[0], wd[1], xd[1]):
            out = wd[0] + wd[1] - xd[1]
        return out
    return dims[-1] if dims[-1] is not None else ZERO


register(OpSpec(("linear",), _matrix_fwd, _matrix_bwd, use=_linear_use, data_pos=_fixed("0"),
                bias_pos="2", new_source=True))
register(OpSpec(("addmm",), _matrix_fwd, _matrix_bwd, use=_addmm_use, data_pos=_fixed("1"),
                bias_pos="0", new_source=True))
register(OpSpec(("mm", "bmm", "matmul"), _matrix_fwd, _matrix_bwd, use=_mm_use,
                data_pos=_other_operand, attention=True, contract_pos=("0", "1")))
register(OpSpec(CONVS, _matrix_fwd, _matrix_bwd, use=_conv_use, data_pos=_fixed("0"),
                bias_pos="2", bias_dim=1, new_source=True))
# ----------------------------------------------------------------------------- grouped and batched


def _grouped_use(attrs, pos, ndim):
    """grouped_mm(input (S, in), weight (E, in, out), offs): each expert's (in, out) matrix;
    the expert dim picks the matrix (an index, finite)."""
    if pos == "1" and ndim == 3:
        return Use("matrix", frozenset({1}), frozenset({0, 2}))
    return Use("index") if pos == "2" else vector_use(ndim)


def _grouped_fwd(op: Op):
    data, w = op.input_at("0"), op.input_at("1")
    wd = op.dims_at("1") or (ZERO, ZERO, ZERO)
    alpha = wd[1] if len(wd) > 1 and wd[1] is not None else ZERO
    if op.weight is not None:
        return _weight_contract(op, w, data, alpha)
    return contract(data, w, alpha, HALF if not (data.src & w.src) else 1, 1, 1, 1)


def _grouped_bwd(op: Op, g):
    data, w = op.input_at("0"), op.input_at("1")
    wd = op.dims_at("1") or (ZERO, ZERO, ZERO)
    out = wd[2] if len(wd) > 2 and wd[2] is not None else ZERO
    grads = [NEG] * len(op.ins)
    grads[op.index_at("0")] = grad_through(g, w, out, op.align)
    grads[op.index_at("1")] = grad_through(g, data, ZERO, op.align)  # rows: tokens, finite
    return grads


register(OpSpec(("grouped_mm_fallback", "_grouped_mm", "grouped_mm"), _grouped_fwd, _grouped_bwd,
                use=_grouped_use, data_pos=_fixed("0"), new_source=True))


def _baddbmm_fwd(op: Op):
    """baddbmm(input, b1, b2, beta, alpha) = beta input + alpha b1 @ b2 (bloom's ALiBi logits)."""
    a, b, bias = op.input_at("1"), op.input_at("2"), op.input_at("0")
    alpha = _last(op, "1")
    x, dx, terms = contract(a, b, alpha, HALF if not (a.src & b.src) else 1, 1, 1, 1)
    s = op.scalar("alpha") or ZERO
    x, dx = add(x, s), add(dx, s)
    if bias is not None:
        x, dx = mx(x, bias.x), mx(dx, bias.dx)
    return x, dx, {}


def _baddbmm_bwd(op: Op, g):
    a, b = op.input_at("1"), op.input_at("2")
    s = op.scalar("alpha") or ZERO
    d = op.dims[-1] if op.dims and op.dims[-1] is not None else ZERO
    grads = [g] * len(op.ins)
    grads[op.index_at("1")] = add(grad_through(g, b, d, op.align), s)
    grads[op.index_at("2")] = add(grad_through(g, a, ZERO, op.align), s)
    return grads


register(OpSpec(("baddbmm", "addbmm"), _baddbmm_fwd, _baddbmm_bwd, numeric_args=("alpha", "beta"),
                attention=True, contract_pos=("1", "2"), scale_arg="alpha"))


register(OpSpec(("einsum",), _einsum_fwd, _einsum_bwd, use=_einsum_use, data_pos=_einsum_data_pos,
                attention=True, contract_pos=("1.0", "1.1")))


# ----------------------------------------------------------------------------- outer products


def _outer_fwd(op: Op):
    """outer(a, b)_ij = a_i b_j: no sum, sizes multiply (RoPE's positions x frequencies)."""
    a, b = op.ins[0], op.ins[1]
    o = _outer(a, b)
    return o.x, o.dx, {}


def _outer_bwd(op: Op, g):
    """g_a_i = sum_j g_ij b_j over b's length (LLN: an upper bound)."""
    a, b = op.ins[0], op.ins[1]
    la = (op.in_dims[1] or (ZERO,))[0] or ZERO
    lb = (op.in_dims[0] or (ZERO,))[0] or ZERO
    return [add(g, mx(b.x, b.dx), la), add(g, mx(a.x, a.dx), lb)]


register(OpSpec(("outer", "ger"), _outer_fwd, _outer_bwd, use=lambda attrs, pos, ndim: vector_use(ndim)))


# ----------------------------------------------------------------------------- embedding


def _embedding_fwd(op: Op):
    w = op.input_at("0")
    return w.x, w.dx, {"dW z0": w.dx}


register(OpSpec(("embedding",), _embedding_fwd, lambda op, g: [g] + [NEG] * (len(op.ins) - 1),
                use=_embedding_use, new_source=True))


# ----------------------------------------------------------------------------- bilinear


def _outer(a: Sizes, b: Sizes) -> Sizes:
    """The outer product x1 (x) x2 that a bilinear weight contracts against."""
    return Sizes(x=add(a.x, b.x), dx=mx(add(a.dx, b.x), add(a.x, b.dx), add(a.dx, b.dx)),
                 src=a.src | b.src)


def _bilinear_fwd(op: Op):
    """W (out, in1, in2) contracted with x1 (x) x2 over in1 * in2: the matrix rule with the
    outer product as the data operand."""
    x1, x2, w, b = op.input_at("0"), op.input_at("1"), op.input_at("2"), op.input_at("3")
    wd = op.dims_at("2") or (ZERO, ZERO, ZERO)
    alpha = sum((d for d in wd[1:] if d is not None), ZERO)
    x, dx, terms = _weight_contract(op, w, _outer(x1, x2), alpha)
    if b is not None:
        x, dx = mx(x, b.x), mx(dx, b.dx)
    return x, dx, terms


def _bilinear_bwd(op: Op, g):
    """g_x1 = sum_kj W_kij x2_j g_k (over out and in2), g_x2 likewise, g_W = g x1 x2 summed
    over the rows, g_b = g."""
    x1, x2, w = op.input_at("0"), op.input_at("1"), op.input_at("2")
    d = [v if v is not None else ZERO for v in (op.dims_at("2") or (ZERO, ZERO, ZERO))]
    size = (lambda s: mx(s.x, s.dx))
    grads = [NEG] * len(op.ins)
    grads[op.index_at("0")] = grad_through(add(g, size(x2)), w, d[0] + d[2], op.align)
    grads[op.index_at("1")] = grad_through(add(g, size(x1)), w, d[0] + d[1], op.align)
    grads[op.index_at("2")] = grad_through(add(g, size(x1)), x2, _row_alpha(op), op.align)
    if op.index_at("3") is not None:
        grads[op.index_at("3")] = g
    return grads


register(OpSpec(("bilinear",), _bilinear_fwd, _bilinear_bwd, use=_bilinear_use,
                data_pos=_fixed("0"), new_source=True))
