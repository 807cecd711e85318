"""Hyperparameters of a trial: the built-in ones, learning-rate schedules, and routing the rest.

A trial's hyperparameters are a plain dict ``{name: value}``. Six names are built in (applied
here, to any model and optimizer):

* ``lr``: the base learning rate, passed as ``make_optimizer(model, lr)``.
* ``init_scale``: a global multiplier on the init std (TP5, arXiv 2203.03466, Figure 3 "init
  std"): right after ``factory(width)`` every parameter with two or more dimensions (weight
  matrices, embeddings, convolution kernels) is multiplied by it; vectors (biases, norm gains)
  are left as built.
* ``output_mult``: the output multiplier (TP5 Figure 3, the alpha_output of App. D.2 / the
  cross-entropy temperature): the model's output tensor is multiplied by it before the loss (a
  forward hook on the root module).
* ``schedule``: the learning-rate schedule's shape, one of ``SCHEDULES`` (see ``schedule_factor``).
* ``warmup``: linear warmup over that many steps (``schedule_factor``).
* ``weight_decay``: set as ``weight_decay`` of every optimizer parameter group (coupled L2 for
  torch's Adam / SGD, decoupled for AdamW: whatever the optimizer does with it).

A built-in name that is not given (neither swept nor fixed) leaves the model and optimizer as
the user built them. Any other name is a **user hyperparameter**: it is passed by keyword to the
one of ``factory(width, **hp)``, ``make_optimizer(model, lr, **hp)`` or ``data(width, seed, **hp)``
whose signature names it (read with ``inspect.signature``); a name none of them names goes to
the one that takes ``**kwargs``; a name with no place, or with two, is a ``TransferError``. A
built-in name that the factory or ``make_optimizer`` names explicitly goes there instead (the
user's own implementation wins).

Trials reach ``backends.run_trial(cfg, key, width, lr, seed)``, whose slots are a width and a
learning rate: the width slot carries a ``TrialPoint`` (an ``int``, the width, with the trial's
hyperparameters attached) and the wrappers below (``HPFactory``, ``HPOptimizer``, ``HPData``) read
them. All are module-level classes, so they pickle for the process-pool backend.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import TransferError

__all__ = ["BUILTIN_HPARAMS", "SCHEDULES", "WIDTH_TRANSFERABLE", "NOT_WIDTH_TRANSFERABLE",
           "schedule_factor", "route_hparams", "default_scale", "TrialPoint", "HPFactory",
           "HPOptimizer", "HPData", "describe_point", "check_values", "check_value",
           "check_base"]

BUILTIN_HPARAMS: tuple[str, ...] = ("lr", "init_scale", "output_mult", "schedule", "warmup",
                                    "weight_decay")
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine", "inverse_sqrt", "step")

#: What TP5 Table 1 says transfers across width in muP: optimisation hyperparameters (learning
#: rate, its schedule and warmup), initialisation and parameter multipliers.
WIDTH_TRANSFERABLE: tuple[str, ...] = ("lr", "init_scale", "output_mult", "schedule", "warmup")
#: TP5 Table 1's "not muTransferable": regularisation (weight decay, dropout). Depth, batch size,
#: sequence length and training time are scale dimensions that TP5 transfers only empirically.
NOT_WIDTH_TRANSFERABLE: tuple[str, ...] = ("weight_decay", "dropout", "batch_size", "block_size",
                                           "seq_len", "depth", "n_layer", "steps")


def schedule_factor(schedule: str, step: int, steps: int, warmup: int = 0) -> float:
    """Multiplier on every group's base learning rate at ``step`` (0-based) of ``steps``.

    Warmup ``w``: the factor is multiplied by (step + 1) / w for step < w (linear warmup).
    With p = (step - w) / (steps - w) in [0, 1] the progress after warmup (0 during warmup):
    ``constant`` 1; ``linear`` 1 - p (reaching 0 at step ``steps``); ``cosine``
    (1 + cos(pi p)) / 2; ``step`` 0.1 ** (number of the marks p >= 1/2, p >= 3/4 passed);
    ``inverse_sqrt`` sqrt(max(w, 1) / max(step + 1, w, 1)) (flat to the end of warmup, then
    1 / sqrt(step), as in Vaswani et al. 2017, arXiv 1706.03762, eq. 3).
    """
    if schedule not in SCHEDULES:
        raise TransferError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    w = int(warmup)
    warm = (step + 1) / w if step < w else 1.0
    p = min(1.0, max(0.0, (step - w) / max(1, steps - w)))
    if schedule == "constant":
        decay = 1.0
    elif schedule == "linear":
        decay = 1.0 - p
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "step":
        decay = 0.1 ** ((p >= 0.5) + (p >= 0.75))
    else:
        floor = max(w, 1)
        decay = math.sqrt(floor / max(step + 1, floor))
    return warm * decay


def default_scale(name: str, values) -> str:
    """How an optimum is measured: "categorical" for non-numbers (the schedule), "log" (log2
    units) for positive values of a scale-like quantity (every built-in but ``warmup``, and user
    hyperparameters whose values are all positive), "linear" otherwise (``warmup``, or a value
    <= 0, where a logarithm makes no sense)."""
    if any(isinstance(v, (str, bool)) or not isinstance(v, (int, float)) for v in values):
        return "categorical"
    if name == "warmup" or any(v <= 0 for v in values):
        return "linear"
    return "log"


def _takes(fn, name: str) -> tuple[bool, bool]:
    """(names ``name`` as a keyword parameter, takes ``**kwargs``) for callable ``fn``."""
    if fn is None:
        return False, False
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False, False
    params = sig.parameters.values()
    named = any(p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                for p in params)
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def route_hparams(names, factory, make_optimizer, data) -> dict[str, str]:
    """{name: "builtin" | "factory" | "make_optimizer" | "data"}: where each hyperparameter goes
    (see the module docs); ``TransferError`` for a name with no place or two."""
    targets = {"factory": factory, "make_optimizer": make_optimizer,
               "data": data if callable(data) and not isinstance(data, (list, tuple)) else None}
    out = {}
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise TransferError(f"hyperparameter names must be identifiers; got {name!r}")
        named = [t for t, fn in targets.items() if _takes(fn, name)[0]]
        if name == "lr":
            out[name] = "builtin"
            continue
        if len(named) > 1:
            raise TransferError(f"hyperparameter {name!r} is a parameter of both {named[0]} and "
                                f"{named[1]}; rename one of them (a wrapper) so it has one place")
        if named:
            out[name] = named[0]
        elif name in BUILTIN_HPARAMS:
            out[name] = "builtin"
        else:
            var = [t for t, fn in targets.items() if _takes(fn, name)[1]]
            if len(var) != 1:
                why = ("none of them takes it" if not var else
                       f"{' and '.join(var)} all take **kwargs")
                raise TransferError(
                    f"hyperparameter {name!r} has nowhere to go: it is not built in "
                    f"({', '.join(BUILTIN_HPARAMS)}) and {why}. Add a parameter {name}=... to "
                    "factory(width, ...), make_optimizer(model, lr, ...) or data(width, seed, ...)")
            out[name] = var[0]
    return out


class TrialPoint(int):
    """A width (this ``int``) carrying its trial's hyperparameters ``hp`` through the width slot of
    ``backends.run_trial``; pickles as (width, hp)."""

    hp: dict

    def __new__(cls, width: int, hp: dict):
        obj = super().__new__(cls, int(width))
        obj.hp = dict(hp)
        return obj

    def __reduce__(self):
        return (TrialPoint, (int(self), self.hp))


def _point_hp(width) -> dict:
    return width.hp if isinstance(width, TrialPoint) else {}


def describe_point(hp: dict) -> str:
    parts = []
    for k, v in hp.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.3g}" + (f" (2^{math.log2(v):.1f})" if v > 0 and k == "lr" else ""))
        else:
            parts.append(f"{k} {v}")
    return ", ".join(parts)


def _scale_init(model: nn.Module, scale: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(scale)


class _OutputMultiplier:
    def __init__(self, mult: float):
        self.mult = mult

    def __call__(self, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TransferError(f"output_mult needs the model to return a tensor; it returned a "
                                f"{type(output).__name__}. Put the multiplier in the model and "
                                "sweep it as a factory hyperparameter instead")
        return output * self.mult


class HPFactory:
    """``factory(width, **factory hps)``, then the built-in ``init_scale`` and ``output_mult``."""

    def __init__(self, factory: Callable, routes: dict[str, str]):
        self.factory = factory
        self.routes = routes

    def __call__(self, width) -> nn.Module:
        hp = _point_hp(width)
        own = {k: v for k, v in hp.items() if self.routes.get(k) == "factory"}
        model = self.factory(int(width), **own)
        if self.routes.get("init_scale") == "builtin" and "init_scale" in hp:
            _scale_init(model, float(hp["init_scale"]))
        if self.routes.get("output_mult") == "builtin" and "output_mult" in hp:
            model.register_forward_hook(_OutputMultiplier(float(hp["output_mult"])))
        return model


class _Schedule:
    def __init__(self, opt, schedule: str, steps: int, warmup: int):
        self.base = [g["lr"] for g in opt.param_groups]
        self.schedule, self.steps, self.warmup, self.step = schedule, steps, warmup, 0

    def __call__(self, opt, args, kwargs):
        f = schedule_factor(self.schedule, self.step, self.steps, self.warmup)
        for g, b in zip(opt.param_groups, self.base):
            g["lr"] = b * f
        self.step += 1


class HPOptimizer:
    """``make_optimizer(model, lr, **optimizer hps)``, then the built-in ``weight_decay``,
    ``schedule`` and ``warmup`` (a step pre-hook sets every group's lr to its base lr times
    ``schedule_factor``). Called as ``(model, hp)``: the trial's dict rides in the lr slot."""

    def __init__(self, make_optimizer: Callable, routes: dict[str, str], steps: int):
        self.make_optimizer = make_optimizer
        self.routes = routes
        self.steps = steps

    def __call__(self, model: nn.Module, hp: dict) -> torch.optim.Optimizer:
        own = {k: v for k, v in hp.items() if self.routes.get(k) == "make_optimizer"}
        opt = self.make_optimizer(model, hp["lr"], **own)
        builtin = {k for k, r in self.routes.items() if r == "builtin" and k in hp}
        if "weight_decay" in builtin:
            for g in opt.param_groups:
                if "weight_decay" not in g:
                    raise TransferError(f"{type(opt).__name__} has no weight_decay; sweep "
                                        "weight decay through make_optimizer(model, lr, ...)")
                g["weight_decay"] = float(hp["weight_decay"])
        schedule = hp.get("schedule", "constant") if "schedule" in builtin else "constant"
        warmup = int(hp.get("warmup", 0)) if "warmup" in builtin else 0
        if schedule != "constant" or warmup:
            opt.register_step_pre_hook(_Schedule(opt, schedule, self.steps, warmup))
        return opt


class HPData:
    """``data(width, seed, **data hps)``: batch size, sequence length... from the trial."""

    def __init__(self, data: Callable, routes: dict[str, str]):
        self.data = data
        self.routes = routes
        self.loss = getattr(data, "loss", None)

    def __call__(self, width, seed: int):
        own = {k: v for k, v in _point_hp(width).items() if self.routes.get(k) == "data"}
        return self.data(int(width), seed, **own)

    def __repr__(self) -> str:
        return repr(self.data)


def check_value(name: str, v, label: str = "", where: str = "") -> None:
    """One value of a built-in hyperparameter, checked (user hyperparameters are the user's):
    ``lr``, ``init_scale``, ``output_mult`` finite and > 0; ``weight_decay`` finite and >= 0;
    ``warmup`` a whole number of steps >= 0; ``schedule`` one of ``SCHEDULES``. ``label`` names
    the value in the message (default ``name``), ``where`` says where it came from."""
    label = label or name
    at = f" ({where})" if where else ""
    if name == "schedule":
        if not isinstance(v, str) or v not in SCHEDULES:
            who = f"{label}: " if label != name else ""
            raise TransferError(f"{who}unknown schedule {v!r}{at}; choose one of: "
                                f"{', '.join(SCHEDULES)}")
        return
    if name not in ("lr", "init_scale", "output_mult", "warmup", "weight_decay"):
        return
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if name in ("lr", "init_scale", "output_mult") and not (number and v > 0):
        raise TransferError(f"{label} must be positive and finite{at}; got {v!r}")
    if name == "weight_decay" and not (number and v >= 0):
        raise TransferError(f"{label} must be >= 0 and finite{at}; got {v!r}")
    if name == "warmup" and not (number and v >= 0 and float(v).is_integer()):
        raise TransferError(f"{label} must be a whole number of steps >= 0{at}; got {v!r} "
                            "(it is never rounded)")


def check_values(name: str, values) -> tuple:
    """The swept values of one hyperparameter, checked."""
    vals = tuple(values) if not isinstance(values, (str, bytes)) else None
    if not vals or len(vals) < 2:
        raise TransferError(f"hyperparameter {name!r} needs at least 2 values to pick a best one; "
                            f"got {values!r}")
    if len(set(vals)) != len(vals):
        raise TransferError(f"hyperparameter {name!r} has repeated values: {list(vals)!r}")
    for v in vals:
        check_value(name, v, f"{name} values", f"in {list(vals)!r}")
    return vals


def check_base(base) -> dict:
    """``base`` = {name: value} of the hyperparameters held fixed, checked like swept values."""
    if base is None:
        return {}
    if not isinstance(base, dict):
        raise TransferError(f"base must be a dict name -> value (e.g. base={{'lr': 3e-3}}); got "
                            f"{type(base).__name__} {base!r}")
    for k, v in base.items():
        check_value(k, v, f"base[{k!r}]")  # the label: base['lr'] must be ...
    return dict(base)


def pick(d: dict, keys) -> dict[str, Any]:
    return {k: d[k] for k in keys if k in d}
