"""Trace along depth: a factory (width, depth) exported at several depths, its residual branches
found in each graph, and every depth-dependent scalar's depth exponent.

A **residual branch** is an ``add`` whose one input is the stream x and whose other input derives
from x through at least one weight matrix: x + m g(x) (TP6, arXiv 2310.02244, eq. 1). Per branch:

* its **multiplier** m: the product of the scalar factors (``x * c``, ``x / c``, ``add``'s
  ``alpha``) on the chain of multiplications and views that ends at the add, read back from the
  add to the first other op (the branch's last weight op, usually);
* its **kind**: the module path of that last op with block indices starred
  (``blocks.*.attn.proj``), so the branches of every block of one kind are pooled;
* its **parameters** (read on the path from x to the add) and whether a normalisation op
  (LayerNorm, RMSNorm...) sits on that path (a pre-norm branch).

Across depths each kind gets depth exponents, fitted exactly as the width exponents are fitted
across widths (``exponents.exact_exponent``; the init RMS with ``noisy_exponent``): the
multiplier m ~ L^{mult_exp} (alpha = -mult_exp), the count of branches ~ L (it must grow), the
learning rate, eps and weight decay of the branch's weight matrices from the optimizer's param
groups, and their init RMS (a depth-scaled init, GPT-2 style, shows there).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..errors import TraceError
from ..exponents import exact_exponent, noisy_exponent
from ..validate import check_widths, positive_int
from .export import export_program
from .optimizers import geometry_of, optimizers_of
from .trace import example_args

#: ops that pass a value on unchanged up to shape (read through on the multiplier chain)
_VIEWS = {"view", "reshape", "_unsafe_view", "clone", "contiguous", "alias", "dropout",
          "expand", "squeeze", "unsqueeze", "permute", "transpose", "flatten"}


@dataclass(frozen=True)
class Branch:
    """One residual branch x + m g(x) of one exported graph (fx node names)."""

    add: str
    stream: str
    value: str  # the add's branch input (after the multiplier)
    source: str  # the op the multiplier chain starts from
    multiplier: float | None  # None: a one-element tensor on the chain (value not in the graph)
    kind: str
    params: tuple[str, ...]
    matrices: tuple[str, ...]  # the parameters with two or more dims (the weights)
    normalised: bool
    last: tuple[str, ...] = ()  # the weight matrices ``source`` reads (the branch's last weights)
    module: str = ""  # module path of ``source``
    hookable: bool = False  # ``source`` is that module's last op: its output (a hook can scale it)


@dataclass
class BranchKind:
    """A kind of branch across depths, and its depth exponents (``*_exp``: quantity ~ L^e)."""

    kind: str
    counts: dict[int, int]
    multipliers: dict[int, float]
    mult_exp: object  # SymPy Rational, or None (no power law / varies across blocks)
    normalised: bool
    weights_per_branch: int
    modules: dict = field(default_factory=dict)  # depth -> module paths of the branches' sources
    hookable: bool = False
    lr: dict[int, float] = field(default_factory=dict)
    lr_exp: object = None
    eps: dict[int, float] = field(default_factory=dict)
    eps_exp: object = None
    weight_decay: dict[int, float] = field(default_factory=dict)
    wd_exp: object = None
    init_rms: dict[int, float] = field(default_factory=dict)  # of the branches' last weights
    init_exp: object = None
    init_fit: float | None = None
    geometry: str | None = None  # "gradient" | "entrywise" | ...
    adam_like: bool | None = None
    optimizer: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class DepthTrace:
    """What ``trace_depth`` found: per depth the exported program and its branches, per kind the
    depth exponents."""

    width: int
    depths: tuple[int, ...]
    branches: dict[int, list[Branch]]
    kinds: dict[str, BranchKind]
    programs: dict = field(repr=False, default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _op(node) -> str:
    t = str(node.target)
    return t.split(".")[1] if t.startswith("aten.") else t.rsplit(".", 1)[-1]


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return list(stack.values())[-1][0].replace("L['self'].", "").replace("L__self___", "")


def _paths(node) -> list[str]:
    return [v[0].replace("L['self'].", "").replace("L__self___", "")
            for v in (node.meta.get("nn_module_stack") or {}).values()]


def star(path: str) -> str:
    """A module or parameter path with its block index (its first numeric part) starred:
    blocks.3.attn -> blocks.*.attn, blocks.3.1.weight -> blocks.*.1.weight."""
    parts = path.split(".")
    i = next((k for k, p in enumerate(parts) if p.isdigit()), None)
    return path if i is None else ".".join(parts[:i] + ["*"] + parts[i + 1:])


def _kind(node) -> str:
    path = _module_path(node)
    return star(path) if path else f"<{_op(node)}>"


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _numel(node) -> int | None:
    v = node.meta.get("val")
    return v.numel() if isinstance(v, torch.Tensor) else None


def _multiplier_chain(node, factor=1.0):
    """(first node that is not a scalar multiplication or a view, product of the factors, name
    of a one-element tensor factor on the chain or None). A tensor factor (a buffer, a learnable
    gate such as ReZero's) has no value in the graph: the multiplier is then unknown."""
    while node.op == "call_function":
        op = _op(node)
        tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
        nums = [_number(a) for a in node.args if _number(a) is not None]
        if op in ("mul", "div") and len(tensors) == 1 and len(nums) == 1:
            factor *= nums[0] if op == "mul" else 1.0 / nums[0]
        elif op in ("mul", "div") and len(tensors) == 2 and _numel(tensors[-1]) == 1:
            return node, factor, tensors[-1].name
        elif op == "mul" and len(tensors) == 2 and _numel(tensors[0]) == 1:
            return node, factor, tensors[0].name
        elif op in _VIEWS and tensors:
            pass
        else:
            break
        node = tensors[0]
    return node, factor, None


def _between(stream, value, index) -> set:
    """Nodes on some path from ``stream`` to ``value`` (both included); empty if none."""
    lo = index[stream]
    up, stack = set(), [value]
    while stack:  # ancestors of value after stream in graph order
        n = stack.pop()
        if n in up or index[n] < lo:
            continue
        up.add(n)
        stack.extend(n.all_input_nodes)
    if stream not in up:
        return set()
    region, stack = set(), [stream]
    while stack:  # ... that descend from stream
        n = stack.pop()
        if n in region or n not in up:
            continue
        region.add(n)
        stack.extend(n.users)
    return region


def find_branches(ep) -> list[Branch]:
    """The residual branches of an exported program, in graph order (module docstring)."""
    nodes = list(ep.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    param_of = dict(ep.graph_signature.inputs_to_parameters)
    last = {}  # module path -> index of its last op
    for n in nodes:
        for path in _paths(n):
            last[path] = index[n]
    out = []
    for n in nodes:
        if n.op != "call_function" or _op(n) != "add" or len(n.args) < 2:
            continue
        a, b = n.args[0], n.args[1]
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        for stream, value in ((a, b), (b, a)):
            region = _between(stream, value, index)
            if not region:
                continue
            region.discard(stream)  # its own inputs are not the branch's
            params = tuple(dict.fromkeys(
                param_of[i.name] for r in region for i in r.all_input_nodes if i.name in param_of))
            shapes = {param_of[i.name]: tuple(i.meta["val"].shape) for r in region
                      for i in r.all_input_nodes if i.name in param_of and "val" in i.meta}
            matrices = tuple(p for p in params if len(shapes.get(p, ())) >= 2)
            if not matrices:
                continue
            alpha = _number(n.kwargs.get("alpha", 1.0)) or 1.0
            source, m, tensor_factor = _multiplier_chain(value, alpha)
            normalised = any("norm" in _op(r) for r in region if r.op == "call_function")
            module = _module_path(source)
            last_weights = tuple(param_of[i.name] for i in source.all_input_nodes
                                 if i.name in param_of and param_of[i.name] in matrices)
            if tensor_factor is not None:
                source = value  # the branch's own ops, for its kind
                while source.op == "call_function" and _op(source) in _VIEWS | {"mul", "div"}:
                    ins = [a for a in source.args if isinstance(a, torch.fx.Node)]
                    source = max(ins, key=lambda a: _numel(a) or 0)
            out.append(Branch(add=n.name, stream=stream.name, value=value.name, source=source.name,
                              multiplier=None if tensor_factor else m, kind=_kind(source),
                              params=params, matrices=matrices,
                              normalised=normalised, last=last_weights, module=module,
                              hookable=bool(module) and last.get(module) == index[source]))
            break
    return out


def check_depths(depths) -> list[int]:
    """Sorted distinct positive int depths, at least two (``validate.check_widths``'s rules:
    no strings, bools, fractional or repeated values)."""
    return check_widths(depths, error=TraceError, what="depths", why="to fit depth exponents")


def check_factory(factory) -> None:
    """A depth factory takes (width, depth)."""
    if not callable(factory) or isinstance(factory, nn.Module):
        raise TraceError("factory must be a callable (width, depth) -> nn.Module.")
    try:
        inspect.signature(factory).bind(1, 1)
    except TypeError:
        raise TraceError(
            "depth analysis needs a factory taking (width, depth), e.g. "
            "`lambda n, L: MyModel(hidden=n, n_layers=L)`; this one does not accept two "
            "arguments.") from None
    except ValueError:  # no signature (a builtin): try it
        pass


def build(factory, width, depth, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    try:
        model = factory(width, depth)
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(f"factory({width}, {depth}) raised {type(e).__name__}: {e}. The factory "
                         "must build the model at every depth in the list.") from e
    if not isinstance(model, nn.Module):
        raise TraceError(f"factory({width}, {depth}) returned {type(model).__name__}, not an "
                         "nn.Module.")
    return model


def export_at(factory, width, depth, example_inputs, seed=0):
    """(model, exported program, its branches) at one (width, depth)."""
    model = build(factory, width, depth, seed)
    args, kwargs = example_args(example_inputs, model, width, "cpu")
    ep, _ = export_program(model, args, kwargs, width)
    return model, ep, find_branches(ep)


def _groups_by_param(model, make_optimizer, depth):
    try:
        made = make_optimizer(model)
    except Exception as e:
        raise TraceError(
            f"make_optimizer(model) raised {type(e).__name__}: {e} (depth {depth}).") from e
    found = {}
    for opt in optimizers_of(made):
        geometry = geometry_of(opt)
        for group in opt.param_groups:
            for q in group["params"]:
                found[id(q)] = (opt, group, geometry)
    return {name: found.get(id(q)) for name, q in model.named_parameters()}


def _one_value(values, what, kind, depth, notes):
    vals = sorted(set(values))
    if len(vals) > 1:
        notes.append(f"{kind}: the {what} differs between its branches at depth {depth} "
                     f"({vals[:4]}); its depth exponent is read from the largest")
    return vals[-1] if vals else None


def _fit(depths, values, rtol=1e-4):
    if len(values) != len(depths) or any(v is None for v in values):
        return None
    if all(v == 0 for v in values):
        return "zero"
    return exact_exponent(depths, values, rtol=rtol)


def trace_depth(factory: Callable[[int, int], nn.Module], depths: Sequence[int] = (2, 4, 8), *,
                width: int = 64, example_inputs=None, make_optimizer=None,
                seed: int = 0) -> DepthTrace:
    """Export ``factory(width, L)`` at each depth L, find its residual branches and fit the depth
    exponent of every branch kind's multiplier, count, learning rate, eps, weight decay and init
    RMS (module docstring). Raises ``TraceError`` when the branch count does not grow with the
    depth (the factory ignores it)."""
    check_factory(factory)
    depths = check_depths(depths)
    width = positive_int(width, "width", TraceError, "the width every depth is built at")
    branches, programs, per_depth = {}, {}, {}
    for d in depths:
        model, ep, found = export_at(factory, width, d, example_inputs, seed)
        branches[d], programs[d] = found, ep
        groups = _groups_by_param(model, make_optimizer, d) if make_optimizer else {}
        params = dict(model.named_parameters())
        per_depth[d] = (groups, params)
    trace = DepthTrace(width=width, depths=tuple(depths), branches=branches, kinds={},
                       programs=programs)
    if not any(branches.values()):
        return trace
    counts = [len(branches[d]) for d in depths]
    if len(set(counts)) == 1:
        raise TraceError(
            f"the model has {counts[0]} residual branches at every depth {list(depths)}: "
            "factory(width, depth) does not use its depth argument. Make it build `depth` "
            "blocks (e.g. `lambda n, L: MyModel(hidden=n, n_layers=L)`).")
    names = list(dict.fromkeys(b.kind for d in depths for b in branches[d]))
    for name in names:
        notes: list[str] = []
        mine = {d: [b for b in branches[d] if b.kind == name] for d in depths}
        if any(not mine[d] for d in depths):
            trace.warnings.append(f"branch kind {name} is missing at some depths "
                                  f"({ {d: len(mine[d]) for d in depths} }); not fitted")
            continue
        mults = {}
        tensor = any(b.multiplier is None for d in depths for b in mine[d])
        if tensor:
            notes.append("its multiplier is a one-element tensor (a buffer or a learnable gate): "
                         "its value is not in the graph, so its depth exponent is undetermined; "
                         "make it a Python float to have it read")
        for d in ([] if tensor else depths):
            ms = [b.multiplier for b in mine[d]]
            if max(ms) - min(ms) > 1e-6 * max(abs(x) for x in ms):
                notes.append(f"the multiplier varies across the blocks at depth {d} "
                             f"({ms[:4]}...): a per-layer schedule, not one L^-alpha")
            mults[d] = ms[0]
        varies = tensor or any("varies" in s for s in notes)
        k = BranchKind(kind=name, counts={d: len(mine[d]) for d in depths}, multipliers=mults,
                       mult_exp=None if varies else exact_exponent(depths, list(mults.values())),
                       normalised=all(b.normalised for d in depths for b in mine[d]),
                       weights_per_branch=len(mine[depths[0]][0].matrices), notes=notes,
                       modules={d: [b.module for b in mine[d]] for d in depths},
                       hookable=all(b.hookable for d in depths for b in mine[d]))
        if k.mult_exp is None and not varies:
            notes.append(f"the multiplier follows no power law of the depth: {mults}")
        rms = {}
        for d in depths:
            groups, params = per_depth[d]
            mats = [p for b in mine[d] for p in b.matrices]
            lasts = [p for b in mine[d] for p in (b.last or b.matrices)]
            ws = torch.cat([params[p].detach().reshape(-1).float() for p in lasts])
            rms[d] = float(ws.pow(2).mean().sqrt())
            if not groups:
                continue
            found = [groups.get(p) for p in mats]
            if any(f is None for f in found):
                continue
            opt, _, geometry = found[0]
            k.geometry, k.adam_like = geometry.name, geometry.adam_like
            k.optimizer = type(opt).__name__
            k.lr[d] = _one_value([float(f[1]["lr"]) for f in found], "learning rate", name, d,
                                 notes)
            eps = [f[1].get("eps") for f in found]
            if all(_number(e) is not None for e in eps):
                k.eps[d] = _one_value([float(e) for e in eps], "eps", name, d, notes)
            k.weight_decay[d] = _one_value([float(f[1].get("weight_decay", 0) or 0) for f in found],
                                           "weight decay", name, d, notes)
        k.init_rms = rms
        if all(v > 0 for v in rms.values()):
            k.init_exp, k.init_fit = noisy_exponent(depths, list(rms.values()))
        k.lr_exp = _fit(depths, [k.lr.get(d) for d in depths])
        k.eps_exp = _fit(depths, [k.eps.get(d) for d in depths])
        k.wd_exp = _fit(depths, [k.weight_decay.get(d) for d in depths])
        count_exp = exact_exponent(depths, list(k.counts.values()))
        if count_exp != 1:
            notes.append(f"its count {k.counts} does not grow like L: the depth argument is "
                         "not the number of these blocks")
        trace.kinds[name] = k
    return trace


def branch_count_at(factory, widths, depth, example_inputs, seed=0) -> dict[int, int]:
    """Residual branches at each width, at one depth (they must not change with the width)."""
    return {w: len(export_at(factory, w, depth, example_inputs, seed)[2]) for w in widths}


def stream_nodes(branches: list[Branch]) -> list[str]:
    """The residual stream after each branch, in order (the add outputs)."""
    return [b.add for b in branches]


