"""Optimizers by the geometry of their update: how large one step's entries are, in exponents.

A step changes a parameter by lr times a direction whose entries are, per geometry:

* ``gradient`` (SGD, momentum, Nesterov): the gradient itself, n^g (TP4);
* ``entrywise`` (Adam family, RMSprop, Adagrad, sign methods): normalised entry by entry,
  Theta(1) per entry in the eps -> 0 limit (TP4b);
* ``parameter-scaled`` (torch's Adafactor): entrywise-normalised, times max(eps2, RMS(W)), so
  its entries are the parameter's own size (Everett et al. 2024, arXiv 2407.05872);
* ``orthogonalised`` (Muon): the momentum's polar factor U V^T, spectral norm 1. A gradient built
  from a finite batch has finite rank r, so U V^T's entries are ~ sqrt(r / (A B)) for an A x B
  weight: n^-(a+b)/2; Muon's ``adjust_lr_fn`` scales it by sqrt(max(1, A/B)) ("original") or
  0.2 sqrt(max(A, B)) ("match_rms_adamw"). Its muP is the spectral condition ||dW|| ~
  sqrt(fan_out / fan_in) (Yang, Simon, Bernstein 2023, arXiv 2310.17813).

The geometry is read from the optimizer object (its class, along the MRO), never from a name;
``register_optimizer`` declares another class. torch.optim's classes, from their ``step`` (torch
2.13): RMSprop (g / (sqrt(v) + eps)), Adagrad (g / (sqrt(sum g^2) + eps)), Adamax
(m / max(beta2 u, |g| + eps)), NAdam, SparseAdam (Adam on the rows a sparse gradient touches),
Adadelta and Rprop (-sign(g) times a per-entry step size that starts at lr) are entrywise; ASGD
is gradient (its p *= 1 - lambd eta shrink, lambd = 1e-4, is not read). ``REFUSED`` names the
classes no single geometry describes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import sympy as sp
import torch

from ..errors import TraceError

ZERO = sp.Integer(0)


@dataclass(frozen=True)
class Geometry:
    """name; ``adam_like``: its steps do not scale with the gradient (TP4b's class for the
    verdict); ``direction(g, p_size, a, b, hyper)``: exponent of the direction's entries."""

    name: str
    adam_like: bool
    direction: Callable


def _gradient(g, p_size, a, b, hyper):
    return g


def _entrywise(g, p_size, a, b, hyper):
    return ZERO


def _parameter_scaled(g, p_size, a, b, hyper):
    return p_size  # max(eps2, RMS(W)) with eps2 -> 0: the parameter's own entry size


def _orthogonalised(g, p_size, a, b, hyper):
    fn = hyper.get("adjust_lr_fn") or "original"
    adjust = {"original": sp.Max(ZERO, a - b) / 2, "match_rms_adamw": sp.Max(a, b) / 2}.get(fn, ZERO)
    return -(a + b) / 2 + adjust


GEOMETRIES = {
    "gradient": Geometry("gradient", False, _gradient),
    "entrywise": Geometry("entrywise", True, _entrywise),
    "parameter-scaled": Geometry("parameter-scaled", True, _parameter_scaled),
    "orthogonalised": Geometry("orthogonalised", True, _orthogonalised),
}

#: optimizer class name -> geometry (looked up along the class's MRO)
OPTIMIZERS: dict[str, str] = {
    "SGD": "gradient", "ASGD": "gradient",
    "Adam": "entrywise", "AdamW": "entrywise", "Adamax": "entrywise", "NAdam": "entrywise",
    "RMSprop": "entrywise", "Adagrad": "entrywise", "Adadelta": "entrywise",
    "SparseAdam": "entrywise", "Rprop": "entrywise", "Lion": "entrywise", "SignSGD": "entrywise",
    "Adafactor": "parameter-scaled",
    "Muon": "orthogonalised",
}
#: optimizer class name -> why no single update geometry describes it (a registered geometry
#: for the class, ``register_optimizer``, takes precedence)
REFUSED: dict[str, str] = {
    "RAdam": "its steps change geometry: while its variance rectification is off (torch's "
             "rho_t <= 5: the first 5 steps for any beta2 >= 0.9) it steps lr * m, un-normalised "
             "like SGD with momentum, and from then on like Adam (Liu et al. 2020, arXiv "
             "1908.03265, Alg. 2). Analyse Adam instead, or declare the phase you mean with "
             "register_optimizer(torch.optim.RAdam, 'gradient' or 'entrywise')",
    "LBFGS": "it is not a per-step first-order method: each step(closure) runs up to max_iter "
             "iterations, each re-evaluating the loss, along quasi-Newton directions built from "
             "the history of all parameters' gradients, and its first iteration divides by the "
             "L1 norm of every parameter's gradient together, so no parameter's step has an "
             "exponent of its own. Analyse SGD or Adam instead",
}
#: optimizers whose weight decay shrinks the parameter directly (p *= 1 - lr wd), not through the
#: gradient (Loshchilov & Hutter's decoupled decay; torch's Adam(decoupled_weight_decay=True))
DECOUPLED = {"AdamW", "Muon", "Adafactor", "Lion"}
#: hyperparameters read from each param group
HYPER = ("eps", "weight_decay", "momentum", "adjust_lr_fn", "decoupled_weight_decay")


def register_optimizer(cls: type | str, geometry: str) -> None:
    """Declare the update geometry of an optimizer class (or class name)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; choose one of {sorted(GEOMETRIES)}")
    OPTIMIZERS[cls if isinstance(cls, str) else cls.__name__] = geometry


def geometry_of(opt) -> Geometry:
    """The geometry of an optimizer instance or class, read along its MRO."""
    cls = opt if isinstance(opt, type) else type(opt)
    for k in cls.__mro__:
        if k.__name__ in OPTIMIZERS:
            return GEOMETRIES[OPTIMIZERS[k.__name__]]
        if k.__name__ in REFUSED:
            raise TraceError(f"{cls.__name__} has no update geometry tensorprog can size: "
                             f"{REFUSED[k.__name__]}.")
    raise TraceError(
        f"unknown optimizer {cls.__name__}: tensorprog sizes an update by its geometry "
        f"({', '.join(GEOMETRIES)}). Declare it with "
        "tensorprog.graph.optimizers.register_optimizer(YourOptimizer, 'entrywise') (or the "
        "geometry that describes its step).")


def decoupled(opt, group) -> bool:
    if group.get("decoupled_weight_decay"):
        return True
    return any(k.__name__ in DECOUPLED for k in type(opt).__mro__)


def optimizers_of(made) -> list[torch.optim.Optimizer]:
    """``make_optimizer``'s result as a list: one optimizer, or a list / tuple of them (Muon on
    the hidden matrices with AdamW on the rest)."""
    opts = list(made) if isinstance(made, (list, tuple)) else [made]
    bad = [type(o).__name__ for o in opts if not isinstance(o, torch.optim.Optimizer)]
    if bad or not opts:
        raise TraceError(
            f"make_optimizer must return a torch.optim.Optimizer or a list of them, got "
            f"{bad[0] if bad else 'an empty list'}.")
    return opts


@dataclass
class Step:
    """What one parameter's optimizer does: its geometry and hyperparameters."""

    geometry: str
    optimizer: str
    hyper: dict = field(default_factory=dict)
    decoupled: bool = False  # weight decay applied to the parameter, not added to the gradient

    @property
    def adam_like(self) -> bool:
        return GEOMETRIES[self.geometry].adam_like

    def direction(self, g, p_size, a, b):
        return GEOMETRIES[self.geometry].direction(g, p_size, a, b, self.hyper)


def optimizer_class(graph) -> str | None:
    """The verdict's optimizer class from the optimizers read: "adam" when every step is
    scale-invariant in the gradient (entrywise, parameter-scaled, orthogonalised), "sgd" when
    every step is the gradient, None without an optimizer object. Mixed SGD / Adam-like models
    are refused (each parameter's class rules differ)."""
    steps = [p.step for p in graph.params.values() if p.step is not None and p.trainable]
    if not steps:
        return None
    kinds = {s.adam_like for s in steps}
    if len(kinds) > 1:
        raise TraceError(
            "the optimizers step some parameters by their gradient (SGD) and others scale-"
            "invariantly (Adam, Muon, Adafactor): tensorprog's verdict compares each class's "
            "rules under one optimizer class. Analyse with one kind of step, or Adam-like ones only.")
    return "adam" if kinds.pop() else "sgd"
