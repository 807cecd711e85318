"""Reductions over dims: sum, mean, norms, variance, extremes, softmax; losses.

A sum over n^alpha coordinates adds alpha (law of large numbers) when its terms are correlated
(nonzero mean: relu features, squares, a readout's trained weights against its input) and alpha/2
(central limit theorem) when they are independent with mean zero (TP5 Table 14). At init a
centered input (E Z = 0: a fresh W z, or z * v with v an independent mean-zero weight) sums CLT;
changes are built by training from correlated vectors and sum LLN.
"""
from __future__ import annotations

from .core import NEG, ZERO, Op, OpSpec, add, cap_note, mx, pass_back, sum_dims
from .pointwise import merge_fwd
from .registry import register


def reduced_alpha(op: Op):
    """Width exponent of the number of reduced elements: input dims minus output dims."""
    din = op.in_dims[0] if op.in_dims else None
    if din is None or op.attrs["dims"] is None:
        return ZERO
    return sum_dims(din, range(len(din))) - sum_dims(op.attrs["dims"], range(len(op.attrs["dims"])))


def _sum_fwd(op: Op):
    z, a = op.ins[0], reduced_alpha(op)
    return add(z.x, a / 2 if z.centered else a), add(z.dx, a), {"centered": z.centered, "sign": z.sign}


def _cumsum_fwd(op: Op):
    z, dims = op.ins[0], op.in_dims[0] or ()
    d = op.arg(1, 0)
    a = dims[d % len(dims)] if dims and dims[d % len(dims)] is not None else ZERO
    return add(z.x, a / 2 if z.centered else a), add(z.dx, a), {"centered": z.centered, "sign": z.sign}


def _mean_fwd(op: Op):
    """mean = sum / n^alpha: bounded by the coordinate size, n^{-alpha/2} smaller when centered."""
    z, a = op.ins[0], reduced_alpha(op)
    return add(z.x, -a / 2 if z.centered else ZERO), z.dx, {"centered": z.centered, "sign": z.sign}


register(OpSpec(("sum", "nansum"), _sum_fwd, pass_back))
register(OpSpec(("cumsum",), _cumsum_fwd, pass_back))
register(OpSpec(("mean",), _mean_fwd, lambda op, g: [g - reduced_alpha(op)] + [NEG] * (len(op.ins) - 1)))


def _extreme_fwd(op: Op):
    """max / median / std pick or summarise entries on the coordinate scale; a max bounds the
    entries it is taken over (``z - z.amax(-1)`` <= 0, the stable softmax shift)."""
    z = op.ins[0]
    return z.x, z.dx, {"upper_of": {z.ident}} if op.op in ("amax", "max") else {}


register(OpSpec(("std", "median"), _extreme_fwd,
                lambda op, g: [g - reduced_alpha(op)] + [NEG] * (len(op.ins) - 1)))
# max picks one entry: its gradient lands there whole
def _max_fwd(op: Op):
    """max / min: over a dim (a reduction) or of two tensors (``min.other``: elementwise)."""
    return merge_fwd(op) if len(op.ins) == 2 else _extreme_fwd(op)


register(OpSpec(("amax", "amin"), _extreme_fwd, pass_back))
register(OpSpec(("max", "min"), _max_fwd, lambda op, g: [g] * len(op.ins)))


def _norm2_fwd(op: Op):
    """||z||_2 over n^alpha entries: z * n^{alpha/2} (a sum of squares, LLN)."""
    z, a = op.ins[0], reduced_alpha(op)
    return add(z.x, a / 2), add(z.dx, a / 2), {}


register(OpSpec(("norm", "linalg_vector_norm"), _norm2_fwd,
                lambda op, g: [g - reduced_alpha(op) / 2] + [NEG] * (len(op.ins) - 1), positive=True))


def _var_fwd(op: Op):
    """variance: a mean of squares, size 2 z; change z + dz."""
    z = op.ins[0]
    return 2 * z.x, add(z.x, z.dx), {}


register(OpSpec(("var",), _var_fwd,
                lambda op, g: [add(g, op.ins[0].x) - reduced_alpha(op)] + [NEG] * (len(op.ins) - 1),
                positive=True))


def _softmax_fwd(op: Op):
    """softmax over a dim of n^alpha entries spreads mass 1 over them: n^{-alpha}; bounded, so
    its change is at most its size."""
    z = op.ins[0]
    spread = ZERO
    if op.in_dims and op.in_dims[0]:
        d = op.in_dims[0][op.arg(1, -1) % len(op.in_dims[0])]
        spread = -(d or ZERO)
    return spread, add(min(z.dx, ZERO), spread), cap_note(dx=add(z.dx, spread))


register(OpSpec(("softmax", "_softmax", "_safe_softmax"), _softmax_fwd, pass_back, positive=True))


def _log_softmax_fwd(op: Op):
    """log_softmax, logsumexp: Theta(1) at zero input, ~|z| for large z. logsumexp(z) bounds every
    entry of z from above (``z - logsumexp(z) <= 0``: a softmax written by hand)."""
    z = op.ins[0]
    return mx(ZERO, z.x), z.dx, {"upper_of": {z.ident}} if op.op == "logsumexp" else {}


register(OpSpec(("log_softmax", "_log_softmax", "logsumexp"), _log_softmax_fwd, pass_back))


def _loss_fwd(op: Op):
    """A loss the model returns itself: Theta(1) per output coordinate (TP4)."""
    z = op.ins[0]
    return mx(z.x, ZERO), z.dx, {}


register(OpSpec(("cross_entropy_loss", "nll_loss", "nll_loss_nd", "mse_loss", "l1_loss",
                 "smooth_l1_loss", "huber_loss", "binary_cross_entropy_with_logits",
                 "binary_cross_entropy", "kl_div"), _loss_fwd, pass_back))
