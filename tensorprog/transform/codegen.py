"""Ready-to-paste PyTorch code for a ``Rules``: ``mup_init_``, ``mup_multipliers``,
``mup_attention``, ``mup_param_groups`` (``Rules.to_pytorch``)."""
from __future__ import annotations

import inspect

import sympy as sp

from ..exponents import fmt
from ..exponents import expr_text
from ..errors import TensorprogError
from .optspec import owner_labels

__all__ = ["to_pytorch"]


def _f(e) -> str:
    """Python source of width_mult ** e with ``m`` the width multiplier."""
    e = sp.nsimplify(e)
    return "m" if e == 1 else f"m ** {float(e)!r}"


def _class_source(spec) -> tuple[str, str | None]:
    """(source of the optimizer class, module to import or None) for an ``OptSpec``."""
    cls = spec.cls
    if cls is None:  # a plain name: "adam" / "sgd"
        return ("torch.optim.SGD" if spec.step.optimizer == "sgd" else "torch.optim.AdamW"), None
    if cls.__module__.startswith("torch.optim"):
        return f"torch.optim.{cls.__name__}", None
    if "<" in cls.__qualname__ or cls.__module__ == "__main__":
        return f"{cls.__name__}  # your class: define or import it here", None
    return f"{cls.__module__}.{cls.__qualname__}", cls.__module__


def _base_eps(spec):
    """The eps an entrywise (Adam-family) optimizer steps with at the base width: its partial's
    ``eps``, else its class's default (AdamW's for a plain "adam"); None when it has no numeric
    eps (SGD, Muon's Newton-Schulz eps, Adafactor's pair), which is then never scaled."""
    if spec.step is None or spec.step.geometry != "entrywise":
        return None
    if "eps" in spec.kwargs:
        eps = spec.kwargs["eps"]
    else:
        import torch

        try:
            p = inspect.signature(spec.cls or torch.optim.AdamW).parameters.get("eps")
        except (TypeError, ValueError):
            p = None
        eps = None if p is None else p.default
    return eps if isinstance(eps, (int, float)) and not isinstance(eps, bool) else None


def _eps_exps(r) -> dict:
    """param -> exponent of its Adam eps (``ParamRule.eps_exp``) for the parameters an entrywise
    optimizer with a numeric eps owns: the same set ``apply_mup(eps_scaling="mup")`` scales."""
    out = {}
    for name, p in r.params.items():
        if p.eps_exp is None or not p.trainable or p.problem:
            continue
        spec = (r.owners or {}).get(name)
        if spec is None and r.optimizer != "adam" or spec is not None and _base_eps(spec) is None:
            continue
        out[name] = float(p.eps_exp)
    return out


def _optimizer_section(r, eps_scaling: str) -> list[str]:
    """OWNER (parameter -> optimizer label), OPTIMIZERS (label -> class, kwargs) and
    ``mup_optimizers``, which builds one optimizer per owner (Muon + AdamW: both); with
    eps_scaling "mup" also EPS (label -> base eps of each Adam-family optimizer)."""
    owners = {n: s for n, s in r.owners.items() if n in r.params and r.params[n].trainable}
    labels = owner_labels(owners.values())
    specs = {labels[s.key]: s for s in owners.values()}
    imports = sorted({m for s in specs.values() for m in [_class_source(s)[1]] if m})
    out = ["", ""] + [f"import {m}  # noqa: E402" for m in imports]
    out += ["OWNER = {  # the optimizer that owns each parameter (its LR rule follows that optimizer)"]
    out += [f"    {n!r}: {labels[s.key]!r}," for n, s in owners.items()]
    out += ["}", "OPTIMIZERS = {  # label -> (class, keyword arguments)"]
    for label, spec in specs.items():
        kw = ", ".join(f"{k!r}: {v!r}" for k, v in spec.kwargs.items())
        src = _class_source(spec)[0]
        comment = ""
        if "#" in src:
            src, comment = src.split("#", 1)
            comment = "  #" + comment
        out.append(f"    {label!r}: ({src.strip()}, {{{kw}}}),{comment}")
    out += ["}"]
    if eps_scaling == "mup":
        base = {label: _base_eps(spec) for label, spec in specs.items()}
        out += ["EPS = {  # label -> eps at the base width of each Adam-family optimizer (scaled)"]
        out += [f"    {label!r}: {e!r}," for label, e in base.items() if e is not None]
        out += ["}", "", "",
                "def mup_optimizers(model, lr, width, base_width=BASE_WIDTH, weight_decay=0.0,",
                "                   eps=None):",
                '    """One optimizer per owner in OPTIMIZERS, each over the muP param groups of the',
                '    parameters it owns. lr, weight_decay and eps (default EPS): one number, or a dict',
                '    label -> number (Muon and AdamW usually want different base learning rates).',
                '    The optimizers in EPS get a per-group eps = eps * m ** EPS_EXP."""',
                "    pick = lambda v, k: v[k] if isinstance(v, dict) else v  # noqa: E731",
                "    out = []",
                "    for label, (cls, kwargs) in OPTIMIZERS.items():",
                "        e = (EPS[label] if eps is None else pick(eps, label)) if label in EPS else None",
                "        groups = mup_param_groups(model, pick(lr, label), width, base_width,",
                "                                  pick(weight_decay, label), owner=label, eps=e)",
                "        if groups:",
                "            out.append(cls(groups, **kwargs))",
                "    return out",
                ""]
        return out
    out += ["", "",
            "def mup_optimizers(model, lr, width, base_width=BASE_WIDTH, weight_decay=0.0):",
            '    """One optimizer per owner in OPTIMIZERS, each over the muP param groups of the',
            '    parameters it owns. lr and weight_decay: one number, or a dict label -> number',
            '    (Muon and AdamW usually want different base learning rates)."""',
            "    pick = lambda v, k: v[k] if isinstance(v, dict) else v  # noqa: E731",
            "    out = []",
            "    for label, (cls, kwargs) in OPTIMIZERS.items():",
            "        groups = mup_param_groups(model, pick(lr, label), width, base_width,",
            "                                  pick(weight_decay, label), owner=label)",
            "        if groups:",
            "            out.append(cls(groups, **kwargs))",
            "    return out",
            ""]
    return out


def to_pytorch(r, eps_scaling: str = "constant", zero_init=()) -> str:
    """Python source of ``Rules.to_pytorch``. eps_scaling: "constant" (default) leaves Adam's
    eps to the optimizer; "mup" also emits ``EPS_EXP`` and gives every param group of an
    Adam-family optimizer eps * m ** EPS_EXP[name], as ``apply_mup(eps_scaling="mup")`` does.
    zero_init: also emit ``mup_zero_init_`` (as ``apply_mup(zero_init=...)``, zero_init.py)."""
    from .zero_init import to_source

    zero = to_source(r, zero_init)
    if eps_scaling not in ("constant", "mup"):
        raise TensorprogError(f"eps_scaling must be 'mup' or 'constant', got {eps_scaling!r}.")
    opt = r.optimizer
    out = [
        f'"""muP for {r.label}: convention {r.convention}, optimizer {opt}, base width {r.base_width}.',
        "",
        "Generated by tensorprog.rules. Every factor is (width / base_width) ** e, so at the base",
        "width each one is exactly 1. Usage:",
        "",
        "    model = factory(width)",
        "    mup_init_(model, width); mup_multipliers(model, width); mup_attention(model, width)",
    ] + (["    mup_zero_init_(model, width)  # readout / query start at zero"] if zero else []) + [
        f"    opt = torch.optim.{'SGD' if opt == 'sgd' else 'AdamW'}(mup_param_groups(model, lr, width))",
        "    # or, with the optimizers the rules were derived for (OWNER; e.g. Muon + AdamW):",
        "    opts = mup_optimizers(model, lr, width)",
    ] + ([
        "    # Adam's eps scaled per parameter like its muP gradient (EPS_EXP; eps at the base width):",
        "    opt = torch.optim.AdamW(mup_param_groups(model, lr, width, eps=1e-8))",
    ] if eps_scaling == "mup" else []) + ([
        "",
        "Depth: this code applies the width rules only. For a model with more blocks than the",
        "base depth, also apply (apply_mup(..., base_depth=L0) does):",
        f"{r.depth}.",
    ] if r.depth is not None else []) + [
        '"""',
        "import math",
        "",
        "import torch",
        "import torch.nn.functional as F",
        "",
        f"BASE_WIDTH = {r.base_width}",
        "",
        "",
        "def mup_init_(model, width, base_width=BASE_WIDTH):",
        '    """Rescale the freshly built weights (the distribution shape is kept)."""',
        "    m = width / base_width",
        "    with torch.no_grad():",
    ]
    body = []
    for name, p in r.params.items():
        if p.problem or p.init_factor_exp == 0:
            continue
        body.append(f"        model.get_parameter({name!r}).mul_({_f(p.init_factor_exp)})  "
                    f"# {p.kind}: init var {expr_text(p.init_var)} (now RMS ~ {fmt(p.measured_init_exp)})")
    out += body or ["        pass"]
    out += zero
    out += ["", "", "def mup_multipliers(model, width, base_width=BASE_WIDTH):",
            '    """Forward multipliers as hooks: input factor (the weight\'s contraction only) and',
            '    output factor of each module. Returns the hook handles."""',
            "    m = width / base_width",
            "    handles = []"]
    for h in r.hooks:
        if h.pre_exp != 0:
            out.append(f"    handles.append(model.get_submodule({h.module!r}).register_forward_pre_hook("
                       f"lambda mod, args, f={_f(h.pre_exp)}: (args[0] * f,) + tuple(args[1:])))")
        if h.post_exp != 0:
            out.append(f"    handles.append(model.get_submodule({h.module!r}).register_forward_hook("
                       f"lambda mod, args, out, f={_f(h.post_exp)}: out * f))")
    out += ["    return handles"]
    fix = [o for o in r.ops if o.fixable]
    factors = [o.factor_exp for o in fix]
    out += ["", "", "def mup_attention(model, width, base_width=BASE_WIDTH):",
            '    """Scale the logits of every F.scaled_dot_product_attention call in model.forward to',
            '    ~ 1/d_head (TP5 Def 4.1): the call\'s scale (default 1/sqrt(d_head)) times a factor."""']
    if not fix or all(f == 0 for f in factors):
        out += ["    return []  # nothing to fix"]
    else:
        out += ["    m = width / base_width",
                f"    factors = [{', '.join(_f(f) for f in factors)}]  # one per call, in order",
                "    state = {'original': None, 'calls': 0}",
                "",
                "    def patched(query, key, value, *args, **kwargs):",
                "        f = factors[min(state['calls'], len(factors) - 1)]",
                "        state['calls'] += 1",
                "        args = list(args)",
                "        if len(args) >= 4:",
                "            scale = args[3]",
                "        else:",
                "            scale = kwargs.get('scale')",
                "        scale = (1.0 / math.sqrt(query.size(-1)) if scale is None else scale) * f",
                "        if len(args) >= 4:",
                "            args[3] = scale",
                "        else:",
                "            kwargs['scale'] = scale",
                "        return state['original'](query, key, value, *args, **kwargs)",
                "",
                "    def pre(mod, args):",
                "        state['original'], state['calls'] = F.scaled_dot_product_attention, 0",
                "        F.scaled_dot_product_attention = patched",
                "",
                "    def post(mod, args, out):",
                "        F.scaled_dot_product_attention = state['original']",
                "",
                "    return [model.register_forward_pre_hook(pre),",
                "            model.register_forward_hook(post, always_call=True)]"]
    hand = [o for o in r.ops if not o.fixable and not o.ok]
    for o in hand:
        out.append(f"# BY HAND: `{o.module or '<top>'}` computes attention logits with an explicit "
                   f"{o.op}; multiply them by {_f(o.factor_exp)} (scale ~ 1/d_head).")
    lrs = {name: p.lr_exp for name, p in r.params.items() if p.trainable and p.lr_exp not in (None, 0)
           and not p.problem}
    scaled = eps_scaling == "mup"
    out += ["", "", "def mup_param_groups(model, lr, width, base_width=BASE_WIDTH, weight_decay=0.0,",
            "                     owner=None" + (", eps=None):" if scaled else "):"),
            '    """Optimizer param groups: lr * m ** e per parameter; weight decay divided by the same',
            '    factor, so lr * weight_decay stays constant in width (as the mup package does).',
            '    owner: only the parameters OWNER gives to that optimizer (None: all).']
    if scaled:
        out += ['    eps: Adam\'s eps at the base width; given, each group gets eps * m ** EPS_EXP[name],',
                '    the muP gradient\'s entry size, so eps stays as far below the gradient at every',
                '    width (TP5 App. B; Everett et al. 2024, arXiv 2407.05872)."""']
    else:
        out[-1] += '"""'
    out += ["    m = width / base_width",
            "    lr_exp = {"]
    own = r.owners or {}
    out += [f"        {name!r}: {float(e)!r},"
            + (f"  # {own[name].name}" if name in own and own[name].cls is not None else "")
            for name, e in lrs.items()]
    out += ["    }"]
    if scaled:
        out += ["    groups = {}",
                "    for name, p in model.named_parameters():",
                "        if not p.requires_grad or owner is not None and OWNER.get(name) != owner:",
                "            continue",
                "        e = lr_exp.get(name, 0.0)",
                "        ee = EPS_EXP.get(name, 0.0) if eps is not None else 0.0",
                "        g = groups.setdefault((e, ee), {'params': [], 'lr': lr * m ** e,",
                "                                        'weight_decay': weight_decay * m ** -e})",
                "        if eps is not None:",
                "            g['eps'] = eps * m ** ee",
                "        g['params'].append(p)",
                "    return list(groups.values())",
                "",
                "",
                "EPS_EXP = {  # Adam's eps ~ m ** e per parameter (ParamRule.eps_exp)"]
        out += [f"    {name!r}: {e!r}," for name, e in _eps_exps(r).items()]
        out += ["}"]
    else:
        out += ["    groups = {}",
                "    for name, p in model.named_parameters():",
                "        if not p.requires_grad or owner is not None and OWNER.get(name) != owner:",
                "            continue",
                "        e = lr_exp.get(name, 0.0)",
                "        g = groups.setdefault(e, {'params': [], 'lr': lr * m ** e,",
                "                                  'weight_decay': weight_decay * m ** -e})",
                "        g['params'].append(p)",
                "    return list(groups.values())",
                ""]
    out += _optimizer_section(r, eps_scaling)
    return "\n".join(out)
