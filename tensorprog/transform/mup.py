"""``apply_mup``: turn any traceable model factory into muP, without editing its class.

::

    model_factory, optimizer_factory = apply_mup(factory, base_width=64,
                                                 example_inputs=(tokens,), lr=3e-4)
    model = model_factory(1024)
    opt = optimizer_factory(model)

How (every factor is ``(width / base_width) ** e``, so exactly 1 at the base width, where the
model is bit for bit the original unless ``zero_init`` zeroes the readout / query, TP5 App. D.2):

1. **Trace once** at base_width, 2x and 4x (``tensorprog.rules``): every parameter's role, fans,
   init exponent, its uses, and the attention ops.
2. **Init**: ``model_factory(width)`` builds ``factory(width)`` and multiplies each freshly built
   weight by ``(width/base)^(target - measured init exponent)``. The distribution's shape (uniform,
   normal, truncated, orthogonal...) is kept; only its width scaling changes. E.g. HF GPT-2's
   constant std 0.02 on hidden weights becomes 0.02 * (base/width)^{1/2}.
3. **Multipliers** are forward hooks on the module that runs the use: a pre-hook scaling the
   module's input (reaches only the weight's contraction, not a bias added inside the op) and a
   hook scaling its output (weight and bias). Tied embedding / readout: the multiplier goes on the
   readout module alone (e.g. HF ``lm_head``), so the embedding use is untouched. A use whose
   module cannot be hooked (used functionally inside a larger module) keeps its multiplier and its
   init and LR take the equivalent shift (TP5 Lemma J.1); a tied weight that would need that is an
   error.
4. **Attention**: each module traced calling ``scaled_dot_product_attention`` gets a forward
   pre-hook / hook pair that, during that module's forward and in that thread only, multiplies
   each sdpa call's ``scale`` (default 1/sqrt(d_head)) by ``(base/width)^{d_exp/2}`` (d_head ~
   n^d_exp; = sqrt(d_base / d_head) when the head dim grows with width): scale ~ 1/d_head (TP5
   Def 4.1). It is a per-thread ``TorchFunctionMode`` (``transform/attention_scale.py``): nothing
   process-wide is patched, so other models and threads are untouched, also after an exception.
   torch.export (non-strict) runs the hooks, so ``analyze`` sees the scaled attention, and
   ``torch.compile`` gives the eager results (with graph breaks at each hooked sdpa call; see
   ``attention_scale.py``).
   Explicit ``q @ k^T`` attention cannot be rescaled: ``apply_mup`` raises and names the module.
5. **Optimizer**: ``optimizer_factory(model)`` puts every trainable parameter in a group with
   ``lr * (width/base)^lr_exp`` (Adam-like or SGD-like from ``optimizer_cls``, via
   ``tensorprog.theory.optimizer_class``). ``optimizer_cls`` may also give each parameter its own
   optimizer (a dict by parameter name or role with a "default", or a callable
   ``(name, role) -> class``; see ``tensorprog.transform.optspec``), e.g. Muon on the hidden
   matrices and AdamW on the rest::

       apply_mup(factory, 64, optimizer_cls={"hidden": torch.optim.Muon,
                                             "default": torch.optim.AdamW}, lr=1e-3)

   Then ``optimizer_factory(model)`` returns a list of optimizers, one per class (``trace`` /
   ``analyze`` / ``check`` accept the list from ``make_optimizer``), and each parameter's LR
   exponent follows the geometry of its own optimizer (Muon "original": constant for hidden
   matrices; Adafactor: Adam's minus the parameter's RMS exponent). Each keyword argument
   (lr, eps, weight_decay...) is one value or a dict keyed by the optimizers' labels, the keys of
   ``Rules.to_pytorch()``'s OPTIMIZERS and of the generated ``mup_optimizers``' lr ("Muon",
   "AdamW"; a class works too): ``lr={"Muon": 0.02, "AdamW": 3e-4}, eps={"AdamW": 1e-8}``. One
   value goes to every optimizer whose signature takes it; a name two of them take with different
   meanings (``eps``: Muon's Newton-Schulz eps against AdamW's denominator eps; a nonzero
   ``weight_decay``: Adam's L2 term against a decoupled decay) is refused, naming the dict to
   pass (``optspec.route_kwargs``). Arguments fixed per class also go in a ``functools.partial``
   (``partial(torch.optim.Muon, momentum=0.9)``). Weight decay (``weight_decay_scaling``): "mup" (default)
   divides the group's weight_decay by the same factor, so the per-step decay lr * wd is constant
   in width, as the mup package's MuAdam / MuAdamW / MuSGD do; "constant" keeps weight_decay the
   same in every group, so the decay follows each group's muP learning rate.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import sympy as sp
import torch
import torch.nn as nn

from ..errors import TensorprogError
from ..validate import check_base_width, check_widths
from ..rng import preserves_rng
from ..transform.rules import Rules, rules as derive_rules
from .attention_scale import AttentionScale
from .zero_init import check_queries, check_zero_init, zero_init_plan
from .optspec import route_kwargs

__all__ = ["apply_mup", "MupState"]


@dataclass
class MupState:
    """Attached to every model ``model_factory`` builds, as ``model.tensorprog_mup``."""

    width: int
    base_width: int
    width_mult: float
    convention: str
    optimizer: str  # "sgd" | "adam"
    lr_exp: dict[str, Any]  # parameter name -> LR exponent
    init_factor: dict[str, float] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)  # module paths with multiplier hooks
    attention_factors: list[float] = field(default_factory=list)
    zero_init: list[str] = field(default_factory=list)  # parameters (slices) started at zero


# ----------------------------------------------------------------------------- hooks


class _ScaleInput:
    """Forward pre-hook: the module's first input times ``factor``."""

    def __init__(self, factor: float, module: str):
        self.factor, self.module = factor, module

    def __call__(self, mod, args, kwargs):
        if args and isinstance(args[0], torch.Tensor):
            return (args[0] * self.factor,) + tuple(args[1:]), kwargs
        for k, v in kwargs.items():  # called with its input as a keyword
            if isinstance(v, torch.Tensor):
                return args, {**kwargs, k: v * self.factor}
        raise TensorprogError(f"muP input multiplier of `{self.module}`: the module was called "
                              "without a tensor input to scale.")


class _ScaleOutput:
    """Forward hook: the module's output times ``factor``."""

    def __init__(self, factor: float, module: str):
        self.factor, self.module = factor, module

    def __call__(self, mod, args, output):
        if isinstance(output, torch.Tensor):
            return output * self.factor
        raise TensorprogError(f"muP output multiplier of `{self.module}`: the module returned "
                              f"{type(output).__name__}, not a tensor.")


# ----------------------------------------------------------------------------- apply


@preserves_rng
def apply_mup(
    factory: Callable[[int], nn.Module],
    base_width: int,
    *,
    example_inputs=None,
    optimizer_cls=torch.optim.AdamW,
    widths: Sequence[int] | None = None,
    convention: str = "table8",
    weight_decay_scaling: str = "mup",
    check: bool = True,
    progress: bool = False,
    alignment="tp",
    eps_scaling: str = "constant",
    base_depth: int | None = None,
    depth_family: str = "completep",
    zero_init: tuple = (),
    **optimizer_kwargs,
):
    """(model_factory, optimizer_factory) that build ``factory``'s model in muP.

    factory: width -> nn.Module (any parametrization; SP is typical). base_width: the width at
    which the muP model equals the original bit for bit (and where learning rates are tuned).
    example_inputs: as for ``trace`` (a tuple, a dict, or width -> tuple). optimizer_cls: the
    optimizer class ``optimizer_factory`` builds (Adam-like or SGD-like rules follow from it);
    optimizer_kwargs (lr, weight_decay, betas...) are its arguments at the base width; with
    several optimizers, a value may be a dict by optimizer label ({"Muon": 0.02, "AdamW": 3e-4})
    and a name the classes read differently (eps) must be (module doc, item 5).
    widths: traced widths (default base, 2 base, 4 base). convention: "table8" (default, the mup
    package's form), "table3", "table9" or "unit" (see ``tensorprog.rules``).
    check: build the model at 2 base once and run it on the example inputs, to make sure every
    hook fires and every traced attention call is rescaled. alignment: as for ``rules`` ("tp",
    "full", "none"; Everett et al. 2024), which sizes the learning rates. eps_scaling: "constant"
    (default) keeps an Adam-family eps as given; "mup" scales it per parameter like its muP
    gradient entries (``ParamRule.eps_exp``: 1/width for hidden weights), so eps never overtakes
    the gradient.
    Returns ``model_factory(width) -> nn.Module`` and ``optimizer_factory(model) -> Optimizer``.
    base_depth: ``factory`` takes (width, depth) and ``model_factory(width, depth)`` adds the
    depth factors of ``depth_family`` ("completep" or "depth_mup"; ``transform/depth.py``), for
    one optimizer or a hybrid (Muon + AdamW): a block that exists only deeper than base_depth
    goes to the optimizer of its block-0 counterpart.
    zero_init: a tuple of "readout" and/or "query" (TP5 App. D.2): the readout (the weights
    whose traced role is output, and their bias) and the query rows of each attention's
    projection start at exactly zero, at every width (``transform/zero_init.py``). This breaks
    the bit-for-bit equality with the original at the base width on purpose.
    """
    from ..theory.abc import optimizer_class

    if eps_scaling not in ("mup", "constant"):
        raise TensorprogError(f"eps_scaling must be 'mup' or 'constant', got {eps_scaling!r}.")
    if weight_decay_scaling not in ("mup", "constant"):
        raise TensorprogError(f"weight_decay_scaling must be 'mup' or 'constant', got {weight_decay_scaling!r}.")
    base_width = check_base_width(base_width)
    zero_init = check_zero_init(zero_init)
    from ..predict.depth import check_depth_options
    base_depth = check_depth_options(base_depth, depth_family, TensorprogError)
    ws = tuple(check_widths(widths)) if widths is not None else (base_width, 2 * base_width, 4 * base_width)
    if isinstance(optimizer_cls, type) and optimizer_kwargs.get("adjust_lr_fn") is not None:
        optimizer_cls = functools.partial(optimizer_cls, adjust_lr_fn=optimizer_kwargs.pop("adjust_lr_fn"))
    if isinstance(optimizer_cls, str):
        optimizer_class(optimizer_cls)  # a name: the rules follow it; the optimizer cannot be built
    if eps_scaling == "mup" and not isinstance(optimizer_cls, dict):
        try:
            sgd_like = optimizer_class(getattr(optimizer_cls, "func", optimizer_cls)) == "sgd"
        except Exception:  # noqa: BLE001 - a callable choosing per parameter: checked by the rules
            sgd_like = False
        if sgd_like:
            raise TensorprogError(
                "eps_scaling='mup' scales Adam's eps like the muP gradient (TP5 arXiv "
                "2203.03466 App. B; Everett et al. 2024 §4), but "
                f"{getattr(optimizer_cls, '__name__', optimizer_cls)!r} steps by the gradient and "
                "has no eps: drop eps_scaling, or use an Adam-like optimizer_cls.")
    dplan = None
    if base_depth is None:
        width_factory = factory
    else:
        def width_factory(n):
            return factory(n, base_depth)
    r = derive_rules(width_factory, ws, example_inputs=example_inputs, optimizer=optimizer_cls,
                     convention=convention, base_width=base_width, progress=progress,
                     alignment=alignment)
    _refuse(r)
    zplan = zero_init_plan(r, zero_init) if zero_init else None
    if base_depth is not None:  # r.optimizer: "adam" / "sgd", the class of every owner (a
        from .depth import depth_plan  # hybrid such as Muon + AdamW is one class, optspec.assign)
        dplan = depth_plan(factory, base_width, base_depth, depth_family, example_inputs,
                           r.optimizer)
    plan = _Plan.from_rules(r)
    if len(plan.specs) > 1 or plan.hybrid:
        route_kwargs(plan.specs, optimizer_kwargs)  # refuse an ambiguous argument now
    if eps_scaling == "mup":
        plan.eps = {n: _fl(p.eps_exp) for n, p in r.params.items() if p.eps_exp is not None}

    def model_factory(width: int, depth: int | None = None, *, _zero: bool = True) -> nn.Module:
        model = _build(width, depth)
        if zplan is not None and _zero:
            z = zplan if dplan is None else zplan.extended(model)  # deeper: new blocks too
            model.tensorprog_mup.zero_init = z.apply(model, width)
        return model

    def _build(width, depth):
        if dplan is None:
            model = factory(width)
            plan.apply(model, width)
            return model
        from .depth import extend_rules
        depth = base_depth if depth is None else depth
        model = factory(width, depth)
        model_plan = _Plan.from_rules(extend_rules(r, model))
        model_plan.apply(model, width)
        model.tensorprog_width_plan = model_plan
        dplan.apply(model, depth)
        return model

    def optimizer_factory(model: nn.Module, **overrides) -> torch.optim.Optimizer:
        if dplan is not None:
            return dplan.scale_optimizer(width_optimizer(model, **overrides), model)
        return width_optimizer(model, **overrides)

    def width_optimizer(model: nn.Module, **overrides) -> torch.optim.Optimizer:
        plan = getattr(model, "tensorprog_width_plan", None) or plan_at_base
        kwargs = {**optimizer_kwargs, **overrides}
        if len(plan.specs) == 1 and not plan.hybrid:
            spec = plan.specs[0]
            return plan.build_optimizer(model, spec, {**spec.kwargs, **kwargs}, weight_decay_scaling)
        opts = []
        for i, (spec, own) in enumerate(zip(plan.specs, route_kwargs(plan.specs, kwargs))):
            names = {n for n, k in plan.owner.items() if k == i}
            if i == 0:  # parameters the trace did not see: with the first optimizer
                names |= {n for n, _ in model.named_parameters() if n not in plan.owner}
            opts.append(plan.build_optimizer(model, spec, {**spec.kwargs, **own},
                                             weight_decay_scaling, names))
        return opts

    plan_at_base = plan
    model_factory.rules = optimizer_factory.rules = r  # for inspection
    model_factory.depth_rules = None if dplan is None else dplan.rules
    model_factory.base_width = base_width
    if check:
        plan.check(model_factory, example_inputs, 2 * base_width)
        if zplan is not None and zplan.queries:
            from ..graph.trace import example_args
            w = 2 * base_width
            check_queries(lambda zero: model_factory(w, _zero=zero),
                          lambda m: example_args(example_inputs, m, w, "cpu"), w)
    return model_factory, optimizer_factory


def _refuse(r: Rules):
    problems = r.problems
    if problems:
        raise TensorprogError("apply_mup cannot put this model in muP:\n  - " + "\n  - ".join(problems))


def _fl(e) -> float:
    return float(sp.nsimplify(e))


@dataclass
class _Plan:
    base_width: int
    convention: str
    opt_class: str
    init: dict[str, float]  # param -> exponent of its rescale
    lr: dict[str, float]  # param -> LR exponent
    trainable: set
    hooks: list[tuple[str, float, float]]  # module, pre exponent, post exponent
    attention: list[tuple[str, float]]  # per sdpa call: (module, exponent of the scale factor)
    specs: list = field(default_factory=list)  # OptSpec per optimizer the factory builds
    owner: dict = field(default_factory=dict)  # param -> index into specs
    hybrid: bool = False  # optimizer_cls chose per parameter (a dict or a callable)
    eps: dict = field(default_factory=dict)  # param -> eps exponent (eps_scaling="mup")

    @classmethod
    def from_rules(cls, r: Rules) -> "_Plan":
        init = {n: _fl(p.init_factor_exp) for n, p in r.params.items() if p.init_factor_exp != 0}
        lr = {n: _fl(p.lr_exp) for n, p in r.params.items() if p.lr_exp is not None}
        hooks = [(h.module, _fl(h.pre_exp), _fl(h.post_exp)) for h in r.hooks]
        att = [(o.module, _fl(o.factor_exp)) for o in r.ops if o.fixable]
        if all(e == 0 for _, e in att):
            att = []
        specs, owner = [], {}
        for n, spec in r.owners.items():
            if not r.params[n].trainable:
                continue
            keys = [s.key for s in specs]
            if spec.key not in keys:
                specs.append(spec)
                keys.append(spec.key)
            owner[n] = keys.index(spec.key)
        if not specs and r.owners:
            specs = [next(iter(r.owners.values()))]
        return cls(r.base_width, r.convention, r.optimizer, init, lr,
                   {n for n, p in r.params.items() if p.trainable}, hooks, att, specs, owner,
                   len(specs) > 1)

    def apply(self, model: nn.Module, width: int):
        if not isinstance(model, nn.Module):
            raise TensorprogError(f"factory({width}) returned {type(model).__name__}, not an nn.Module.")
        if getattr(model, "tensorprog_mup", None) is not None:
            raise TensorprogError("the factory returned a model that apply_mup already transformed; "
                                  "pass the original factory.")
        m = width / self.base_width
        state = MupState(width=width, base_width=self.base_width, width_mult=m,
                         convention=self.convention, optimizer=self.opt_class, lr_exp=dict(self.lr))
        with torch.no_grad():
            for name, e in self.init.items():
                p = _param(model, name)
                if p.is_meta:
                    continue
                f = m**e
                state.init_factor[name] = f
                if f != 1.0:
                    p.mul_(f)
        for path, pre, post in self.hooks:
            try:
                mod = model.get_submodule(path)
            except AttributeError:
                raise TensorprogError(f"module `{path}` of the traced model is missing from "
                                      f"factory({width}).") from None
            if pre != 0:
                mod.register_forward_pre_hook(_ScaleInput(m**pre, path), with_kwargs=True)
            if post != 0:
                mod.register_forward_hook(_ScaleOutput(m**post, path))
            state.hooks.append(path)
        scales = []
        for path in dict.fromkeys(p for p, _ in self.attention):
            try:
                mod = model.get_submodule(path)
            except AttributeError:
                raise TensorprogError(f"module `{path}` (traced calling scaled_dot_product_attention)"
                                      f" is missing from factory({width}).") from None
            att = AttentionScale([m**e for p, e in self.attention if p == path], path)
            att.install(mod)
            scales.append(att)
        state.attention_factors = [m**e for _, e in self.attention]
        model._tensorprog_attention = scales  # for the call counter in check()
        model.tensorprog_mup = state

    def build_optimizer(self, model, spec, kwargs, wd_scaling, only=None):
        optimizer_cls = spec.cls
        if optimizer_cls is None:
            raise TensorprogError(f"optimizer_cls={spec.step.optimizer!r} is a name: the rules follow "
                                  "it, but optimizer_factory needs a torch.optim class to build.")
        state = getattr(model, "tensorprog_mup", None)
        if not isinstance(state, MupState):
            raise TensorprogError("optimizer_factory needs a model built by apply_mup's "
                                  "model_factory (it reads the model's width from it).")
        m = state.width_mult
        lr = kwargs.pop("lr", None)
        if lr is None:
            lr = _default(optimizer_cls, "lr")
        if lr is None or lr is inspect.Parameter.empty:
            raise TensorprogError(f"{optimizer_cls.__name__} has no default learning rate: pass lr=...")
        wd = kwargs.pop("weight_decay", None)
        if wd is None:
            wd = _default(optimizer_cls, "weight_decay")
            wd = 0.0 if wd in (None, inspect.Parameter.empty) else wd
        eps = (kwargs.get("eps", _default(optimizer_cls, "eps"))
               if self.eps and spec.step.geometry == "entrywise" else None)
        scale_eps = isinstance(eps, (int, float)) and not isinstance(eps, bool)
        if scale_eps:
            kwargs.pop("eps", None)  # per group instead
        groups: dict[tuple, dict] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad or (only is not None and name not in only):
                continue
            e = self.lr.get(name, 0.0)
            if name not in self.lr and name in self.trainable:
                e = 0.0
            f = m**e
            ee = self.eps.get(name, 0.0) if scale_eps else 0.0
            g = groups.setdefault((e, ee), {"params": [], "lr": lr * f, "lr_exp": e,
                                            "weight_decay": wd / f if wd_scaling == "mup" else wd})
            if scale_eps:
                g["eps"] = eps * m**ee
            g["params"].append(p)
        if spec.step.geometry == "orthogonalised":
            flat = [n for n, p in model.named_parameters() if p.requires_grad and p.dim() != 2
                    and (only is None or n in only)]
            if flat:
                raise TensorprogError(
                    f"{optimizer_cls.__name__} orthogonalises matrices and refuses parameters that "
                    f"are not 2-D (e.g. {flat[:3]}). Give it the hidden matrices only: "
                    "optimizer_cls={'hidden': torch.optim.Muon, 'default': torch.optim.AdamW}.")
        return optimizer_cls(list(groups.values()), lr=lr, **kwargs)

    def check(self, model_factory, example_inputs, width):
        from ..graph.trace import example_args as _inputs

        model = model_factory(width)
        args, kwargs = _inputs(example_inputs, model, width, "cpu")
        fired = set()
        handles = [model.get_submodule(path).register_forward_hook(
            lambda mod, a, o, path=path: fired.add(path)) for path, _, _ in self.hooks]
        try:
            with torch.no_grad():
                model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        missing = [path for path, _, _ in self.hooks if path not in fired]
        if missing:
            raise TensorprogError(f"the multiplier hooks on {missing[:3]} never ran: those modules "
                                  "are not called by forward as traced.")
        calls = sum(a.calls for a in getattr(model, "_tensorprog_attention", []))
        if calls != len(self.attention):
            raise TensorprogError(
                f"the model was traced with {len(self.attention)} scaled_dot_product_attention "
                f"calls in modules {sorted({p or '<top>' for p, _ in self.attention})}, but only "
                f"{calls} ran inside those modules' forward (called through Module.__call__) when "
                "the model ran eagerly. Fix the other calls' scale to ~ 1/d_head by hand.")


def _param(model, name):
    try:
        return model.get_parameter(name)
    except AttributeError:
        ps = dict(model.named_parameters(remove_duplicate=False))
        if name in ps:
            return ps[name]
        raise TensorprogError(f"parameter {name!r} of the traced model is missing from the model "
                              "the factory built.") from None


def _default(cls, name):
    try:
        p = inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if p is None else p.default
