"""Normalisation: layer, RMS, group, batch and instance norm.

(z - mean) / std * gain + shift is Theta(1) whatever the input scale; its change is the input's
change relative to the input (dz - z), capped at Theta(1), plus the gain's and shift's changes.
"""
from __future__ import annotations

from .core import NEG, ZERO, Op, OpSpec, add, cap_note, mx, vector_use
from .registry import register

#: argument positions of the (gain, shift) of each norm op
PARAM_POS = {"layer_norm": (2, 3), "group_norm": (2, 3), "rms_norm": (2,),
             "batch_norm": (1, 2), "native_batch_norm": (1, 2), "instance_norm": (1, 2),
             "_native_batch_norm_legit_no_training": (1, 2)}


def _gain_shift(op: Op):
    positions = PARAM_POS.get(op.op, ())
    gain = op.input_at(str(positions[0])) if positions else None
    shift = op.input_at(str(positions[1])) if len(positions) > 1 else None
    return gain, shift


def _norm_fwd(op: Op):
    z = op.ins[0]
    gain, shift = _gain_shift(op)
    gx = gain.x if gain is not None else ZERO
    x = mx(gx, shift.x if shift is not None else NEG)
    rel = z.dx - z.x if z.x != NEG else NEG
    dx = mx(add(gx, min(rel, ZERO)), gain.dx if gain is not None else NEG,
            shift.dx if shift is not None else NEG)
    return x, dx, cap_note(dx=add(gx, rel))


def _norm_bwd(op: Op, g):
    z = op.ins[0]
    gain, shift = _gain_shift(op)
    gx = mx(gain.x, gain.dx) if gain is not None else ZERO
    grads = [NEG] * len(op.ins)
    grads[0] = add(g, gx) - z.x if z.x != NEG else NEG
    for p in (gain, shift):
        if p is not None:
            grads[op.ins.index(p)] = g
    return grads


def _batch_norm_training(op: Op, ndim):
    """Batch norm in training mode subtracts each channel's batch mean: the gradient into its
    input sums to zero over the batch and spatial dims (why a conv bias before it never trains)."""
    training = op.arg(5) if op.op == "batch_norm" else None
    return ({0} | set(range(2, ndim))) if training is True else set()


for _name in PARAM_POS:
    register(OpSpec((_name,), _norm_fwd, _norm_bwd, use=lambda attrs, pos, ndim: vector_use(ndim),
                    zero_sum={0: _batch_norm_training} if _name == "batch_norm" else {}))
