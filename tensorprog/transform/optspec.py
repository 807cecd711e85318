"""Which optimizer owns each parameter, for ``rules`` and ``apply_mup``.

``optimizer`` / ``optimizer_cls`` may be

* one optimizer: a torch.optim class (``torch.optim.AdamW``, ``torch.optim.Muon``,
  ``torch.optim.Adafactor``), a ``functools.partial`` of one with its hyperparameters
  (``partial(torch.optim.Muon, adjust_lr_fn="match_rms_adamw")``), or a name ("adam", "sgd");
* a dict: keys are parameter names or traced roles ("input", "hidden", "output", "vector",
  "scalar"), plus "default" for the rest, e.g.
  ``{"hidden": torch.optim.Muon, "default": torch.optim.AdamW}``; a name key wins over a role key;
* a callable ``(name, role) -> optimizer`` (anything above but a dict), e.g.
  ``lambda name, role: torch.optim.Muon if role == "hidden" else torch.optim.AdamW``.

Each parameter's muP learning rate then follows the geometry of its own optimizer
(``tensorprog.graph.optimizers``): the convention's Adam learning rate, divided by the entry size
of that optimizer's direction (Muon: its orthogonalised, ``adjust_lr_fn``-scaled step;
Adafactor: the parameter's own RMS). SGD-like and Adam-like optimizers cannot be mixed (the class
rules differ).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import sympy as sp

from ..errors import TensorprogError
from ..graph.optimizers import Step, geometry_of

ZERO = sp.Integer(0)


@dataclass
class OptSpec:
    """One optimizer: the class (or None for a plain "adam" / "sgd" name), its keyword
    arguments from a partial, and the ``Step`` that sizes its updates."""

    cls: Any
    kwargs: dict = field(default_factory=dict)
    step: Step | None = None

    @property
    def name(self) -> str:
        return self.cls.__name__ if self.cls is not None else self.step.optimizer

    @property
    def key(self):
        return (self.cls, tuple(sorted((k, repr(v)) for k, v in self.kwargs.items())))


def spec_of(opt) -> OptSpec:
    """An ``OptSpec`` from a class, a partial of one, or a name."""
    from ..theory.abc import optimizer_class

    if isinstance(opt, OptSpec):
        return opt
    kwargs = {}
    if isinstance(opt, functools.partial):
        if opt.args:
            raise TensorprogError("an optimizer partial may fix keyword arguments only.")
        kwargs, opt = dict(opt.keywords), opt.func
    if isinstance(opt, str):
        cls_name = optimizer_class(opt)  # "sgd" / "adam"
        geo = "gradient" if cls_name == "sgd" else "entrywise"
        return OptSpec(None, {}, Step(geo, cls_name))
    if not isinstance(opt, type):
        raise TensorprogError(f"not an optimizer class, partial or name: {opt!r}")
    geo = geometry_of(opt)
    hyper = {k: kwargs[k] for k in ("adjust_lr_fn",) if k in kwargs}
    if hyper.get("adjust_lr_fn") is not None:
        from ..theory.updates import ADJUST_LR_FNS
        if geo.name != "orthogonalised" or hyper["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise TensorprogError(
                f"adjust_lr_fn={hyper['adjust_lr_fn']!r} for {opt.__name__}: it is Muon's option "
                f"and takes one of {', '.join(ADJUST_LR_FNS)} (CLI: --optimizer "
                "muon:match_rms_adamw); the rules would otherwise assume another step size.")
    return OptSpec(opt, kwargs, Step(geo.name, opt.__name__, hyper))


#: keys of an optimizer dict besides parameter names: the roles of ``graph.uses.role`` and
#: "default" (everything not named otherwise)
ROLE_KEYS = ("input", "hidden", "output", "vector", "scalar", "unknown", "default")


def selector(optimizer) -> Callable[[str, str], OptSpec]:
    """(name, role) -> OptSpec for any form ``optimizer`` may take (see the module doc)."""
    if isinstance(optimizer, dict):
        table = {k: spec_of(v) for k, v in optimizer.items()}

        def pick(name, role):
            for k in (name, role, role.split("+")[0], "default"):
                if k in table:
                    return table[k]
            raise TensorprogError(f"no optimizer for parameter {name!r} (role {role}): add it, "
                                  f"its role, or a 'default' key to the optimizer dict "
                                  f"(keys now: {sorted(table)}).")
        return pick
    if isinstance(optimizer, (str, type, functools.partial, OptSpec)):
        one = spec_of(optimizer)
        return lambda name, role: one
    if callable(optimizer):
        cache: dict = {}

        def pick(name, role):
            s = spec_of(optimizer(name, role))
            return cache.setdefault(s.key, s)
        return pick
    raise TensorprogError(f"optimizer must be a class, a partial, a name, a dict or a callable; "
                          f"got {type(optimizer).__name__}.")


def assign(optimizer, params: dict) -> tuple[str, dict[str, OptSpec]]:
    """("sgd" | "adam", {param name: OptSpec}) for the traced ``params`` (name -> TracedParam)."""
    pick = selector(optimizer)
    if isinstance(optimizer, dict):
        known = set(params) | set(ROLE_KEYS) | {p.role for p in params.values()}
        unknown = sorted(k for k in optimizer if k not in known)
        if unknown:
            names = sorted(params)
            raise TensorprogError(
                f"optimizer dict key(s) {unknown} name no parameter and no role, so they would be "
                f"ignored: keys are a role ({', '.join(ROLE_KEYS)}), a parameter name "
                f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}) or 'default'.")
    owners = {n: pick(n, p.role) for n, p in params.items()}
    kinds = {s.step.adam_like for s in owners.values()}
    if len(kinds) > 1:
        raise TensorprogError(
            "the optimizers step some parameters by their gradient (SGD) and others "
            "scale-invariantly (Adam, Muon, Adafactor): muP's rules differ between the two "
            "classes. Use Adam-like optimizers only, or SGD-like ones only.")
    return ("adam" if kinds.pop() else "sgd") if kinds else "adam", owners


def assign_kind(optimizer) -> str:
    """"sgd" when every optimizer named in ``optimizer`` (any form above but a callable) steps
    by the gradient, else "adam" (the zoo's examples are built for one of the two)."""
    if callable(optimizer) and not isinstance(optimizer, (type, functools.partial)):
        return "adam"
    forms = optimizer.values() if isinstance(optimizer, dict) else [optimizer]
    return "sgd" if all(not spec_of(f).step.adam_like for f in forms) else "adam"


def direction_exp(step: Step | None, init_exp, dims) -> Any:
    """Entry size (width exponent) of one step's direction, relative to Adam's Theta(1): the
    LR exponent that matches an Adam LR exponent L is L - direction_exp."""
    if step is None or not step.adam_like or step.geometry == "entrywise":
        return ZERO
    ds = [d if d is not None else ZERO for d in dims] + [ZERO, ZERO]
    size = ZERO if init_exp in (None, "zero") else init_exp
    return sp.nsimplify(step.direction(ZERO, size, ds[0], ds[1]))


def owner_labels(specs) -> dict:
    """OptSpec key -> its label: the class name ("Muon", "AdamW"; "AdamW" for a plain "adam",
    "SGD" for "sgd"), "Muon#2" for a second Muon with other arguments. The keys of
    ``Rules.to_pytorch()``'s OPTIMIZERS and of ``apply_mup``'s per-optimizer arguments."""
    labels: dict = {}
    for spec in specs:
        if spec.key not in labels:
            base = spec.name if spec.cls is not None else ("SGD" if spec.step.optimizer == "sgd"
                                                           else "AdamW")
            n = sum(1 for v in labels.values() if v.split("#")[0] == base)
            labels[spec.key] = base if n == 0 else f"{base}#{n + 1}"
    return labels


#: what ``eps`` is, by the geometry of the step (``graph.optimizers``)
EPS_MEANING = {
    "entrywise": "the floor added to the step's denominator sqrt(v) (Adam family)",
    "parameter-scaled": "the floor of Adafactor's RMS denominator (its eps1)",
    "orthogonalised": "the Newton-Schulz iteration's normalising eps (Muon)",
}


def kwarg_meaning(spec: OptSpec, name: str, value: Any = None) -> str:
    """What keyword argument ``name`` (= ``value``) does in ``spec``'s optimizer, where one name
    means different things in different classes: ``eps`` follows the step's geometry
    (``EPS_MEANING``); a nonzero ``weight_decay`` is an L2 term added to the gradient (Adam,
    NAdam, RAdam, RMSprop...) or a decoupled shrink of the weights (AdamW, Muon, Adafactor;
    Loshchilov & Hutter 2019, arXiv 1711.05101). Any other name: itself (the same meaning in
    every class)."""
    from ..graph.optimizers import DECOUPLED

    if name == "eps" and spec.step is not None:
        return EPS_MEANING.get(spec.step.geometry, f"eps of a {spec.step.geometry} step")
    if name == "weight_decay" and value == 0:
        return "no weight decay"
    if name == "weight_decay" and spec.cls is not None:
        decoupled = (spec.kwargs.get("decoupled_weight_decay")
                     or any(k.__name__ in DECOUPLED for k in spec.cls.__mro__))
        return "decoupled decay of the weights" if decoupled else "an L2 term added to the gradient"
    return name


def accepted(cls, kwargs: dict) -> dict:
    """The keyword arguments ``cls``'s signature takes (all of them if it takes **kwargs or has
    no signature)."""
    import inspect

    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def route_kwargs(specs: list[OptSpec], kwargs: dict) -> list[dict]:
    """The keyword arguments of each optimizer in ``specs`` (several: a hybrid such as Muon +
    AdamW), from ``kwargs``, whose values are either

    * a dict keyed by the optimizers' labels (``owner_labels``: "Muon", "AdamW", the keys of
      ``Rules.to_pytorch()``'s OPTIMIZERS; a class is accepted for its label), as the generated
      ``mup_optimizers(model, {"Muon": 0.02, "AdamW": 3e-4}, width)`` takes lr: each labelled
      optimizer gets its value, the others their class default; or
    * a plain value, shared by every class whose signature takes the name. A name that two
      classes take with different meanings (``kwarg_meaning``: Muon's Newton-Schulz eps against
      AdamW's) is refused, never routed.

    A name no optimizer takes is refused too."""
    labels = owner_labels(specs)
    names = [labels[s.key] for s in specs]
    by_class: dict = {}
    for s, label in zip(specs, names):
        by_class.setdefault(s.cls, []).append(label)
    out: list[dict] = [{} for _ in specs]
    for k, v in kwargs.items():
        if isinstance(v, dict):
            for key, val in v.items():
                label = key if isinstance(key, str) else (by_class.get(key) or [None])[0]
                if isinstance(key, type) and len(by_class.get(key, [])) > 1:
                    raise TensorprogError(f"{k}={{{key.__name__}: ...}}: two {key.__name__} optimizers "
                                          f"differ in their arguments; key them by label {names}.")
                if label not in names:
                    raise TensorprogError(f"{k}: key {key!r} is not one of this model's optimizers; "
                                          f"keys are their labels {names} (as in Rules.to_pytorch()'s "
                                          "OPTIMIZERS).")
                i = names.index(label)
                if k not in accepted(specs[i].cls, {k: val}):
                    raise TensorprogError(f"{k}={{{label!r}: ...}}: {label} takes no {k!r}.")
                out[i][k] = val
            continue
        takers = [i for i, s in enumerate(specs) if k in accepted(s.cls, {k: v})]
        if not takers:
            raise TensorprogError(f"no optimizer takes {k!r} (optimizers: {names}): drop it, or fix "
                                  "a class's own arguments with functools.partial(cls, ...).")
        meanings = {kwarg_meaning(specs[i], k, v): names[i] for i in takers}
        if len(meanings) > 1:
            what = "; ".join(f"{label}: {m}" for m, label in meanings.items())
            example = ", ".join(f"{names[i]!r}: ..." for i in takers)
            raise TensorprogError(
                f"{k}={v!r} would reach {', '.join(names[i] for i in takers)}, where it means "
                f"different things ({what}). Say which optimizer it is for: {k}={{{example}}} "
                "(the others keep their default).")
        for i in takers:
            out[i][k] = v
    return out


def spec_to_dict(spec: OptSpec) -> dict:
    """JSON-ready record of an ``OptSpec``: the class by name ("module:qualname"), its keyword
    arguments, and its ``Step``."""
    cls = spec.cls
    step = spec.step
    return {"class": None if cls is None else f"{cls.__module__}:{cls.__qualname__}",
            "kwargs": {k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
                       for k, v in spec.kwargs.items()},
            "step": None if step is None else {"geometry": step.geometry, "optimizer": step.optimizer,
                                               "hyper": dict(step.hyper), "decoupled": step.decoupled}}


def specs_from_dicts(records: dict) -> dict[str, OptSpec]:
    """Inverse of ``spec_to_dict`` over {param: record}. Classes from ``torch.optim`` are looked
    up there; any other class is named only (a stand-in type with its module and qualname: a
    JSON file is never allowed to import code), which is all the generated code needs."""
    import torch

    classes: dict = {}

    def cls_of(text):
        if text is None:
            return None
        if text not in classes:
            module, qualname = text.split(":", 1)
            found = getattr(torch.optim, qualname, None) if module.startswith("torch.optim") else None
            classes[text] = found if isinstance(found, type) else type(
                qualname.rsplit(".", 1)[-1], (), {"__module__": module, "__qualname__": qualname})
        return classes[text]

    out = {}
    for name, d in records.items():
        s = d.get("step")
        out[name] = OptSpec(cls_of(d.get("class")), dict(d.get("kwargs") or {}),
                            None if s is None else Step(s["geometry"], s["optimizer"],
                                                        dict(s.get("hyper") or {}),
                                                        bool(s.get("decoupled", False))))
    return out
