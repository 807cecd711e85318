"""``apply_mup`` in depth: the depth factors of TP6 / CompleteP put on any residual network.

With ``apply_mup(factory, base_width, base_depth=L0, depth_family=...)`` the factory takes
(width, depth). What this module adds to the width transform (every factor a power of L / L0,
so exactly 1 at the base depth):

* **branch multiplier**: a forward hook on the module whose output ends each residual branch
  (found by ``graph.depth.trace_depth`` at L0 and 2 L0) scaling it by (L / L0)^{-alpha - e}, where
  e is the multiplier exponent the model already has (so the product is (L / L0)^-alpha);
* **learning rate and Adam eps** of every parameter read inside a branch: times (L / L0)^lr_exp
  and (L / L0)^eps_exp of ``predict.depth.depth_rules`` (apply_mup's own optimizer has no depth
  factor, so these are the whole depth scaling);
* **the width rules of the deeper blocks**: the width rules are traced at the base depth; a block
  that exists only at a larger depth takes the rule of the same parameter / module of block 0
  (paths with block indices starred, ``graph.depth.star``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn as nn

from ..errors import TensorprogError
from ..graph.depth import star, trace_depth
from ..predict.depth import DepthRules, depth_rules


class ScaleBranch:
    """Forward hook: the module's output times a constant (the branch multiplier's factor)."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, module, args, output):
        return output * self.factor


@dataclass
class DepthPlan:
    rules: DepthRules
    hooks: dict[str, float]  # starred module path -> exponent of its output factor (L / L0)^e
    params: set[str]  # starred names of the parameters inside the branches

    def factors(self, depth: int) -> dict[str, float]:
        return self.rules.at(depth)

    def apply(self, model: nn.Module, depth: int) -> None:
        """Hook every branch-ending module of ``model`` (built at ``depth``)."""
        r = depth / self.rules.base_depth
        seen = set()
        for name, module in model.named_modules():
            e = self.hooks.get(star(name))
            if e is None:
                continue
            seen.add(star(name))
            if e != 0:
                module.register_forward_hook(ScaleBranch(float(r ** float(e))))
        missing = set(self.hooks) - seen
        if missing:
            raise TensorprogError(f"the branch modules {sorted(missing)} found in the trace are "
                                  f"missing from the model built at depth {depth}.")
        model.tensorprog_depth = {"depth": depth, **self.factors(depth)}

    def scale_optimizer(self, made, model):
        """``made`` (one optimizer or a list, fresh from the width transform) regrouped in place
        with the depth factors on the groups of the branch parameters (each group split into its
        branch and other parameters)."""
        state = getattr(model, "tensorprog_depth", None)
        if state is None:
            raise TensorprogError("optimizer_factory needs a model built by apply_mup's "
                                  "model_factory(width, depth).")
        f = self.factors(state["depth"])
        inside = {id(p) for n, p in model.named_parameters() if star(n) in self.params}

        def rebuild(opt):
            groups = []
            for g in opt.param_groups:
                for branch in (True, False):
                    ps = [p for p in g["params"] if (id(p) in inside) == branch]
                    if not ps:
                        continue
                    new = {**g, "params": ps}
                    if branch:
                        new["lr"] = g["lr"] * f["lr"]
                        if "eps" in f and isinstance(g.get("eps"), float):
                            new["eps"] = g["eps"] * f["eps"]
                    groups.append(new)
            opt.param_groups = []  # fresh (no state yet): regroup in place, whatever the class
            for g in groups:
                opt.add_param_group(g)
            return opt
        if isinstance(made, (list, tuple)):
            return [rebuild(o) for o in made]
        return rebuild(made)


def depth_plan(factory, base_width: int, base_depth: int, family: str, example_inputs,
               optimizer: str) -> DepthPlan:
    """Trace ``factory`` at base_depth and 2 base_depth (base width) and plan the depth factors
    of ``family`` for an "adam"-like or "sgd" optimizer."""
    rules = depth_rules(family, base_depth, optimizer)
    trace = trace_depth(factory, (base_depth, 2 * base_depth), width=base_width,
                        example_inputs=example_inputs)
    if not trace.kinds:
        raise TensorprogError(
            "no residual branches found: depth scaling (TP6 / CompleteP) does not apply to this "
            "model. Call apply_mup without base_depth.")
    hooks, params = {}, set()
    for k in trace.kinds.values():
        if k.mult_exp is None:
            raise TensorprogError(f"the multiplier of branch `{k.kind}` is not a power law of the "
                                  f"depth ({k.multipliers}, or a tensor); set it by hand.")
        if not k.hookable:
            raise TensorprogError(
                f"branch `{k.kind}` ends inside its module, with other ops after it: apply_mup "
                "cannot hook its output. Put the branch in a module of its own (whose output is "
                "added to the stream), or set its multiplier by hand.")
        hooks[k.kind] = float(rules.mult_exp - k.mult_exp)
    for d in trace.depths:
        for b in trace.branches[d]:
            params.update(star(p) for p in b.params)
    return DepthPlan(rules=rules, hooks=hooks, params=params)


def extend_rules(r, model: nn.Module):
    """Rules traced at the base depth, extended to the parameters and hooked modules of a deeper
    ``model``: each new one takes the rule of the first one with the same starred path."""
    first = {}
    for name in r.params:
        first.setdefault(star(name), name)
    params, owners = dict(r.params), dict(r.owners)
    for name, _ in model.named_parameters():
        base = first.get(star(name))
        if name in params or base is None:
            continue
        params[name] = dataclasses.replace(r.params[base], name=name, aliases=[])
        if base in r.owners:
            owners[name] = r.owners[base]
    by_module = {star(h.module): h for h in r.hooks}
    have = {h.module for h in r.hooks}
    hooks = list(r.hooks) + [dataclasses.replace(by_module[star(m)], module=m)
                             for m, _ in model.named_modules()
                             if m not in have and star(m) in by_module]
    return dataclasses.replace(r, params=params, hooks=hooks, owners=owners)


