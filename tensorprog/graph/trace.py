"""Trace a model at several widths into one width-annotated graph.

``trace(factory, widths)`` builds ``factory(n)`` for each width n, exports each with torch.export
(ATen level, non-strict first, strict as a fallback), checks that the graphs have the same
structure, and writes onto one networkx graph:

* every node: its op, module path, shape at each width, and the width exponent alpha of each
  dimension (size ~ n^alpha, an exact SymPy Rational, ``None`` for a dimension that follows no
  power law);
* every width-dependent scalar folded into an op (``x * (1/width_mult)``, the ``scale`` of
  scaled_dot_product_attention, ``x / sqrt(d)``): its exponent. These are the multipliers of the
  abc-parametrization (TP4 §2: W = n^{-a} w);
* every parameter (``WidthGraph.params``): how the graph uses it (fan-in and fan-out dims read
  from the consuming op, not from the module type), its role (input / hidden / output / vector /
  scalar, TP5 Table 3 and App B), init RMS exponent (-b), multiplier exponent (-a) and, given an
  optimizer factory, learning-rate exponent (-c) and weight-decay exponent.

Sign convention everywhere: an ``*_exp`` is the exponent e of the quantity ~ n^e, so the abc of
TP4 are a = -mult_exp, b = -init_exp, c = -lr_exp.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Callable, Sequence

import networkx as nx
import sympy as sp
import torch
import torch.nn as nn

from ..errors import TraceError
from ..exponents import exact_exponent
from ..validate import check_widths as validate_widths
from ..rng import preserves_rng
from ..ops import lookup
from .hop import expand as expand_hops, hop_name, is_hop
from .export import eager_forward, export_program  # noqa: F401 - re-exported (measure/runner.py)
from .params import (INIT_VALUES, finite, get_param, measure_gradients, measure_init,
                     read_optimizer)
from .uses import attach_uses
from .widthgraph import ParamInfo, WidthGraph, short_op

# ----------------------------------------------------------------------------- tracing




@preserves_rng
def trace(
    factory: Callable[[int], nn.Module],
    widths: Sequence[int] = (64, 128, 256),
    *,
    example_inputs=None,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    device: str = "cpu",
    init_widths: Sequence[int] | None = None,
    init_seeds: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> WidthGraph:
    """Trace ``factory(n)`` at each width into one width-annotated ``WidthGraph``.

    factory: width -> nn.Module. example_inputs: a tuple of tensors (or a dict of keyword
    inputs), or a callable width -> tuple; if None, ``model.example_inputs()`` is used when the
    model defines it. make_optimizer: model -> torch.optim.Optimizer, read for learning-rate and
    weight-decay exponents. device="meta" traces without allocating weights; init scales then
    come from real CPU instances at ``init_widths`` (default: the widths scaled down to <= 512).
    init_seeds: instances per width whose weights are pooled for the init fit; default: enough
    for ``INIT_VALUES`` values of the smallest weight matrix and vector, at most 16,
    within ~5e6 values per width (each parameter pools only the instances it needs); noisier
    fits snap their exponent to halves.
    """
    widths = check_widths(widths)
    if not callable(factory) or isinstance(factory, nn.Module):
        what = " (a model instance, not a factory)" if isinstance(factory, nn.Module) else ""
        raise TraceError(
            f"factory must be a callable width -> nn.Module, got {type(factory).__name__}{what}. "
            "Pass a function, e.g. `lambda n: MyModel(hidden=n)`.")
    say = progress_printer(progress)

    models, programs, modes, inputs = {}, {}, (False, True), {}
    for w in widths:
        say(f"building and exporting width {w}")
        model = _build(factory, w, device, seed)
        args, kwargs = example_args(example_inputs, model, w, device)
        if w == widths[0] and device != "meta":
            eager_forward(model, args, kwargs, w)
        models[w], inputs[w] = model, (args, kwargs)
        programs[w], strict = export_program(model, args, kwargs, w, modes)
        modes = (strict,)  # the mode that worked at the first width serves the others
    aligned = _align(programs, widths)
    g, order, params = _annotate(programs, models, aligned, widths)
    graph = WidthGraph(nx=g, params=params, widths=tuple(widths), order=order, programs=programs)
    if getattr(programs[widths[0]], "specialised", False):
        graph.warnings.append(programs[widths[0]].note)
    _check_width_matters(graph)
    for n in graph.unknown_power_laws():
        a = graph.node(n)
        bad = [d for d, e in enumerate(a["dims"]) if e is None]
        sizes = {w: [a["shapes"][w][d] for d in bad] for w in widths}
        if a.get("unbacked"):
            graph.warnings.append(
                f"node {n} ({a['op']} in `{a['module'] or '<top>'}`): dim {bad} has a data-dependent "
                "size (x[mask], nonzero, unique...): its exponent is unknown; an op where it meets "
                "a width-sized dim is reported undetermined.")
            continue
        graph.warnings.append(
            f"node {n} ({a['op']} in `{a['module'] or '<top>'}`): dim {bad} follows no power law "
            f"of the width (sizes {sizes}); its exponent is unknown and taken as 0.")

    say("measuring initial weight scales")
    if init_seeds is None:
        # Precision matters most for weights (their init exponent is compared exactly), less
        # for width-sized biases and gains (compared against a bound), not at all for scalars.
        sizes = [math.prod(p.shapes[widths[0]]) for p in params.values()] or [1]
        wide = [p for p in params.values() if any(d is None or d > 0 for d in p.dims or ())]
        weights = [math.prod(p.shapes[widths[0]]) for p in wide if len(p.shapes[widths[0]]) >= 2]
        vectors = [math.prod(p.shapes[widths[0]]) for p in wide]
        need = max(math.ceil(INIT_VALUES[0] / min(weights)) if weights else 1,
                   math.ceil(INIT_VALUES[1] / min(vectors)) if vectors else 1)
        init_seeds = max(1, min(16, need, int(5e6 // max(sum(sizes), 1))))
    if device == "meta":
        iw = check_widths(init_widths, "init_widths") if init_widths is not None else _small_widths(widths)
        init_models = {w: [_build(factory, w, "cpu", seed + s, check_finite=s == 0)
                           for s in range(init_seeds)] for w in iw}
        m0 = init_models[iw[0]][0]
        eager_forward(m0, *example_args(example_inputs, m0, iw[0], "cpu"), iw[0])
    else:
        iw = widths
        init_models = {w: [models[w]] + [_build(factory, w, "cpu", seed + s, check_finite=False)
                                          for s in range(1, init_seeds)] for w in iw}
    measure_init(graph, init_models)
    for w in list(init_models):
        del init_models[w]

    if make_optimizer is not None:
        say("reading learning rates from the optimizer")
        read_optimizer(graph, models, make_optimizer)
        top = max(widths)
        measure_gradients(graph, models[top], *inputs[top], top)
    attach_uses(graph)
    for p in graph.params.values():  # the parameter record on its placeholder nodes, too
        for node in p.nodes:
            graph.nx.nodes[node].update(
                role=p.role, fan_in=p.fan_in, fan_out=p.fan_out, fan_in_exp=p.fan_in_exp,
                fan_out_exp=p.fan_out_exp, init_exp=p.init_exp, mult_exp=p.mult_exp,
                lr_exp=p.lr_exp, wd_exp=p.wd_exp, trainable=p.trainable)
    return graph


def progress_printer(enabled):
    import sys

    def say(msg):
        if enabled:
            print(f"[tensorprog] {msg}", file=sys.stderr, flush=True)
    return say


def check_widths(widths, what: str = "widths") -> list[int]:
    """``validate.check_widths`` reported as a TraceError."""
    return validate_widths(widths, error=TraceError, what=what)


def _small_widths(widths):
    k = max(0, math.ceil(math.log2(max(widths) / 512)))
    ws = [w // 2**k for w in widths]
    if len(set(ws)) < 2 or min(ws) < 1:
        return widths
    return ws


def _build(factory, width, device, seed, check_finite=True):
    torch.manual_seed(seed)
    ctx = torch.device(device) if device not in (None, "cpu") else contextlib.nullcontext()
    try:
        with ctx:
            model = factory(width)
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(
            f"factory({width}) raised {type(e).__name__}: {e}. The factory must build the model "
            f"for any width in the list; check that width {width} is valid for it (e.g. "
            "divisible by the head count).") from e
    if not isinstance(model, nn.Module):
        raise TraceError(
            f"factory({width}) returned {type(model).__name__}, not an nn.Module. Return the model "
            "itself (not a tuple or a config).")
    if device != "meta" and check_finite:
        for name, p in model.named_parameters():
            if not finite(p):
                raise TraceError(
                    f"parameter {name!r} has NaN or inf values right after factory({width}): its "
                    "initialisation is broken (e.g. a std computed as 0/0 or sqrt of a negative). "
                    "Fix the init of that parameter.")
    return model


def example_args(example_inputs, model, width, device):
    ex = example_inputs
    from_model = False
    if ex is None:
        if hasattr(model, "example_inputs") and callable(model.example_inputs):
            ex, from_model = model.example_inputs, True
        else:
            raise TraceError(
                "no example_inputs: pass example_inputs=(tensor, ...) or a callable width -> tuple "
                "(the inputs torch.export runs the model on), or give the model an "
                "example_inputs() method.")
    if callable(ex) and not isinstance(ex, (tuple, list, dict, torch.Tensor)):
        try:
            ex = ex() if from_model else ex(width)
        except Exception as e:
            raise TraceError(f"example_inputs({width}) raised {type(e).__name__}: {e}.") from e
    if isinstance(ex, torch.Tensor):
        ex = (ex,)
    kwargs = {}
    if isinstance(ex, dict):
        ex, kwargs = (), dict(ex)
    if not isinstance(ex, (tuple, list)):
        raise TraceError(f"example_inputs must be a tuple of tensors or a dict, got {type(ex).__name__}.")
    move = (lambda t: t.to(device) if isinstance(t, torch.Tensor) else t)
    return tuple(move(t) for t in ex), {k: move(v) for k, v in kwargs.items()}


def _align(programs, widths):
    """Node lists of every width, position by position; raise at the first structural mismatch."""
    lists = {w: list(programs[w].graph.nodes) for w in widths}
    w0 = widths[0]
    for w in widths[1:]:
        a, b = lists[w0], lists[w]
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else None
            y = b[i] if i < len(b) else None
            if x is None or y is None or (x.op, str(x.target)) != (y.op, str(y.target)):
                if getattr(programs[w0], "specialised", False):
                    raise TraceError(
                        f"{programs[w0].note}, and the traces at width {w0} and width {w} take "
                        f"different branches (node {i}: {_describe(x)} vs {_describe(y)}): e.g. "
                        "an expert that gets no token at one width. Give example inputs that "
                        "take the same branches at every width (more tokens).")
                raise TraceError(
                    f"the traced graph differs between width {w0} and width {w} at node {i}: "
                    f"{_describe(x)} vs {_describe(y)}. The model's structure must not depend on "
                    "the width (e.g. a Python loop over heads whose count grows with width, or a "
                    "block count that grows with it); write it with tensor ops over a head "
                    "dimension, or keep the looped count fixed (scale depth on its own: a factory "
                    "(width, depth) and tensorprog.analyze_depth).")
    return [tuple(lists[w][i] for w in widths) for i in range(len(lists[w0]))]


def _describe(node) -> str:
    if node is None:
        return "the end of the graph"
    return f"`{short_op(node.target)}` in module `{_module_path(node) or '<top>'}`"


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "")


def _custom_functions() -> dict[str, list[tuple[int, int, str]]]:
    """file -> [(first line, last line, name)] of the forward of every user-defined
    torch.autograd.Function: export inlines their forward and drops their backward."""
    out: dict[str, list] = {}
    stack = list(torch.autograd.Function.__subclasses__())
    seen = set()
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        if (cls.__module__ or "").startswith("torch"):
            continue
        fwd = cls.__dict__.get("forward")
        code = getattr(getattr(fwd, "__func__", fwd), "__code__", None)
        if code is None:
            continue
        lines = [ln for _, _, ln in code.co_lines() if ln is not None] or [code.co_firstlineno]
        out.setdefault(code.co_filename, []).append((code.co_firstlineno, max(lines), cls.__qualname__))
    return out


def _custom_function(node, custom) -> str | None:
    """Name of the custom autograd.Function whose forward emitted the node, if any."""
    if not custom:
        return None
    for m in re.finditer(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or ""):
        for lo, hi, name in custom.get(m.group(1), ()):
            if lo <= int(m.group(2)) <= hi:
                return name
    return None


def _source_line(node) -> str:
    """'file.py:42' of the user code that emitted the node (from export's stack trace)."""
    lines = [ln.strip() for ln in (node.meta.get("stack_trace") or "").splitlines()
             if ln.strip().startswith("File ")]
    if not lines:
        return ""
    m = re.match(r'File "([^"]+)", line (\d+)', lines[-1])
    return f"{m.group(1).rsplit('/', 1)[-1]}:{m.group(2)}" if m else ""


def _val_shape(node):
    """The node's shape; None for a data-dependent (unbacked) size."""
    v = node.meta.get("val")
    if isinstance(v, torch.Tensor):
        return tuple(_size(s) for s in v.shape)
    return None


def _size(s):
    if isinstance(s, int):
        return s
    known = getattr(getattr(s, "node", None), "maybe_as_int", lambda: None)()
    return int(known) if known is not None else None


def _annotate(programs, models, aligned, widths):
    """networkx graph with shapes, dim exponents and scalars on every node."""
    w0 = widths[0]
    sig = programs[w0].graph_signature
    param_of = dict(sig.inputs_to_parameters)
    buffer_of = dict(sig.inputs_to_buffers)
    const_of = dict(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
    user_inputs = list(sig.user_inputs)

    g = nx.MultiDiGraph()
    order, params = [], {}
    custom = _custom_functions()
    items, name_of = expand_hops(aligned, programs, widths)  # (width, fx node) -> name
    for it in items:
        nodes, name = it.nodes, it.name
        n0 = nodes[0]
        shapes = {w: _val_shape(n) for w, n in zip(widths, nodes)}
        dims = _dim_exponents(widths, shapes)
        attrs = dict(kind=n0.op, target=str(n0.target), op=short_op(n0.target) if n0.op ==
                     "call_function" else n0.op, module=_module_path(n0), shapes=shapes, dims=dims,
                     scalars={}, param=None, buffer=None, input=None, hop=it.hop,
                     args=_plain_args(nodes[-1].args, widths[-1], name_of),
                     kwargs=_plain_args(dict(nodes[-1].kwargs), widths[-1], name_of))
        if any(s is not None and None in s for s in shapes.values()):
            attrs["unbacked"] = True  # a data-dependent size (x[mask], nonzero): exponent unknown
        if it.op is not None:  # the output of an inlined higher-order op (see graph/hop.py)
            attrs.update(kind="call_function", op=it.op, target=it.op, tags=(), kwargs={},
                         source=_source_line(n0), custom_backward=None,
                         args=tuple("%" + name_of[(w0, s)] for s, _ in it.inputs))
        elif it.kind is not None:
            attrs.update(kind=it.kind, op=hop_name(n0.target))
        elif n0.op == "placeholder":
            if name in param_of:
                attrs["param"] = param_of[name]
            elif name in buffer_of:
                attrs["buffer"] = buffer_of[name]
                attrs["scalars"] = _buffer_scalar(models, widths, buffer_of[name])
            elif name in const_of:
                attrs["buffer"] = const_of[name]
                attrs["scalars"] = _const_scalar(programs, widths, const_of[name])
            elif name in user_inputs:
                attrs["input"] = user_inputs.index(name)
        elif n0.op == "call_function":
            attrs["tags"] = tuple(t.name for t in getattr(n0.target, "tags", ()))
            attrs["source"] = _source_line(n0)
            attrs["custom_backward"] = _custom_function(n0, custom)
            attrs["scalars"] = _scalars(attrs, nodes, widths)
            if is_hop(n0):  # not inlined: one opaque call
                attrs["higher_order"] = hop_name(n0.target)
        g.add_node(name, **attrs)
        order.append(name)
        inputs = it.inputs if it.inputs is not None else [] if it.kind else _tensor_inputs(n0)
        for k, inp in enumerate(inputs):
            src, pos = inp
            g.add_edge(name_of[(w0, src)], name, pos=pos, order=k)

    canonical = _tied_names(models[widths[-1]])
    for name in order:
        a = g.nodes[name]
        if a["param"] is None:
            continue
        pname = canonical.get(a["param"], a["param"])
        a["param"] = pname
        if pname in params:
            params[pname].nodes.append(name)
            continue
        p = {w: get_param(models[w], pname) for w in widths}
        params[pname] = ParamInfo(
            name=pname, node=name, shapes={w: tuple(p[w].shape) for w in widths}, dims=a["dims"],
            trainable=bool(p[widths[-1]].requires_grad), nodes=[name],
            aliases=[k for k, v in canonical.items() if v == pname and k != pname])
    return g, order, params


def _tied_names(model) -> dict[str, str]:
    """Every parameter name -> the first name of the same tensor (as model.named_parameters())."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


def _plain_args(x, w, name_of):
    """Op arguments at width ``w`` with graph nodes replaced by '%name' references."""
    if isinstance(x, torch.fx.Node):
        return "%" + name_of.get((w, x), x.name)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain_args(y, w, name_of) for y in x)
    if isinstance(x, dict):
        return {k: _plain_args(v, w, name_of) for k, v in x.items()}
    if isinstance(x, (int, float, bool, str)) or x is None:
        return x
    return str(x)


def _tensor_inputs(node):
    """(fx input node, position label) for every node argument, nested lists included."""
    out = []

    def walk(x, pos):
        if isinstance(x, torch.fx.Node):
            out.append((x, pos))
        elif isinstance(x, (list, tuple)):
            for j, y in enumerate(x):
                walk(y, f"{pos}.{j}")
    for i, a in enumerate(node.args):
        walk(a, str(i))
    for k, a in node.kwargs.items():
        walk(a, k)
    return out


def _dim_exponents(widths, shapes):
    s0 = shapes[widths[0]]
    if s0 is None or any(shapes[w] is None or len(shapes[w]) != len(s0) for w in widths):
        return None
    return tuple(None if any(shapes[w][d] is None for w in widths)
                 else exact_exponent(widths, [shapes[w][d] for w in widths]) if s0[d]
                 else sp.Integer(0) for d in range(len(s0)))


def _scalars(attrs, nodes, widths):
    """Numeric arguments of an op that are multipliers or change with width.

    Returns {position: {"values": [...], "exp": Rational | None}}. For arithmetic ops every
    numeric argument counts (``x * 0.125``); for scaled_dot_product_attention the ``scale``
    argument (position 6; ``None`` means the default 1/sqrt(d_head), resolved by the engine);
    for other ops only float arguments whose value changes with width (reported as
    width-dependent constants).
    """
    out = {}
    n0 = nodes[0]
    positions = list(range(len(n0.args))) + list(n0.kwargs)
    for pos in positions:
        vals = [n.args[pos] if isinstance(pos, int) else n.kwargs[pos] for n in nodes]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            continue
        spec = lookup(attrs)
        arith = spec is not None and (spec.multiplier or "*" in spec.numeric_args)
        sdpa_scale = spec is not None and "scale" in spec.numeric_args and pos in (6, "scale")
        changes = len(set(vals)) > 1
        if arith or sdpa_scale or (changes and isinstance(vals[0], float)):
            exp = sp.Integer(0) if not changes else exact_exponent(widths, vals)
            key = "scale" if sdpa_scale else pos
            out[key] = {"values": [float(v) for v in vals], "exp": exp}
    return out


def _buffer_scalar(models, widths, name):
    vals = []
    for w in widths:
        try:
            b = models[w].get_buffer(name)
        except AttributeError:
            return {}
        if b.numel() != 1 or b.is_meta:
            return {}
        vals.append(float(b.detach().reshape(())))
    # a value stored in a low-precision dtype is exact only to its mantissa (recurrent Gemma's
    # bf16 normalizer sqrt(n): 8.0, 11.3125, 16.0)
    rtol = max(1e-6, 2 * torch.finfo(b.dtype).eps) if b.is_floating_point() else 1e-6
    return {"value": {"values": vals, "exp": exact_exponent(widths, vals, rtol=rtol)
                      if len(set(vals)) > 1 else sp.Integer(0)}}


def _const_scalar(programs, widths, name):
    vals = []
    for w in widths:
        c = programs[w].constants.get(name)
        if not isinstance(c, torch.Tensor) or c.numel() != 1 or c.is_meta:
            return {}
        vals.append(float(c.detach().reshape(())))
    return {"value": {"values": vals, "exp": exact_exponent(widths, vals) if len(set(vals)) > 1
                      else sp.Integer(0)}}


def _check_width_matters(graph: WidthGraph):
    for n in graph.order:
        if any(d != 0 for d in (graph.node(n)["dims"] or ())):
            return
    raise TraceError(
        f"no tensor in the model changes size between widths {list(graph.widths)}: the factory "
        "ignores its width argument. Make factory(n) build the model with hidden size n (and "
        "check that the argument is passed through to the layers).")
