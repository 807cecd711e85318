"""Ops that move, copy, view, slice or index a tensor, and ops that make constants.

Sizes pass through them unchanged. Views also say how they map dims (so a parameter's fan-in and
fan-out dims can be followed through ``W.t()`` or ``W.view(...)``), and slicing ops say along
which dim they cut: disjoint slices of a fresh projection's output dim are independent at init
(q, k, v from one packed projection), while slices along a batch or sequence dim are not.
"""
from __future__ import annotations

from .core import NEG, ZERO, Op, OpSpec, Undetermined, Use, mx, no_back, pass_back, same, vector_use
from .registry import register


def reshape_map(old, new):
    """For each old dim, the set of new dims holding its elements (sizes matched by products)."""
    m = [set() for _ in old]
    i = j = 0
    while i < len(old) and j < len(new):
        go, gn, po, pn = [i], [j], old[i], new[j]
        while po != pn:
            if po < pn and i + 1 < len(old):
                i += 1
                go.append(i)
                po *= old[i]
            elif j + 1 < len(new):
                j += 1
                gn.append(j)
                pn *= new[j]
            else:
                break
        for o in go:
            m[o] = {d for d in gn if new[d] != 1} if old[o] != 1 else set()
        i += 1
        j += 1
    return m


def _ident(args, old, new):
    if len(old) == len(new):
        return [{d} for d in range(len(old))]
    return reshape_map(list(old), list(new))


def _t(args, old, new):
    return [{1}, {0}] if len(old) == 2 else [{d} for d in range(len(old))]


def _transpose(args, old, new):
    d0, d1 = (x % len(old) for x in args[1:3])
    m = list(range(len(old)))
    m[d0], m[d1] = d1, d0
    return [{x} for x in m]


def _permute(args, old, new):
    perm = [x % len(old) for x in args[1]]
    return [{perm.index(d)} for d in range(len(old))]


def _expand(args, old, new):
    off = len(new) - len(old)
    return [{d + off} for d in range(len(old))]


def _reshape(args, old, new):
    if old == new:
        return [{d} for d in range(len(old))]
    return reshape_map(list(old), list(new))


_view_use = (lambda attrs, pos, ndim: vector_use(ndim))


def _lookup_use(attrs, pos, ndim):
    """A table read by integer ids (``W[ids]``, ``index_select(W, d, ids)``, ``gather``): each
    output entry is one entry of the table, with no sum over the indexed dim, so that dim is
    neither a fan-in nor a fan-out (a lookup is never a readout, whatever the vocabulary's size;
    TP5 App B: an embedding is an input weight). The other dims index the output."""
    if pos != "0":
        return vector_use(ndim)
    args = attrs["args"]
    if attrs["op"] == "index":
        ids = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
        indexed = {d for d, t in enumerate(ids) if t is not None}
    else:
        d = args[1] if len(args) > 1 and isinstance(args[1], int) else None
        indexed = {d % ndim} if d is not None and ndim else set()
    return Use("vector", frozenset(), frozenset(range(ndim)) - frozenset(indexed))


def _view(names, dim_map=_ident, backward=pass_back, forward=None):
    def fwd(op: Op):
        x, dx, _ = same(op)
        z = op.ins[0] if op.ins else None
        return x, dx, {"centered": bool(z and z.centered), "sign": z.sign if z else 0}
    register(OpSpec(tuple(names), forward or fwd, backward, view=True, dim_map=dim_map))


_view(("t", "numpy_T"), _t)
_view(("transpose", "swapaxes"), _transpose)
_view(("permute",), _permute)
_view(("expand", "expand_as"), _expand)
_view(("view", "reshape", "_unsafe_view", "view_as", "reshape_as", "flatten", "unflatten"), _reshape)
_view(("unsqueeze", "squeeze", "squeeze_", "unsqueeze_", "to", "_to_copy", "clone", "contiguous",
       "alias", "type_as", "lift_fresh_copy", "dropout", "float", "type", "movedim"))
_view(("detach",), backward=no_back)  # no gradient flows back through detach
# inlined higher-order ops (graph/hop.py): torch.map's body sees one slice of a mapped operand
# and its outputs are stacked along a new leading dim
_view(("map_slice",), lambda args, old, new: [set()] + [{d - 1} for d in range(1, len(old))])
_view(("map_stack",), _expand)


def _cond_fwd(op: Op):
    """torch.cond's output: which branch runs depends on the data, so it is sized only when both
    branches give the same sizes."""
    a, b = op.ins[0], op.ins[-1]
    if (a.x, a.dx) != (b.x, b.dx):
        raise Undetermined(f"the branches of torch.cond give outputs of different sizes (n^{a.x} "
                           f"and n^{b.x} at init, changes n^{a.dx} and n^{b.dx}); which one runs "
                           "depends on the data")
    return a.x, a.dx, {"centered": a.centered and b.centered, "sign": a.sign if a.sign == b.sign else 0}


register(OpSpec(("cond_merge",), _cond_fwd, lambda op, g: [g] * len(op.ins), view=True, dim_map=_ident))


# ----------------------------------------------------------------------------- slicing


def _slice_dim(attrs):
    """(dim, key) a slicing op cuts along; distinct keys are disjoint pieces."""
    a, op = attrs["args"], attrs["op"]
    kw = attrs.get("kwargs") or {}
    if op == "slice":
        return (a[1] if len(a) > 1 else kw.get("dim", 0)), tuple(a[2:5])
    if op in ("select", "narrow"):
        return a[1], tuple(a[2:4])
    return None


#: tuple-valued splits: getitem i of their output is piece i along ``dim``
SPLITS = {"chunk": 2, "split": 2, "split_with_sizes": 2, "unbind": 1, "unsafe_split": 2,
          "tensor_split": 2, "unsafe_chunk": 2}


def split_dim(attrs):
    """Dim a tuple-valued split cuts along (for its getitem pieces)."""
    i = SPLITS.get(attrs["op"])
    if i is None:
        return None
    a = attrs["args"]
    return a[i] if len(a) > i else (attrs.get("kwargs") or {}).get("dim", 0)


def _slice_fwd(op: Op):
    z = op.ins[0]
    return z.x, z.dx, {"centered": z.centered, "sign": z.sign}


register(OpSpec(("slice", "select", "narrow"), _slice_fwd, pass_back, view=True,
                dim_map=_ident, use=_view_use))
register(OpSpec(tuple(SPLITS) + ("getitem",), _slice_fwd, pass_back))
# gathering and rearranging entries keeps the coordinate scale
register(OpSpec(("polar", "view_as_complex", "view_as_real", "unfold", "complex", "real", "imag"),
                same, pass_back))  # RoPE in complex numbers (Llama 4), sliding windows: same scale
register(OpSpec(("index", "index_select", "gather", "take_along_dim"), same, pass_back, use=_lookup_use))
register(OpSpec(("sort", "topk", "kthvalue", "roll", "flip", "repeat", "repeat_interleave",
                 "tile", "pad", "constant_pad_nd", "tril", "triu",
                 "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                 "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d"),
                same, pass_back, use=_view_use))


def _index_add_fwd(op: Op):
    """index_add / scatter_add(self, dim, index, src): src's entries added into self along
    ``dim`` (an MoE layer's expert outputs put back at their tokens). Each target gets at most
    src.shape[dim] terms: a bounded count unless that dim is width-sized."""
    dims = op.dims_at("3") or ()
    d = dims[op.arg(1, 0) % len(dims)] if dims else ZERO
    if d is not None and d != 0:
        raise Undetermined("it adds a width-sized number of entries into a target coordinate")
    ins = [s for s in (op.input_at("0"), op.input_at("3")) if s is not None]
    return mx(*(s.x for s in ins)), mx(*(s.dx for s in ins)), {}


register(OpSpec(("index_add", "index_add_", "scatter_add", "scatter_add_"), _index_add_fwd,
                lambda op, g: [g if p in ("0", "3") else NEG for p in op.pos], use=_view_use))


def _put_fwd(op: Op):
    """index_put / scatter / masked_scatter: some entries of self replaced by src's; the larger
    of the two sizes (no cancellation assumed)."""
    ins = [s for p, s in zip(op.pos, op.ins) if p in ("0", "2", "3", "values", "src")]
    return mx(*(s.x for s in ins)), mx(*(s.dx for s in ins)), {}


register(OpSpec(("index_put", "index_put_", "scatter", "scatter_", "masked_scatter",
                 "masked_scatter_", "slice_scatter", "select_scatter"), _put_fwd,
                lambda op, g: [g] * len(op.ins), use=_view_use))


def _copy_fwd(op: Op):
    """copy_(self, src): self becomes src."""
    src = op.input_at("1") or op.ins[-1]
    return src.x, src.dx, {"centered": src.centered, "sign": src.sign}


register(OpSpec(("copy_", "copy"), _copy_fwd,
                lambda op, g: [g if p == "1" else NEG for p in op.pos], use=_view_use))


# ----------------------------------------------------------------------------- constants


def _const_fwd(op: Op):
    return ZERO, NEG, {}


#: position of the fill value of the ``full`` family
FILL_POS = {"full": 1, "full_like": 1, "new_full": 2}


def _filled_fwd(op: Op):
    """A tensor of zeros is exactly zero (size n^-oo), not a Theta(1) constant: an accumulator
    ``zeros_like(x)`` or an RNN's initial state ``h0 = zeros(...)`` adds nothing. ``full`` with a
    fill value of 0 likewise; any other fill value is a Theta(1) constant."""
    if op.op in FILL_POS:
        fill = op.arg(FILL_POS[op.op], op.arg("fill_value"))
        return (NEG if isinstance(fill, (int, float)) and fill == 0 else ZERO), NEG, {}
    return NEG, NEG, {}


register(OpSpec(("zeros", "zeros_like", "new_zeros", "full", "full_like", "new_full"), _filled_fwd,
                no_back))
register(OpSpec(("arange", "ones", "empty", "ones_like",
                 "empty_like", "new_ones", "new_empty", "scalar_tensor",
                 "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not",
                 "__and__", "__or__", "bitwise_and", "bitwise_or", "bitwise_not", "any", "all",
                 "isnan", "isinf", "isfinite", "diff", "argmax", "argmin", "randn_like", "rand_like",
                 "randint", "lift_fresh", "sym_size", "_assert_scalar", "sym_constrain_range_for_size",
                 "bernoulli", "_assert_tensor_metadata", "sign", "floor", "ceil", "round", "trunc",
                 "argsort", "bucketize", "floor_divide", "remainder", "histc", "bincount", "eye", "searchsorted", "one_hot", "_local_scalar_dense",
                 "sym_numel", "sym_stride", "item", "nonzero", "nonzero_static", "argwhere"),
                _const_fwd, no_back))
