"""Parameter records read from real instances: init scales (pooled over seeds) and the
optimizer's learning rates and weight decays, with their width exponents (TP4's b and c).

Sign convention: ``init_exp`` = -b (RMS ~ n^init_exp), ``lr_exp`` = -c.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn as nn

from ..errors import TraceError
from ..exponents import exact_exponent, noisy_exponent
from .optimizers import HYPER, Step, decoupled, geometry_of, optimizers_of
from .widthgraph import WidthGraph

#: Pooled init values wanted per width for a weight and for a width-sized vector: the RMS of N
#: iid values has relative error ~ 1/sqrt(2N), so the fitted slope over widths 64..256 has a
#: standard error ~ 0.01 at N = 4096 and ~ 0.03 at N = 512 (enough to snap to quarters).
INIT_VALUES = (4096, 512)


def get_param(model, name):
    try:
        return model.get_parameter(name)
    except AttributeError:
        return dict(model.named_parameters(remove_duplicate=False))[name]


def finite(t: torch.Tensor) -> bool:
    """No NaN / inf: one reduction (NaN and inf propagate into the sum); exact check on doubt."""
    t = t.detach()
    return math.isfinite(float(t.sum(dtype=acc_dtype(t)))) or bool(torch.isfinite(t).all())


def acc_dtype(t: torch.Tensor):
    """Accumulation dtype for reductions: float32 for half types (no overflow), else native."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None


def _zero_blocks(t: torch.Tensor) -> dict:
    """{dim: (k, zero block indices)} where splitting ``dim`` into k equal blocks (k = 2, 3, 4)
    finds some blocks exactly zero and others not: a fused weight whose slices are initialised
    differently (GPT-2's c_attn with a zero-initialised query)."""
    out = {}
    if t.dim() < 2 or t.is_meta or t.numel() == 0 or float(t.abs().min()) != 0:
        return out  # no exact zero at all: the common case, one pass
    for d in range(t.dim()):
        peak = t.abs().amax(dim=[i for i in range(t.dim()) if i != d])  # per index of dim d
        for k in (3, 2, 4):
            if t.shape[d] % k or t.shape[d] < 2 * k:
                continue
            nonzero = [bool(b.any()) for b in peak.chunk(k)]
            if any(nonzero) and not all(nonzero):
                out[d] = (k, [i for i, nz in enumerate(nonzero) if not nz])
                break
    return out


def measure_init(graph: WidthGraph, init_models: dict[int, list[nn.Module]]):
    """Init RMS of every parameter at each width (pooled over seeds), and its width exponent."""
    ws = sorted(init_models)
    for name, p in graph.params.items():
        counts = {}
        # instances this parameter needs: INIT_VALUES pooled values for a matrix / a vector
        numel = max(1, math.prod(p.shapes[graph.widths[0]]))
        target = INIT_VALUES[len(p.dims or ()) < 2]
        k = max(1, math.ceil(target / numel))
        for w in ws:
            sq, mean, count = 0.0, 0.0, 0
            for m in init_models[w][:k]:
                try:
                    t = get_param(m, name).detach()
                except (AttributeError, KeyError):
                    raise TraceError(
                        f"parameter {name!r} of the traced model is missing from the real model "
                        f"built at init width {w}; init_widths must build the same architecture.")
                total = float(t.sum(dtype=acc_dtype(t)))
                if not math.isfinite(total) and not finite(t):
                    raise TraceError(
                        f"parameter {name!r} has NaN or inf values right after factory({w}): its "
                        "initialisation is broken. Fix the init of that parameter.")
                if w == ws[-1] and m is init_models[w][0]:
                    p.zero_blocks = _zero_blocks(t)
                sq += float(torch.linalg.vector_norm(t, dtype=acc_dtype(t))) ** 2
                mean += total
                count += t.numel()
            counts[w] = count
            p.init_rms[w] = math.sqrt(sq / max(count, 1))
            p.init_mean[w] = mean / max(count, 1)
        rms = [p.init_rms[w] for w in ws]
        if all(r == 0 for r in rms):
            p.init_exp, p.init_fit = "zero", None
        elif any(r == 0 for r in rms):
            p.init_exp, p.init_fit = None, None
            graph.warnings.append(f"parameter {name!r} is zero at some widths but not others.")
        else:
            # standard error of the fitted slope for iid entries: the RMS of N values has a
            # relative error ~ 1/sqrt(2N); too noisy for quarters -> snap to halves
            n_min = min(counts.values())
            se = math.sqrt(1 / (2 * max(n_min, 1))) * math.sqrt(2) / math.log(ws[-1] / ws[0])
            step = Fraction(1, 4) if se < 0.05 else Fraction(1, 2)
            p.init_exp, p.init_fit = noisy_exponent(ws, rms, step)
            if abs(p.init_fit - float(p.init_exp)) > 0.1:
                graph.warnings.append(
                    f"init scale of {name!r} fits n^{p.init_fit:.2f}, snapped to n^{p.init_exp}; "
                    "the fit is noisy (small tensor?) — use more widths or init_seeds.")


def read_optimizer(graph: WidthGraph, models, make_optimizer):
    """Per-parameter learning rate, weight decay and update geometry at every width, and their
    exponents. ``make_optimizer`` may return several optimizers (Muon + AdamW): every trainable
    parameter must be in exactly one."""
    for w, model in models.items():
        try:
            made = make_optimizer(model)
        except Exception as e:
            raise TraceError(f"make_optimizer(model) raised {type(e).__name__}: {e} (width {w}).") from e
        opts = optimizers_of(made)
        graph.optimizer = "+".join(dict.fromkeys(type(o).__name__ for o in opts))
        by_id, twice = {}, []
        for opt in opts:
            geometry = geometry_of(opt)
            for group in opt.param_groups:
                for q in group["params"]:
                    if id(q) in by_id:
                        twice.append(q)
                    by_id[id(q)] = (opt, group, geometry)
        names = {id(q): n for n, q in model.named_parameters()}
        if twice:
            raise TraceError(
                f"parameter {names.get(id(twice[0]), '?')!r} is in more than one optimizer (or "
                "group): each parameter must be stepped by exactly one. Split the parameters "
                "between the optimizers.")
        missing = []
        for name, q in model.named_parameters():
            if name not in graph.params:
                continue
            found = by_id.get(id(q))
            if found is None:
                if q.requires_grad:
                    missing.append(name)
                continue
            opt, group, geometry = found
            lr = group.get("lr")
            rec = graph.params[name]
            rec.lr[w] = float(lr.item() if isinstance(lr, torch.Tensor) else lr)
            rec.weight_decay[w] = float(group.get("weight_decay", 0.0) or 0.0)
            eps = group.get("eps")
            if isinstance(eps, (int, float)) and not isinstance(eps, bool):
                rec.eps[w] = float(eps)  # a tuple (Adafactor's (eps1, eps2)) is not Adam's eps
            rec.step = Step(geometry.name, type(opt).__name__,
                            {k: group[k] for k in HYPER if k in group}, decoupled(opt, group))
        if missing:
            raise TraceError(
                f"the optimizer from make_optimizer leaves {len(missing)} trainable parameters out "
                f"of its param groups (e.g. {missing[:3]}): they would never train. Put every "
                "parameter in a group, or set requires_grad=False on the ones meant to be frozen.")
    ws = sorted(models)
    for name, p in graph.params.items():
        if len(p.lr) != len(ws):
            continue
        lrs = [p.lr[w] for w in ws]
        p.lr_exp = "zero" if all(v == 0 for v in lrs) else exact_exponent(ws, lrs, rtol=1e-4)
        if p.lr_exp is None:
            graph.warnings.append(f"the learning rate of {name!r} follows no power law of the width: {lrs}")
        wds = [p.weight_decay[w] for w in ws]
        p.wd_exp = "zero" if all(v == 0 for v in wds) else exact_exponent(ws, wds, rtol=1e-4)
        if len(p.eps) == len(ws):
            epss = [p.eps[w] for w in ws]
            p.eps_exp = "zero" if all(v == 0 for v in epss) else exact_exponent(ws, epss, rtol=1e-4)


def measure_gradients(graph: WidthGraph, model, args, kwargs, width: int) -> None:
    """``grad_rms[width]``: the RMS entry of the loss gradient of every trainable parameter that
    an Adam-family optimizer steps with a nonzero eps, from one backward pass of ``model`` in
    eval mode (no running statistics move) under a Theta(1) proxy loss, 0.5 mean((y - t)^2) on
    the first output with fixed N(0, 1) targets t (``check``'s default loss; TP4's loss is a
    Theta(1) function of the output). Adam's eps acts where it is comparable to |g|; analyze's
    eps note compares the two. A model whose output gives no such loss is skipped (no note)."""
    import torch.utils._pytree as pytree

    want = {p.name: p for p in graph.params.values()
            if p.trainable and p.step is not None and p.step.geometry == "entrywise"
            and any(p.eps.values())}
    named = dict(model.named_parameters())
    if not want or any(q.is_meta for q in named.values()):
        return
    was_training = model.training
    model.eval()
    try:
        for q in named.values():
            q.grad = None
        leaves = [x for x in pytree.tree_leaves(model(*args, **kwargs))
                  if isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad]
        if not leaves:
            return
        y = leaves[0]
        gen = torch.Generator(device="cpu").manual_seed(1234)
        target = torch.randn(tuple(y.shape), generator=gen).to(device=y.device, dtype=y.dtype)
        (y.reshape(()) if y.numel() == 1 else 0.5 * ((y - target) ** 2).mean()).backward()
        for name, p in want.items():
            g = named[name].grad if name in named else None
            if g is not None and finite(g):
                p.grad_rms[width] = float(g.detach().float().pow(2).mean().sqrt())
    except Exception:  # any failure only costs the note its crossover width
        return
    finally:
        for q in named.values():
            q.grad = None
        model.train(was_training)

