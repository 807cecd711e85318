"""How one training step enters the abc bookkeeping of the MLP: the optimizer's update geometry
and the alignment of the terms of an activation change (Everett et al. 2024, arXiv 2407.05872).

After training, layer l's pre-activation changes by (Everett et al. §3)

    dh_l = dW_l z_{l-1} + W_l dz_{l-1} + dW_l dz_{l-1}.

A contraction over the fan-in n^{f_l} (f_1 = 0 for the input layer, f_l = 1 otherwise) gains
n^{f_l x alignment}: ``alpha_l`` for dW z_0, ``omega_l`` for W_0 dz, ``u_l`` for dW dz, each in
[1/2, 1] (1/2: independent, central limit; 1: aligned, law of large numbers). Named alignments
are the engine's (``tensorprog.ops.ALIGNMENTS``): "tp" (TP4 / TP5 Table 14: alpha = u = 1,
omega = 1/2 hidden and 1 for the readout), "full" (= "everett", Everett et al.'s full alignment:
omega = 1/2 for the readout too) and "none" (Everett et al.'s no alignment: every term 1/2).
Per-layer values are L+1 triples (alpha_l, omega_l, u_l), input layer first.

dW_l's entries are n^{-d_l}, d_l = a_l + c_l - e_l, where e_l is the entry exponent of the
optimizer's direction, by the geometry of its update (``tensorprog.graph.optimizers``, whose
definitions this reuses): gradient (SGD) e_l = -(a_l + beta_l), the gradient of w_l, with
beta_l = min(a_{L+1} + b_{L+1}, 2 a_{L+1} + c_{L+1}) for l <= L (the trained readout's entry size,
which scales the backward pass, TP4 Prop 5.3) and beta_{L+1} = 0; entrywise (Adam) e_l = 0;
parameter-scaled (Adafactor) e_l = -b_l; orthogonalised (Muon) e_l = -(o_l + i_l)/2 + its
``adjust_lr_fn`` exponent for an n^{o_l} x n^{i_l} weight.
"""
from __future__ import annotations

from typing import Any

import sympy as sp

from ..errors import TheoryError, TraceError
from ..graph.optimizers import GEOMETRIES, OPTIMIZERS, REFUSED, geometry_of
from ..ops.core import ALIGNMENTS, Alignment
from .parse import ExponentParseError, exact_number

HALF = sp.Rational(1, 2)

#: names that are not torch classes: the update geometry they stand for
ALIASES = {"SGD with momentum": "gradient", "Momentum": "gradient", "Nesterov": "gradient",
           "Signum": "entrywise"}
#: how c moves under the abc symmetry (a + t, b - t): the exponent k in c - k t. SGD: the
#: gradient of w scales with the multiplier (TP4 Eq. 5); Adam-like: not (TP4b Prop 2.2.3);
#: Adafactor: its step is scaled by the parameter's own RMS, so c is unchanged (Everett et al. §2)
SHIFT = {"gradient": 2, "entrywise": 1, "orthogonalised": 1, "parameter-scaled": 0}
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _by_name() -> dict[str, str]:
    table = {_norm(k): v for k, v in {**OPTIMIZERS, **ALIASES}.items()}
    table.update({_norm(g): g for g in GEOMETRIES})
    table.update({"sgdmomentum": "gradient", "sgdnesterov": "gradient"})
    return table


def optimizer_classes() -> dict[str, str]:
    """Every optimizer name known (``graph.optimizers.OPTIMIZERS``, registered ones included,
    and the aliases) -> the theory it follows: "sgd" (TP4) or "adam" (TP4b)."""
    return {k: "adam" if GEOMETRIES[g].adam_like else "sgd"
            for k, g in {**OPTIMIZERS, **ALIASES}.items()}


def optimizer_geometry(optimizer: Any) -> tuple[str, str | None]:
    """(geometry name, Muon's ``adjust_lr_fn`` or None) for a name ("AdamW", "sgd", "muon",
    "parameter-scaled"), a torch.optim class or an instance (whose param groups give
    ``adjust_lr_fn``). Classes are read along their MRO (``graph.optimizers.geometry_of``)."""
    adjust = None
    if isinstance(optimizer, str):
        geo = _by_name().get(_norm(optimizer))
        refused = {_norm(k): k for k in REFUSED}.get(_norm(optimizer))
        if geo is None and refused:
            raise TheoryError(f"{refused} has no update geometry tensorprog can size: "
                              f"{REFUSED[refused]}.")
        if geo is None:
            raise TheoryError(
                f"unknown optimizer {optimizer!r}; supported: {', '.join(optimizer_classes())} "
                f"(or any torch.optim subclass of those), or a geometry ({', '.join(GEOMETRIES)}). "
                "Pass optimizer='sgd' or 'adam' for the class, or declare a class with "
                "tensorprog.graph.optimizers.register_optimizer.")
    else:
        try:
            geo = geometry_of(optimizer).name
        except TraceError as err:
            raise TheoryError(str(err)) from None
        groups = getattr(optimizer, "param_groups", None) or [getattr(optimizer, "defaults", {})]
        adjust = groups[0].get("adjust_lr_fn") if isinstance(groups[0], dict) else None
    if geo == "orthogonalised":
        adjust = adjust or "original"
        if adjust not in ADJUST_LR_FNS:
            raise TheoryError(f"Muon's adjust_lr_fn {adjust!r} is not modelled; use one of "
                              f"{ADJUST_LR_FNS}.")
    return geo, adjust


def layer_alignments(alignment: Any, L: int) -> tuple:
    """L+1 triples (alpha_l, omega_l, u_l) from a name, an ``Alignment`` or per-layer triples.

    The input layer's entries never act (its fan-in is finite). Each value must be in
    [1/2, 1], and u_l <= alpha_l (dW dz no more aligned than dW z_0: the ``stable`` conditions
    then need no term of their own for dW dz)."""
    if isinstance(alignment, str):
        if alignment not in ALIGNMENTS:
            raise TheoryError(f"unknown alignment {alignment!r}; choose one of "
                              f"{sorted(ALIGNMENTS)} or give L+1 triples (alpha, omega, u)")
        alignment = ALIGNMENTS[alignment]
    if isinstance(alignment, Alignment):
        hid = (alignment.dw_z0, alignment.w0_dz_hidden, alignment.dw_dz)
        return (hid,) * L + ((alignment.dw_z0, alignment.w0_dz_readout, alignment.dw_dz),)
    try:
        rows = [tuple(t) for t in alignment]
    except TypeError:
        rows = []
    if isinstance(alignment, (str, bytes)) or len(rows) != L + 1 or any(len(t) != 3 for t in rows):
        raise TheoryError(f"per-layer alignment needs L+1 = {L + 1} triples (alpha_l, omega_l, "
                          f"u_l), input layer first; got {alignment!r}")
    try:  # never sympify / nsimplify user values: they would evaluate strings as Python
        triples = tuple(tuple(exact_number(v, f"alignment of layer {l}") for v in t)
                        for l, t in enumerate(rows, 1))
    except ExponentParseError as err:
        raise TheoryError(f"{err}; each alignment value is a number in [1/2, 1] "
                          "(Everett et al. 2024, arXiv 2407.05872, §3)") from None
    for l, (al, om, u) in enumerate(triples, 1):
        if not all(HALF <= v <= 1 for v in (al, om, u)) or u > al:
            raise TheoryError(f"alignment of layer {l} {(al, om, u)}: each value must be a "
                              "number in [1/2, 1] (Everett et al. 2024) and u_l <= alpha_l")
    return triples


def alignment_name(triples: tuple, L: int) -> str | None:
    """The preset's name when ``triples`` is one ("tp", "full", "none"), else None."""
    for name in ("tp", "full", "none"):
        if layer_alignments(name, L) == triples:
            return name
    return None


def layer_dims(L: int) -> tuple:
    """(fan-out, fan-in) width exponents of the MLP's weights: n x d, n x n, ..., 1 x n."""
    return ((1, 0),) + ((1, 1),) * (L - 1) + ((0, 1),)


def update_exponents(a, b, cs, geometry: str, adjust: str | None) -> tuple:
    """(d_1, ..., d_{L+1}): dW_l's entries are n^{-d_l} (see the module docstring)."""
    geo = GEOMETRIES[geometry]
    hyper = {"adjust_lr_fn": adjust}
    beta = sp.Min(a[-1] + b[-1], 2 * a[-1] + cs[-1])
    out = []
    for l, (o, i) in enumerate(layer_dims(len(a) - 1)):
        back = 0 if l == len(a) - 1 else beta
        e = geo.direction(-(a[l] + back), -b[l], sp.Integer(o), sp.Integer(i), hyper)
        out.append(a[l] + cs[l] - e)
    return tuple(out)
