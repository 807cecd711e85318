"""Coordinatewise ops (TP's Nonlin rule): arithmetic, activations, bounded and exponential maps.

A coordinatewise function of Theta(1) coordinates is Theta(1) (TP1 Nonlin); sizes matter only
where an input grows or vanishes, so each family states what it does then. Numeric arguments of
arithmetic (``x * c``, ``x / c``, in place too: ``x *= c`` is ``mul_``) are multipliers.
"""
from __future__ import annotations

import sympy as sp

from .core import (HALF, NEG, ZERO, Op, OpSpec, Sizes, Undetermined, add, all_back, cap_note, mx,
                   pass_back, same, vector_use)
from .registry import register, register_tag

OO = sp.oo
_elementwise_use = (lambda attrs, pos, ndim: vector_use(ndim))


def _scalars(op: Op, skip=("alpha",)):
    """Sum of the exponents of the op's numeric arguments; Undetermined if one has no power law."""
    exps = op.scalar_exps(skip)
    if any(e is None for e in exps):
        raise Undetermined(f"a numeric argument of `{op.op}` changes with width but follows no power law")
    return sum(exps, ZERO)


# ----------------------------------------------------------------------------- arithmetic


#: An added constant this small is an epsilon guarding a division (``rsqrt(mean(x^2) + eps)``):
#: sizes are taken in the eps -> 0 limit, as the norm ops and Adam's sign-like update are, unless
#: it is all there is (the tensor it is added to is exactly zero).
EPSILON = 1e-3


def _add_fwd(op: Op):
    """a + b: the larger term (cancellation is not assumed)."""
    consts = [v for k, v in op.attrs["scalars"].items() if k != "alpha" and v["values"][-1] != 0]
    if any(s.x != NEG for s in op.ins):
        consts = [v for v in consts if abs(v["values"][-1]) > EPSILON]
    xs = [s.x for s in op.ins] + [v["exp"] for v in consts if v["exp"] is not None]
    centered = all(s.centered for s in op.ins) and not consts
    signs = {s.sign for s in op.ins} | {(1 if v["values"][-1] > 0 else -1) for v in consts}
    sign = signs.pop() if len(signs) == 1 and op.op in ("add", "add_") else 0
    if op.op in ("sub", "sub_") and len(op.ins) == 2:
        a, b = op.ins
        if a.ident in b.upper_of or (a.sign < 0 and b.sign > 0):
            sign = -1  # z - max(z), z - logsumexp(z), negative minus positive
        elif a.sign > 0 and b.sign < 0:
            sign = 1
    return mx(*xs), mx(*(s.dx for s in op.ins)), {"centered": centered, "sign": sign}


register(OpSpec(("add", "sub", "rsub", "add_", "sub_"), _add_fwd, all_back, use=_elementwise_use,
                numeric_args=("*",)))
def merge_fwd(op: Op):
    """where / cat / stack / minimum...: entries of one input or another: the larger size; a sign
    every input shares is kept; a minimum with a nonpositive (or epsilon-small) bound is
    nonpositive (xIELU's ``expm1(min(x, eps))``), a maximum with a nonnegative one nonnegative."""
    x, dx, _ = _add_fwd(op)
    signs = {s.sign for s in op.ins if s.x != NEG}
    sign = signs.pop() if len(signs) == 1 else 0
    if op.op in ("minimum", "min") and any(s.sign < 0 or (s.value is not None and s.value <= EPSILON)
                                  for s in op.ins):
        sign = -1
    if op.op in ("maximum", "max") and any(s.sign > 0 or (s.value is not None and s.value >= 0) for s in op.ins):
        sign = 1
    return x, dx, {"sign": sign}


def _masked_fill_fwd(op: Op):
    """masked_fill(x, mask, value): x's entries, some replaced by a constant (-inf for a causal
    mask: exp of it is 0); the sign of x survives a fill of the same sign."""
    z, v = op.ins[0], op.arg(2)
    same = isinstance(v, (int, float)) and (v == 0 or (v > 0) == (z.sign > 0) and z.sign != 0)
    return z.x, z.dx, {"sign": z.sign if same else 0}


def _clamp_fwd(op: Op):
    """clamp_min(x, lo) / clamp_max(x, hi) / clamp(x, lo, hi): x's size, bounded by a bound that
    grows no faster; the sign a bound forces (a lower bound >= 0: never negative; an upper bound
    <= an epsilon: never positive, as xIELU's expm1(min(x, eps)))."""
    z = op.ins[0]
    lo = op.arg(1) if op.op in ("clamp_min", "clamp") else None
    hi = op.arg(1) if op.op == "clamp_max" else (op.arg(2) if op.op == "clamp" else None)
    sign = (1 if isinstance(lo, (int, float)) and lo >= 0 else
            -1 if isinstance(hi, (int, float)) and hi <= EPSILON else z.sign)
    return z.x, z.dx, {"sign": sign}


register(OpSpec(("where", "cat", "concat", "stack", "maximum", "minimum", "clip", "lerp", "hstack",
                 "vstack", "concatenate"), merge_fwd, all_back, use=_elementwise_use))
register(OpSpec(("clamp", "clamp_min", "clamp_max", "clamp_", "clamp_min_", "clamp_max_"), _clamp_fwd,
                pass_back, use=_elementwise_use))
register(OpSpec(("masked_fill", "masked_fill_"), _masked_fill_fwd, pass_back, use=_elementwise_use))


def _mul_fwd(op: Op):
    """a * b (or a * c): sizes add; change da b + a db + da db. Mean zero if one factor is mean
    zero and independent of the other."""
    s = _scalars(op, skip=())
    if len(op.ins) == 1:
        z = op.ins[0]
        return add(z.x, s), add(z.dx, s), {"centered": z.centered, "sign": z.sign * _values_sign(op)}
    a, b = op.ins[0], op.ins[1]
    centered = (a.centered or b.centered) and not (a.src & b.src)
    return (add(a.x, b.x, s), mx(add(a.dx, b.x), add(a.x, b.dx), add(a.dx, b.dx)) + s,
            {"centered": centered, "sign": a.sign * b.sign * _values_sign(op)})


def _mul_bwd(op: Op, g):
    s = _scalars(op, skip=())
    if len(op.ins) == 1:
        return [add(g, s)]
    a, b = op.ins[0], op.ins[1]
    return [add(g, mx(b.x, b.dx), s), add(g, mx(a.x, a.dx), s)] + [NEG] * (len(op.ins) - 2)


def _div_fwd(op: Op):
    s = _scalars(op, skip=("rounding_mode",))
    if len(op.ins) == 1:
        z = op.ins[0]
        return add(z.x, -s), add(z.dx, -s), {"centered": z.centered}
    a, b = op.ins[0], op.ins[1]
    if b.x == NEG:
        raise Undetermined("division by a tensor that is exactly zero at init")
    return add(a.x, -b.x), mx(add(a.dx, -b.x), add(a.x, -2 * b.x, b.dx)), {}


def _div_bwd(op: Op, g):
    s = _scalars(op, skip=("rounding_mode",))
    if len(op.ins) == 1:
        return [add(g, -s)]
    a, b = op.ins[0], op.ins[1]
    return [add(g, -b.x), add(g, a.x, -2 * b.x)]


register(OpSpec(("mul", "mul_"), _mul_fwd, _mul_bwd, use=_elementwise_use, multiplier=True))
register(OpSpec(("div", "div_", "true_divide"), _div_fwd, _div_bwd, use=_elementwise_use,
                multiplier=True, sign=-1))


def _addcmul_fwd(op: Op):
    """a + value * b * c."""
    a, b, c = (op.ins + [Sizes(), Sizes()])[:3]
    prod = Sizes(x=add(b.x, c.x), dx=mx(add(b.dx, c.x), add(b.x, c.dx), add(b.dx, c.dx)))
    return mx(a.x, prod.x), mx(a.dx, prod.dx), {}


register(OpSpec(("addcmul",), _addcmul_fwd, all_back, use=_elementwise_use))


# ----------------------------------------------------------------------------- activations


def _odd(op: Op):
    z = op.ins[0] if op.ins else Sizes()
    return z.x, z.dx, {"centered": z.centered, "sign": -z.sign if op.op == "neg" else z.sign}


def _nonnegative(op: Op):
    z = op.ins[0] if op.ins else Sizes()
    return z.x, z.dx, {"sign": 1}


#: f(z) ~ z at every scale: sizes pass through. Odd ones keep a mean-zero input mean zero.
register(OpSpec(("neg", "positive", "identity"), _odd, pass_back, use=_elementwise_use))
register(OpSpec(("gelu", "silu", "leaky_relu", "elu", "selu", "celu", "mish", "hardswish",
                 "prelu", "log_sigmoid", "gelu_", "silu_"), same, pass_back, use=_elementwise_use))
register(OpSpec(("relu", "relu6", "abs", "relu_"), _nonnegative, pass_back, use=_elementwise_use,
                positive=True))


def _bounded_fwd(op: Op):
    """tanh-like: ~z for small z, saturates at Theta(1); so does its change (|tanh_t - tanh_0| <= 2)."""
    z = op.ins[0]
    return min(z.x, ZERO), min(z.dx, ZERO), {**cap_note(x=z.x, dx=z.dx), "centered": z.centered}


register(OpSpec(("tanh", "erf", "sin", "hardtanh", "atan", "softsign", "tanh_"), _bounded_fwd,
                pass_back, use=_elementwise_use))


def _offset_fwd(op: Op):
    """sigmoid, cos: Theta(1) at zero input and bounded, so their change is at most Theta(1)."""
    z = op.ins[0]
    return ZERO, min(z.dx, ZERO), cap_note(dx=z.dx)


register(OpSpec(("sigmoid", "hardsigmoid", "special_expit", "sigmoid_"), _offset_fwd,
                pass_back, use=_elementwise_use, positive=True))
register(OpSpec(("cos",), _offset_fwd, pass_back, use=_elementwise_use))


def _softplus_fwd(op: Op):
    """softplus: Theta(1) at zero input, ~|z| for large z (unbounded)."""
    z = op.ins[0]
    return mx(ZERO, z.x), z.dx, {"sign": 1}


register(OpSpec(("softplus",), _softplus_fwd, pass_back, use=_elementwise_use, positive=True))


def _exp_of(z: Sizes, nonpositive: bool):
    """exp(z): Theta(1) for z = O(1); for growing z it blows up unless z <= 0 (a decay such as
    Mamba's exp(dt * A) with A < 0, ALiBi), where it is bounded by 1. A growing mean-zero z
    blows up (a blow-up is an answer); a growing z of unknown sign is undetermined."""
    if z.x <= 0 and z.dx <= 0:
        return ZERO, (NEG if z.dx == NEG else z.dx), {}
    if nonpositive:
        return ZERO, ZERO, cap_note(x=z.x, dx=z.dx)
    if z.centered and z.x > 0:  # mean zero and growing: half its coordinates grow positive
        return OO, OO, {}
    raise Undetermined(f"exp of an input that grows like n^{mx(z.x, z.dx)}: it blows up unless the "
                       "input is never positive")


def _nonpositive(op: Op) -> bool:
    return op.ins[0].sign < 0


def _values_sign(op: Op) -> int:
    vals = [v for s in op.attrs["scalars"].values() for v in s["values"][-1:]]
    if any(v == 0 for v in vals):
        return 1
    return -1 if sum(v < 0 for v in vals) % 2 else 1


def _exp_fwd(op: Op):
    return _exp_of(op.ins[0], _nonpositive(op))


def _exp_bwd(op: Op, g):
    z = op.ins[0]
    return [g if z.x <= 0 or _nonpositive(op) else add(g, OO)] + [NEG] * (len(op.ins) - 1)


register(OpSpec(("exp", "exp_", "exp2"), _exp_fwd, _exp_bwd, use=_elementwise_use, positive=True))
register(OpSpec(("expm1",), _exp_fwd, _exp_bwd, use=_elementwise_use))


def _log_fwd(op: Op):
    """log z: Theta(1) (|log z| grows only logarithmically) for z = Theta(1); changes like dz / z."""
    z = op.ins[0]
    if z.x == NEG:
        raise Undetermined("log of a tensor that is exactly zero at init")
    return ZERO, min(add(z.dx, -z.x), ZERO) if z.dx != NEG else NEG, {}


register(OpSpec(("log", "log1p", "log2", "log10"), _log_fwd,
                lambda op, g: [add(g, -op.ins[0].x)] + [NEG] * (len(op.ins) - 1), use=_elementwise_use))


# ----------------------------------------------------------------------------- powers


def _power(op: Op):
    fixed = {"rsqrt": -HALF, "sqrt": HALF, "reciprocal": sp.Integer(-1), "square": sp.Integer(2)}
    if op.op in fixed:
        return fixed[op.op]
    p = op.arg(1)
    if isinstance(p, (int, float)):
        return sp.nsimplify(p)
    raise Undetermined("pow with a tensor exponent")


def _scalar_base(op: Op) -> bool:
    """pow.Scalar: a number raised to a tensor (RoPE and sinusoidal frequencies base ** (i / d))."""
    return op.op == "pow" and isinstance(op.arg(0), (int, float))


def _constant_base(op: Op) -> bool:
    """pow(base, e) with two tensors where the base is a fixed Theta(1) tensor (no training
    moves it): bloom's ALiBi slopes ``torch.pow(base, arange)``."""
    return op.op == "pow" and len(op.ins) == 2 and op.ins[0].x == 0 and op.ins[0].dx == NEG


def _pow_fwd(op: Op):
    """z^p: size p z; change (p - 1) z + dz. c^z = exp(z log c)."""
    z = op.ins[0]
    if _scalar_base(op):
        return _exp_of(z, z.sign < 0 and op.arg(0) > 1 or z.sign > 0 and 0 < op.arg(0) < 1)
    if _constant_base(op):
        return _exp_of(op.ins[1], False)
    p = _power(op)
    if z.x == NEG:
        if p > 0:
            return NEG, (NEG if z.dx == NEG else p * z.dx), {}
        raise Undetermined(f"`{op.op}` with a negative power of a tensor that is zero at init")
    even = p.is_Integer and p % 2 == 0
    return p * z.x, _pow_change(p, z.x, z.dx), {"sign": 1 if (even or p.q != 1 or z.sign > 0) else 0}


def _pow_change(p, x, dx):
    """Change of z^p, z = z_0 + dz with |z_0| ~ n^x, |dz| ~ n^dx: first order p z_0^(p-1) dz while
    dz is at most z_0; once the change outgrows the init value (dx > x) the power of the new
    value takes over: (z_0 + dz)^p - z_0^p ~ dz^p for p > 0 (the square of a Theta(1) update
    of a vanishing tensor is Theta(1), not z_0 dz), and ~ z_0^p for p < 0 (rsqrt of a grown
    tensor drops from z_0^p to the smaller dz^p)."""
    if dx == NEG or dx <= x:
        return add((p - 1) * x, dx)
    return mx(p * x, p * dx)


def _pow_bwd(op: Op, g):
    z = op.ins[0]
    if _scalar_base(op):
        return [g if z.x <= 0 else add(g, OO)]
    if _constant_base(op):
        e = op.ins[1]
        return [NEG, g if e.x <= 0 else add(g, OO)]
    p = _power(op)
    if z.x == NEG:
        return [NEG] * len(op.ins)
    return [add(g, (p - 1) * z.x)] + [NEG] * (len(op.ins) - 1)


register(OpSpec(("pow", "rsqrt", "sqrt", "reciprocal", "square", "pow_"), _pow_fwd, _pow_bwd,
                use=_elementwise_use, numeric_args=("*",)))


# ----------------------------------------------------------------------------- generic pointwise


def _pointwise_fwd(op: Op):
    """Any coordinatewise op ATen tags pointwise, without an entry of its own: TP's Nonlin rule
    covers Theta(1) inputs (Theta(1) out, change at most the input's); anything else depends on
    the function and is undetermined."""
    ins = [s for s in op.ins if s.x != NEG or s.dx != NEG]
    if all(s.x == 0 and s.dx <= 0 for s in ins):
        return ZERO, mx(*(s.dx for s in ins)), {}
    sizes = ", ".join(f"n^{s.x}" for s in ins)
    raise Undetermined(f"pointwise `{op.op}` on inputs of size {sizes}: TP's Nonlin rule sizes "
                       "only Theta(1) inputs")


POINTWISE = register_tag("pointwise", OpSpec(
    ("<pointwise>",), _pointwise_fwd, all_back, use=_elementwise_use,
    doc="generic coordinatewise op (torch.Tag.pointwise)"))
