"""scaled_dot_product_attention: softmax(q k^T * scale + mask) v.

The logits contract q with k over d_head: CLT-like (d/2) while q and k are independent (at init,
from different projections or different slices of one packed projection), LLN-like (d) once
training has correlated them: why muP needs the scale 1/d where SP uses 1/sqrt(d) (TP5 Def 4.1,
App. D.4). A width-dependent factor folded into q or k before the call is part of the scale.
"""
from __future__ import annotations

from .core import HALF, NEG, ZERO, Op, OpSpec, add, contract, grad_through, mx, vector_use, Use
from .registry import register


def d_head(op: Op):
    d = (op.in_dims[0] or (ZERO,))[-1]
    return ZERO if d is None else d


def own_scale(attrs, d):
    """Exponent of sdpa's own ``scale`` argument; torch's default (None) is 1/sqrt(d_head)."""
    scale = attrs["scalars"].get("scale", {}).get("exp")
    return -d / 2 if scale is None else scale


def sdpa_scale(op: Op):
    return own_scale(op.attrs, d_head(op))


def _sdpa_fwd(op: Op):
    q, k, v = op.ins[0], op.ins[1], op.ins[2]
    d, scale = d_head(op), sdpa_scale(op)
    lx, ldx, _ = contract(q, k, d, HALF if not (q.src & k.src) else 1, 1, 1, 1)
    lx, ldx = add(lx, scale), add(ldx, scale)
    mask = op.input_at("3")
    out_dx = mx(v.dx, add(v.x, min(ldx, ZERO)))  # softmax saturates: its change is at most Theta(1)
    if mask is not None:
        out_dx = mx(out_dx, add(v.x, mask.dx))
    return v.x, out_dx, {"logits": (lx, ldx)}


def _sdpa_bwd(op: Op, g):
    q, k, v = op.ins[0], op.ins[1], op.ins[2]
    d, scale = d_head(op), sdpa_scale(op)
    g_logits = grad_through(g, v, d, op.align)
    grads = [add(g_logits, mx(k.x, k.dx), scale), add(g_logits, mx(q.x, q.dx), scale), g]
    return grads + [NEG] * (len(op.ins) - 3)


def _sdpa_use(attrs, pos, ndim):
    """q, k and v are data; a parameter used as one of them (a learned query) is contracted
    over d_head like a matrix; a mask is elementwise."""
    if pos in ("0", "1"):
        return Use("matrix", frozenset({ndim - 1}), frozenset(range(ndim - 1)))
    return vector_use(ndim)


register(OpSpec(
    ("scaled_dot_product_attention",), _sdpa_fwd, _sdpa_bwd, use=_sdpa_use,
    numeric_args=("scale",), attention=True,
    # softmax is invariant to a shift shared by all keys: the gradient into k sums to zero over
    # the key positions (why a key bias never trains)
    zero_sum={1: lambda op, ndim: {ndim - 2}}))
