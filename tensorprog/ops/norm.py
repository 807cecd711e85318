"""Normalisation: layer, RMS, group, batch and instance norm.

(z - mean) / sqrt(var + eps) * gain + shift is Theta(1) for an input that does not vanish; its
change is the input's change relative to the input (dz - z), capped at Theta(1), plus the gain's
and shift's changes. The eps is a fixed number: an input whose coordinates vanish with width
(z ~ n^e, e < 0) has var ~ n^{2e} << eps at large width, and the norm is then the linear map
z / sqrt(eps): its output is n^e, not Theta(1), and its change is dz (as the hand-written
``x * rsqrt(mean(x^2) + eps)``, whose ``add`` of the constant already gives). Layer, RMS and
group norm normalise by the input's own statistics; batch / instance norm keep the scale-free
rule (running statistics in eval mode are not the input's).
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


#: argument position of eps (and its default) where the norm divides by sqrt(var(input) + eps)
EPS_POS = {"layer_norm": (4, 1e-5), "group_norm": (4, 1e-5), "rms_norm": (3, None)}


def _eps_floor(op: Op) -> bool:
    """The op adds a fixed eps > 0 to the input's own variance (rms_norm's eps=None is the dtype's
    machine epsilon, also > 0)."""
    if op.op not in EPS_POS:
        return False
    pos, default = EPS_POS[op.op]
    eps = op.arg(pos, op.attrs["kwargs"].get("eps", default))
    return eps is None or (isinstance(eps, (int, float)) and eps > 0)


def _scale(op: Op, z):
    """Exponent of the divisor max(std(z), sqrt(eps)): the input's size, floored at Theta(1)
    where a fixed eps is added."""
    return mx(z.x, ZERO) if _eps_floor(op) else z.x


def _norm_fwd(op: Op):
    z = op.ins[0]
    gain, shift = _gain_shift(op)
    gx = gain.x if gain is not None else ZERO
    floor = _eps_floor(op)
    unit = min(z.x, ZERO) if floor else ZERO
    x = mx(add(gx, unit), shift.x if shift is not None else NEG)
    rel = z.dx - _scale(op, z) if z.x != NEG or floor else NEG
    u = mx(unit, min(rel, ZERO))  # the normalised input after training, before the gain
    dx = mx(add(gx, min(rel, ZERO)), add(u, gain.dx) if gain is not None else NEG,
            shift.dx if shift is not None else NEG)
    return x, dx, cap_note(dx=add(gx, rel))


def _norm_bwd(op: Op, g):
    z = op.ins[0]
    gain, shift = _gain_shift(op)
    gx = mx(gain.x, gain.dx) if gain is not None else ZERO
    grads = [NEG] * len(op.ins)
    scale = _scale(op, z)
    grads[0] = add(g, gx) - scale if scale != NEG else NEG
    if _eps_floor(op):  # the gain multiplies the normalised input, n^min(z, 0)
        rel = z.dx - scale if scale != NEG else NEG
        u = mx(min(z.x, ZERO), min(rel, ZERO))
    else:
        u = ZERO
    if gain is not None:
        grads[op.ins.index(gain)] = add(g, u)
    if shift is not None:
        grads[op.ins.index(shift)] = g
    return grads


def _batch_norm_training(op: Op, ndim):
    """Batch norm in training mode subtracts each channel's batch mean: the gradient into its
    input sums to zero over the batch and spatial dims (why a conv bias before it never trains)."""
    training = op.arg(5) if op.op == "batch_norm" else None
    return ({0} | set(range(2, ndim))) if training is True else set()


for _name in PARAM_POS:
    register(OpSpec((_name,), _norm_fwd, _norm_bwd, use=lambda attrs, pos, ndim: vector_use(ndim),
                    zero_sum={0: _batch_norm_training} if _name == "batch_norm" else {}))
