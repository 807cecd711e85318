"""Running the measured program: inputs and batches, building models, exporting per width, and the
``torch.fx.Interpreter`` that trains the exported graph on the model's own parameters.

See ``measure/check.py``'s module docstring ("How the measured program is run") for the design.
"""
from __future__ import annotations

import functools
import gc
import math

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.utils._pytree as pytree

from .data import batches_for, cast, split
from ..errors import CheckError, TensorprogError
from .judge import NEG, Tolerance
from .memory import float_nodes, out_of_memory
from ..validate import check_widths as validate_widths

__all__ = ["Runner", "DEFAULT_LR", "default_loss", "check_widths", "resolve_device",
           "progress_printer", "default_optimizer", "global_optimizer", "batches_for",
           "build_model", "make_opt", "eps_underflow_notes", "free_memory", "program_for", "EXPORT_MODES",
           "measured_nodes", "roundoff_recheck", "reference_nodes", "canonical_names",
           "reusable_programs"]

#: Ops whose outputs are features (the focus list), as in the engine's matrix rules.
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}


def default_loss(output, inputs) -> torch.Tensor:
    """The loss when none is given.

    A scalar output is taken as the loss itself (a model that returns its loss). Otherwise
    0.5 * mean((y - target)^2) on the first tensor output, with fixed N(0, 1) targets of y's
    shape (a seeded generator, the same at every width and seed): a Theta(1) gradient per output
    coordinate, as the engine assumes (TP4: the loss is a Theta(1) function of the finite-dim
    output). 0.5 * mean(y^2) would not do: a muP network's output starts near zero, so its
    gradient would vanish with width.
    """
    leaves = [x for x in pytree.tree_leaves(output) if isinstance(x, torch.Tensor)]
    if not leaves:
        raise CheckError(f"the model output ({type(output).__name__}) contains no tensor to build "
                         "a loss from; pass loss=(output, inputs) -> scalar.")
    y = leaves[0]
    if y.numel() == 1:
        return y.reshape(())
    g = torch.Generator(device="cpu").manual_seed(1234)
    target = torch.randn(tuple(y.shape), generator=g).to(device=y.device, dtype=y.dtype)
    return 0.5 * ((y - target) ** 2).mean()


def check_widths(widths, what: str = "widths") -> list[int]:
    """The package's width validation (``validate.check_widths``), reported as a CheckError."""
    return validate_widths(widths, error=CheckError, what=what)


def resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CheckError(f"unknown device {device!r}: {e}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise CheckError(f"device {device!r} requested but CUDA is not available; use device='auto'.")
    if d.type == "meta":
        raise CheckError("device='meta' cannot train; use 'cpu', 'cuda' or 'auto'.")
    return d


def progress_printer(progress):
    """Progress lines on stderr, as trace prints them."""
    from ..graph.trace import progress_printer as _progress

    return _progress(progress)


def default_optimizer(kind, lr: float | None = None):
    """make_optimizer(model): one global Adam (lr 1e-3) or SGD (lr 1e-2), or ``lr``. A partial of
    a module-level function, so that worker processes can receive it (``check(backend="local")``)."""
    return functools.partial(global_optimizer, kind=kind, lr=DEFAULT_LR[kind] if lr is None else lr)


def global_optimizer(model, kind: str, lr: float):
    cls = torch.optim.SGD if kind == "sgd" else torch.optim.Adam
    return cls(model.parameters(), lr=lr)


def build_model(factory, w, dev, dtype, seed) -> nn.Module:
    torch.manual_seed(seed)
    try:
        with torch.device(dev), out_of_memory(w, dev):
            model = factory(w)
    except TensorprogError:
        raise
    except Exception as e:
        raise CheckError(f"factory({w}) raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise CheckError(f"factory({w}) returned {type(model).__name__}, not an nn.Module.")
    model.to(dev)
    if dtype != torch.float32:
        model.to(dtype)
    return model


class Optimizers:
    """Several optimizers stepped as one (Muon on the hidden matrices, AdamW on the rest)."""

    def __init__(self, opts):
        self.opts = opts

    def zero_grad(self, set_to_none=True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.opts:
            o.step()


def make_opt(make_optimizer, model, w):
    try:
        made = make_optimizer(model)
    except Exception as e:
        raise CheckError(f"make_optimizer(model) raised {type(e).__name__}: {e} (width {w}).") from e
    opts = list(made) if isinstance(made, (list, tuple)) else [made]
    bad = [type(o).__name__ for o in opts if not isinstance(o, torch.optim.Optimizer)]
    if bad or not opts:
        raise CheckError("make_optimizer must return a torch.optim.Optimizer or a list of them, got "
                         f"{bad[0] if bad else 'an empty list'}.")
    return opts[0] if len(opts) == 1 else Optimizers(opts)


def eps_underflow_notes(opt, dtype) -> list[str]:
    """Notes for optimizer eps values that are exactly zero in ``dtype`` (Adam's default 1e-8 is
    below float16's smallest subnormal, 6e-8): a zero second moment then makes the step 0 / 0
    (NaN) or m / 0 (inf), a numerical fault, not a width effect."""
    out = []
    for o in getattr(opt, "opts", [opt]):
        for g in o.param_groups:
            eps = g.get("eps")
            eps = eps[0] if isinstance(eps, (tuple, list)) else eps
            if isinstance(eps, (int, float)) and eps > 0 and \
                    float(torch.tensor(eps, dtype=dtype)) == 0.0:
                out.append(f"{type(o).__name__}'s eps = {eps:g} is 0 in {str(dtype).replace('torch.', '')}: "
                           "an entry with a zero second moment steps by 0/0 (NaN) or m/0 (inf). Train "
                           "in float32 (or pass an eps representable in that dtype).")
                return out
    return out


def free_memory(dev):
    """Between widths: on CUDA collect cycles and return cached blocks to the driver. On CPU
    reference counting has already freed the width's tensors (a full gc.collect() costs ~0.3 s
    with sympy's and networkx's object graphs in memory, more than a small width's training)."""
    if dev.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- programs


def reusable_programs(graph, dev, dtype) -> dict:
    """{width: exported program} of ``trace``'s exports that ``check`` can run as they are (float32,
    on ``dev``'s device type)."""
    if dtype != torch.float32:
        return {}
    return {w: ep for w, ep in graph.programs.items() if _runs_on(ep, dev)}


def program_for(programs, factory, w, example_inputs, dev, dtype, say):
    """(exported program at width w for the device, the seed-0 model it was exported from);
    ``programs``: {width: program} already exported for this device and dtype (reused)."""
    from ..graph.trace import export_program as _export, example_args as _inputs
    from ..errors import TraceError

    model = build_model(factory, w, dev, dtype, 0)
    ep = programs.get(w)
    if ep is None:
        say(f"exporting width {w}")
        try:
            args, kwargs = _inputs(example_inputs, model, w, "cpu")
            args, kwargs = cast(args, dev, dtype), cast(kwargs, dev, dtype)
            modes = EXPORT_MODES.get(id(factory))
            try:  # the export mode (non-strict / strict) that worked at the previous width
                ep = _export(model, args, kwargs, w, modes) if modes else _export(model, args, kwargs, w)
            except TypeError:  # an older trace._export without the modes argument
                ep = _export(model, args, kwargs, w)
            if isinstance(ep, tuple):  # trace._export returns (program, strict?)
                ep, strict = ep
                EXPORT_MODES[id(factory)] = (strict,)
        except TraceError as e:
            raise CheckError(str(e)) from e
    if getattr(ep, "specialised", False):
        raise CheckError(f"{ep.note}: that graph is right for the example inputs only, so check "
                         "cannot train it as the model.")
    return ep, model


#: id(factory) -> the export mode that worked for it (mup's MuReadout needs strict export;
#: trying non-strict first at every width would cost a failed export each time). Per check call.
EXPORT_MODES: dict[int, tuple] = {}


def _runs_on(ep, dev) -> bool:
    for n in ep.graph.nodes:
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor) and v.device.type != dev.type:
            return False
    return True


def reference_nodes(graph):
    """(op, target) of every node of the first traced program: what each width's export must match."""
    w0 = graph.widths[0]
    return [(n.op, str(n.target)) for n in graph.programs[w0].graph.nodes]


def canonical_names(graph) -> list[str]:
    """Names of the first traced program's nodes (the names the report uses), in order."""
    return [n.name for n in graph.programs[graph.widths[0]].graph.nodes]


def measured_nodes(graph):
    """(measured node names in order, skipped {name: why}, focus set)."""
    from ..graph.uses import is_view, scale_exp
    from ..ops import lookup

    has_param = set()
    floats = float_nodes(graph)
    nodes, skipped = [], {}
    for n in graph.order:
        a = graph.node(n)
        ins = graph.inputs(n)
        if a["param"] or any(u in has_param for u in ins):
            has_param.add(n)
        if a["kind"] == "output":
            continue
        if a.get("hop"):  # inlined from a higher-order op's body: not a node of the program run
            skipped[n] = f"inside higher-order op {a['hop']}"
            continue
        if a["kind"] == "placeholder" and not a["param"]:
            skipped[n] = "buffer" if a["buffer"] else "input" if a["input"] is not None else "placeholder"
            continue
        if a["kind"] not in ("placeholder", "call_function"):
            skipped[n] = a["kind"]
            continue
        if n not in has_param:
            skipped[n] = "constant (no parameter upstream)"
            continue
        if a["dims"] is None or n not in floats:
            skipped[n] = "not a float tensor"
            continue
        nodes.append(n)
    focus = set()
    for n in nodes:
        spec = lookup(graph.node(n))  # features: the outputs of contractions and attention
        if spec is not None and (spec.new_source or spec.attention):
            focus.add(n)
            cur, end = n, None
            while True:  # the end of its scalar-multiplier chain (NTK's x * fan_in^-1/2)
                outs = list(graph.nx.successors(cur))
                if len(outs) != 1 or graph.nx.number_of_edges(cur, outs[0]) != 1:
                    break
                nxt = outs[0]
                s = scale_exp(graph, nxt)
                if not is_view(graph, nxt) and s is None:
                    break
                if s is not None:
                    end = nxt
                cur = nxt
            if end is not None and end in nodes:
                focus.add(end)
    out_node = next((n for n in graph.order if graph.node(n)["kind"] == "output"), None)
    if out_node is not None:
        focus.update(u for u in graph.inputs(out_node) if u in nodes)
    return nodes, skipped, focus


# ----------------------------------------------------------------------------- training


class _Recorder(torch.fx.Interpreter):
    """Runs the exported graph and hands each recorded node's value to ``sink(column, value)``
    (as torch.fx's ShapeProp writes shapes onto nodes, this records sizes)."""

    def __init__(self, gm, columns: dict[str, int]):
        super().__init__(gm, garbage_collect_values=True)
        self.columns = columns
        self.sink = None

    def run_node(self, n):
        v = super().run_node(n)
        j = self.columns.get(n.name)
        if j is not None and self.sink is not None and isinstance(v, torch.Tensor) \
                and v.is_floating_point():
            self.sink(j, v)
        return v


class Runner:
    """One width: the exported program, how to feed it a model, and the training loop."""

    def __init__(self, ep, canon, ref_nodes, nodes, w, sample=None, exact=()):
        """canon: the names of the reference program's nodes (``canonical_names``), matched to
        ``ep``'s by position; ref_nodes: their (op, target) (``reference_nodes``)."""
        self.w = w
        self.sample = sample  # entries per tensor to average over (None: all)
        self.exact = set(exact)  # columns always measured over every entry
        self._index = {}
        mine = [(n.op, str(n.target)) for n in ep.graph.nodes]
        if mine != ref_nodes:
            i = next((k for k, (a, b) in enumerate(zip(mine, ref_nodes)) if a != b),
                     min(len(mine), len(ref_nodes)))
            raise CheckError(
                f"the program exported at width {w} differs from the traced one at node {i} "
                f"({mine[i] if i < len(mine) else 'end'} vs "
                f"{ref_nodes[i] if i < len(ref_nodes) else 'end'}): the model's structure must "
                "not depend on the width.")
        col = {c: j for j, c in enumerate(nodes)}
        columns = {}
        for n, c in zip(ep.graph.nodes, canon):
            if c in col:
                columns[n.name] = col[c]
        self.n = len(nodes)
        self.ep = ep
        self.recorder = _Recorder(ep.graph_module, columns)
        # in-place ops (``y *= c``, ``y.mul_(c)``) stay in the exported graph and overwrite the
        # value a node had when it was recorded: the initial values x_0 must then be copies
        self.inplace = any(n.op == "call_function" and _mutates(n.target) for n in ep.graph.nodes)
        sig = ep.graph_signature
        self.in_specs = list(sig.input_specs)
        self.out_specs = list(sig.output_specs)
        self.out_tree = ep.call_spec.out_spec

    # -- feeding

    def _flat_inputs(self, model, params, batch):
        from torch.export.graph_signature import InputKind

        user = pytree.tree_leaves(split(batch))
        k, flat = 0, []
        for spec in self.in_specs:
            if spec.kind == InputKind.PARAMETER:
                flat.append(params[spec.target])
            elif spec.kind == InputKind.BUFFER:
                flat.append(model.get_buffer(spec.target))
            elif spec.kind == InputKind.CONSTANT_TENSOR:
                flat.append(self.ep.constants[spec.target])
            elif spec.kind == InputKind.USER_INPUT:
                if k >= len(user):
                    raise CheckError("the batch has fewer inputs than the exported model takes.")
                flat.append(user[k])
                k += 1
            else:
                raise CheckError(f"exported programs with {spec.kind} inputs are not supported.")
        return flat

    def _run(self, model, params, batch):
        from torch.export.graph_signature import OutputKind

        outs = self.recorder.run(*self._flat_inputs(model, params, batch))
        if not isinstance(outs, (tuple, list)):
            outs = (outs,)
        user = []
        for spec, v in zip(self.out_specs, outs):
            if spec.kind == OutputKind.BUFFER_MUTATION:
                with torch.no_grad():
                    model.get_buffer(spec.target).copy_(v)
            elif spec.kind == OutputKind.USER_OUTPUT:
                user.append(v)
        try:
            return pytree.tree_unflatten(user, self.out_tree)
        except Exception:  # noqa: BLE001 - fall back to the flat outputs
            return user[0] if len(user) == 1 else tuple(user)

    # -- training

    def _subset(self, v):
        """Index tensors picking ``sample`` fixed random entries of a tensor of v's shape (the
        same entries at every step and seed of this width), or None to use every entry."""
        if not self.sample or v.numel() <= self.sample:
            return None
        key = (tuple(v.shape), v.device)
        idx = self._index.get(key)
        if idx is None:
            g = torch.Generator(device="cpu").manual_seed(v.numel() % (2**31 - 1))
            flat = torch.randint(v.numel(), (self.sample,), generator=g)
            idx = self._index[key] = tuple(i.to(v.device) for i in torch.unravel_index(flat, v.shape))
        return idx

    def _scratch(self, v):
        """A view of one shared buffer shaped like v (same dtype and device). The change of each
        node is reduced right after it is written, so one buffer serves every node and step."""
        buf = getattr(self, "_buf", None)
        if buf is None or buf.numel() < v.numel() or buf.dtype != v.dtype or buf.device != v.device:
            buf = self._buf = torch.empty(v.numel(), dtype=v.dtype, device=v.device)
        return buf[:v.numel()].view(v.shape)

    def train(self, model, opt, batches, loss_fn, T):
        """Train T steps measuring every node: (sizes, changes, init sizes, loss gradients)."""
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        with out_of_memory(self.w, dev):
            return self._steps(model, opt, batches, loss_fn, T)

    def _steps(self, model, opt, batches, loss_fn, T):
        from torch.export.graph_signature import InputKind

        names = [s.target for s in self.in_specs if s.kind == InputKind.PARAMETER]
        try:
            params = {n: model.get_parameter(n) for n in names}
        except AttributeError as e:
            raise CheckError(f"the model has no parameter named as in its export: {e}") from e
        ptrs = {p.untyped_storage().data_ptr() for p in params.values()}
        fixed = all(b is batches[0] for b in batches)
        init = {n: p.detach().clone() for n, p in params.items()} if not fixed else None
        sizes = [[None] * self.n for _ in range(T + 1)]
        lgrad = [None] * T
        changes = [[None] * self.n for _ in range(T + 1)]
        x0: dict[int, torch.Tensor] = {}
        ref = [None] * self.n

        for t in range(T + 1):
            batch = batches[t]
            if t > 0 and not fixed:  # x_0 on this batch: the frozen initial parameters
                x0 = {}

                def keep(j, v):
                    idx = None if j in self.exact else self._subset(v)
                    x0[j] = (v.detach().clone() if self.inplace else v.detach()) if idx is None \
                        else v.detach()[idx]
                self.recorder.sink = keep
                with torch.no_grad():
                    self._run(model, init, batch)

            def sink(j, v, t=t):
                v = v.detach()
                n = v.numel()
                if n == 0:
                    return
                idx = None if j in self.exact else self._subset(v)
                if idx is not None:  # a large tensor: a fixed random subset of its entries
                    vs = v[idx]  # gathered: a copy, never an alias of a parameter
                    sizes[t][j] = _l1(vs) / vs.numel()
                    if t == 0:
                        x0[j] = vs
                        ref[j] = sizes[t][j]
                    elif j in x0:
                        changes[t][j] = _l1(vs - x0[j]) / vs.numel()
                    return
                # one pass, no temporary: the L1 norm accumulated in float32
                sizes[t][j] = _l1(v) / n
                if t == 0:
                    alias = v.untyped_storage().data_ptr() in ptrs  # a parameter (or its view)
                    x0[j] = v.clone() if alias or self.inplace else v
                    ref[j] = sizes[t][j]
                elif j in x0:
                    d = self._scratch(v)  # reused buffer: no fresh allocation per node
                    torch.sub(v, x0[j], out=d)
                    changes[t][j] = _l1(d) / n
            self.recorder.sink = sink
            out = self._run(model, params, batch)
            self.recorder.sink = None
            if t == T:
                break
            value = _loss_value(loss_fn, out, batch)
            y = next((x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)
                      and x.requires_grad), None)
            if y is not None:
                def grab(g, t=t):
                    lgrad[t] = g.detach().float().abs().mean()
                y.register_hook(grab)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            del out, value
        self._buf = None
        self.lgrad_measured = [v is not None for v in lgrad]  # NaN below: not measured, or NaN
        return _to_array(sizes, self.n), _to_array(changes, self.n), \
            _to_array([ref], self.n)[0], _to_array([lgrad], T)[0]


def _mutates(target) -> bool:
    """Whether an ATen op writes into one of its inputs (``mul_``, ``add_``, ``copy_``...)."""
    schema = getattr(target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


def _l1(v):
    """Sum of |v| in one pass without a temporary, accumulated in float32 (float64 for double)."""
    return torch.linalg.vector_norm(v, 1, dtype=torch.float64 if v.dtype == torch.float64
                                    else torch.float32)


def _loss_value(loss_fn, out, batch):
    try:
        value = loss_fn(out, batch)
    except TensorprogError:
        raise
    except Exception as e:
        raise CheckError(f"loss(output, inputs) raised {type(e).__name__}: {e}") from e
    if not isinstance(value, torch.Tensor):
        raise CheckError(f"loss must return a scalar tensor, got {type(value).__name__}.")
    if value.numel() != 1:
        raise CheckError(
            f"loss must return a scalar tensor, got shape {tuple(value.shape)}: reduce it (e.g. "
            ".mean()) so one backward pass gives the gradient of one number.")
    if not value.requires_grad:
        raise CheckError("the loss does not depend on any trainable parameter (no grad); check "
                         "that it is computed from the model output.")
    return value.reshape(())


def _to_array(rows, n) -> np.ndarray:
    """List of rows of 0-d tensors (or None) -> float array; one device transfer."""
    flat = [v for row in rows for v in row if v is not None]
    vals = torch.stack([v.float() for v in flat]).cpu().double().numpy() if flat else []
    out = np.full((len(rows), n), np.nan)
    k = 0
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if v is not None:
                out[i, j] = vals[k]
                k += 1
    return out


def roundoff_recheck(records, nodes, w, tol: Tolerance, say, run64):
    """Re-measure in float64 (width w, seed 0) the predicted-zero records the float32 run
    refuted; confirm those whose value collapses with the precision (see the module docstring).
    ``run64()`` -> (sizes, changes) of that float64 run, on whatever backend ``check`` uses."""
    bad = [r for r in records if r.predicted == NEG and r.status == "refuted" and not r.blowup]
    if not bad:
        return
    say(f"re-measuring {len(bad)} predicted-zero records in float64 at width {w}")
    sz, ch = run64()
    col = {n: j for j, n in enumerate(nodes)}
    for r in bad:
        v32 = r.values[w][0]
        v64 = (sz if r.kind == "size" else ch)[r.step, col[r.node]]
        if math.isfinite(v64) and v32 > 0 and v64 <= tol.roundoff * v32:
            r.status = "confirmed"
            r.note = (f"predicted exactly zero; nonzero in float32 (max relative "
                      f"{r.note.rsplit(' ', 1)[-1]}) but {v64 / v32:.1e} of that in float64 at "
                      f"width {w}: roundoff (e.g. an exactly-zero gradient's noise divided by "
                      "Adam's eps)")
        else:
            r.note += f"; float64 re-measurement at width {w}: {v64:.3g} vs {v32:.3g} (not roundoff)"
