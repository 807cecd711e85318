"""Empirical check: train the traced program at growing widths and test every predicted exponent.

``check(factory, widths)`` asks the engine (``engine.propagate``) for the width exponent of every
node of the traced ATen graph, then trains the *same graph* at each width and seed, measures
every node, fits log(size) against log(width) and marks each prediction confirmed, refuted or
inconclusive. It is the coordinate check of TP5 (microsoft/mup's ``get_coord_data``), judged
against a prediction instead of by eye.

How the measured program is run
-------------------------------
For each width, ``factory(w)`` is built under ``torch.manual_seed(seed)`` on the device and
exported once with torch.export (the exporter of ``trace``; the exports ``trace`` made are reused
when the device and dtype match). The exported program's *lifted* graph (``ep.graph_module``,
where parameters, buffers and inputs are placeholders) is run by a ``torch.fx.Interpreter``
subclass that is fed the **original model's own** ``nn.Parameter`` and buffer objects, looked up
by the names in the export signature. So:

* ``make_optimizer(model)`` runs on the original model, unchanged: groups built by parameter
  name, by module type, or by attributes the parameters carry (the mup package's ``infshape``,
  read by ``MuAdam``) all work, and the optimizer updates exactly the tensors the graph reads;
* autograd flows from the graph's ATen ops into those parameters as in eager mode; buffers that
  the graph mutates in place (BatchNorm running statistics) are the model's own;
* one export per width serves every seed: seed s only swaps in the parameters of a model built
  under ``torch.manual_seed(s)``.

Graph nodes are matched to the traced graph by position (the export is the same program at every
width: same op sequence, checked); names in the report are the traced graph's names.

Protocol per width and seed (``steps`` = T): for t = 0..T, run the graph on batch b_t with the
parameters after t updates, record every float node output x_t, then (t < T) take the loss of
that same forward, backpropagate, and step the optimizer. Measured per node and step:

* ``size``: mean |x_t| (predicted exponent: max(x, dx_t) of the engine's Sizes);
* ``change``: mean |x_t - x_0| where x_0 is the node's value at init *on the same batch*
  (predicted: dx_t). With a fixed batch (the default: the example inputs every step) x_0 is the
  step-0 recording; with ``data`` giving a new batch each step, a frozen copy of the initial
  parameters is run on b_t (no grad) to get x_0. The change is what separates feature learning
  (Theta(1) change) from mere stability.

Tensors with more than ``sample`` entries (default 2^16 = 65536) are measured on a fixed
random subset of that many entries (the same at every step and seed of a width): an unbiased
estimate of mean |x| whose relative error, ~ 1/sqrt(2^16) = 0.4% for dense tensors, is far
below what a slope can resolve, and it spares the full passes over every large parameter at
every step (and the full copy of its initial value) that would otherwise dominate the overhead
at large widths. Nodes predicted exactly zero (-oo) are always measured over every entry, so a
"zero" is never a sampling accident. ``sample=None`` measures everything exactly.

Skipped: user inputs and buffers (buffers move by in-place running-stat updates, not by
training), non-float and tuple-valued nodes, and nodes with no parameter upstream (positions,
masks: width-independent constants).

Fits and uncertainty
--------------------
``slope``: the least-squares slope of log(measurement) against log(width) over all (width, seed)
points (equal to the mean of the per-seed slopes). ``stderr``: its standard error from the
pooled scatter of all W * S points about the line (W * S - 2 degrees of freedom; seed-to-seed
noise and any bend of the curve, where lower-order terms still matter, both widen it).

Status rules (``Tolerance``; defaults in brackets)
--------------------------------------------------
* predicted -oo (exactly zero): confirmed iff every measurement is below ``zero_rtol`` [1e-6]
  relative to the node's init size (absolute for a node that is itself predicted zero);
  otherwise refuted, unless it is roundoff: an exactly-zero gradient (a key bias behind softmax,
  a bias before BatchNorm) still carries floating-point noise, which Adam divides by its eps
  into a visible move. Such records are re-measured once in float64 (smallest width, seed 0):
  if the value shrinks below ``roundoff`` [1e-3] of its float32 value, it was roundoff and the
  zero is confirmed (with a note); a real change does not depend on the precision.
* a non-finite value (NaN / inf) at some width: a measured **blow-up**; confirmed if the engine
  predicted growth (exponent > 0), refuted if it predicted Theta(1) or less.
* predicted growth (exponent > 0, an unstable node): confirmed by significant growth,
  slope >= ``growth_min`` [0.25] and slope >= 3 stderr; refuted when clearly not growing,
  slope + 3 stderr < ``growth_min`` / 2; else inconclusive. The slope is reported but not
  compared with the exponent: nonlinearities saturate and lower-order terms dominate at
  practical widths (SP + Adam tanh MLP, widths 64..2048: a logit-change slope of ~1.3 that still
  rises with width), so only the sign of the growth is testable.
* predicted Theta(1) or decaying (exponent <= 0): let dev = |slope - predicted|.
  confirmed if dev <= ``tol`` [0.15] + 2 stderr and stderr <= ``max_stderr`` [0.2];
  refuted if dev > ``tol`` + 3 stderr; else inconclusive (too noisy, or in between).
* measured exactly zero where a finite size is predicted: refuted.

Then three documented second-pass rules (never a silent widening of the tolerances):

* two-term sizes (``_compose``): mean |x_t| after training is |x_0 + change|, two terms n^x and
  n^dx_t each tested by its own record. If the size slope lies between the two measured slopes
  (the smaller-exponent term still the larger one at these widths), the size record takes the
  worse status of those two records; a predicted growth is never confirmed that way (it must
  show in the size itself), it is then inconclusive.
* outside the engine's assumptions (``_assumption_step``): ``propagate`` assumes a Theta(1)
  loss gradient at every step and updates that add up without cancelling. After the first step
  k at which the engine itself predicts the output change grows (or the measured loss gradient
  grows with width), that no longer holds; disagreements at steps > k are reported as
  inconclusive with a note (step k and before are judged normally). SP models are therefore
  tested on the first step(s); their later steps can only confirm.
* first-order regime (``_first_order_notes``, a note only): a change that accumulates linearly
  in t, x_t - x_0 ~ t (x_1 - x_0), while the engine predicts a higher exponent than at step 1
  (a term of higher order in the learning rate) gets a note saying the widths / learning rate
  are too small to see it.

The report's verdict: "refuted" if any record is refuted, else "inconclusive" if any record is,
else "confirmed". ``focus`` records (outputs of linear / conv / matmul / embedding / attention
ops, the end of their scalar-multiplier chains, and the model outputs) make the headline table.

Plot (``CheckReport.plot(path)``): one PNG, two rows: top, mean |x_t| against width (log-log),
one panel per step 0..T; bottom, the change mean |x_t - x_0|, steps 1..T. One curve per node
group (focus nodes grouped by module path with block indices starred, and op; the geometric mean
of its members), predicted slopes as dashed lines anchored at the smallest width (one per distinct
exponent in the group).
"""
from __future__ import annotations

import argparse
import gc
import itertools
import math
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import sympy as sp
import torch
import torch.fx
import torch.nn as nn
import torch.utils._pytree as pytree

from ..errors import CheckError, TensorprogError, TraceError
from ..jsonio import JSONMixin

__all__ = ["check", "CheckReport", "Record", "Tolerance", "Blowup", "cli_main",
           "add_cli_arguments", "default_loss"]

NEG = -sp.oo

#: Ops whose outputs are features (the focus list), as in the engine's matrix rules.
FEATURE_OPS = {"linear", "addmm", "mm", "bmm", "matmul", "conv1d", "conv2d", "conv3d",
               "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
               "embedding", "scaled_dot_product_attention"}

DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Tolerance:
    """Thresholds of the status rules (see the module docstring)."""

    tol: float = 0.15  # allowed |slope - predicted| for Theta(1) / decaying predictions
    max_stderr: float = 0.2  # above this a fit cannot confirm anything
    growth_min: float = 0.25  # slope that counts as significant growth
    zero_rtol: float = 1e-6  # "exactly zero": relative to the node's init size
    roundoff: float = 1e-3  # float64 / float32 ratio below which a nonzero value is roundoff


@dataclass
class Blowup:
    """A non-finite value in training: the first node (graph order) that went NaN / inf."""

    width: int
    seed: int
    step: int
    node: str
    module: str


@dataclass
class Record:
    """One prediction and its measurement: a node, a kind ("size" or "change"), a step."""

    node: str
    module: str
    op: str
    kind: str  # "size": mean |x_t|; "change": mean |x_t - x_0|
    step: int
    slope: float | None  # mean over seeds of the fitted log-log slope
    stderr: float | None
    predicted: Any  # SymPy exponent (-oo: exactly zero)
    status: str  # "confirmed" | "refuted" | "inconclusive"
    focus: bool
    values: dict[int, list[float]]  # width -> measured value per seed (nan: not measured)
    blowup: bool = False
    note: str = ""

    @property
    def mean_values(self) -> dict[int, float]:
        """Width -> geometric mean over seeds of the finite, positive values (nan if none)."""
        out = {}
        for w, vs in self.values.items():
            v = np.asarray(vs, dtype=float)
            v = v[np.isfinite(v) & (v > 0)]
            out[w] = float(np.exp(np.log(v).mean())) if v.size else float("nan")
        return out

    def to_dict(self) -> dict:
        return {
            "node": self.node, "module": self.module, "op": self.op, "kind": self.kind,
            "step": self.step, "slope": _num(self.slope), "stderr": _num(self.stderr),
            "predicted": _exp_str(self.predicted), "status": self.status, "focus": self.focus,
            "blowup": self.blowup, "note": self.note,
            "values": {str(w): [_num(v) for v in vs] for w, vs in self.values.items()},
        }


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def _exp_str(e) -> str:
    if e is None:
        return "?"
    if e == NEG:
        return "-inf"
    if e == sp.oo:
        return "inf"
    return str(e)


def _pred_text(e) -> str:
    if e == NEG:
        return "zero"
    if e == sp.oo:
        return "inf"
    return "n^" + str(e)


@dataclass
class CheckReport(JSONMixin):
    """What ``check`` measured. ``str()`` is a readable table; ``to_dict()`` is JSON-able."""

    records: list[Record]
    widths: tuple[int, ...]
    steps: int
    seeds: int
    optimizer: str
    device: str
    dtype: str
    tolerance: Tolerance
    blowups: list[Blowup]
    skipped: dict[str, str]  # node -> why it was not measured
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)
    #: step t -> fit of mean |d loss / d output| at the update made after step t's forward:
    #: {"slope", "stderr", "grows"}; the engine assumes it is Theta(1) (``propagate``)
    loss_grad: dict = field(default_factory=dict)
    graph: Any = field(default=None, repr=False)
    propagation: Any = field(default=None, repr=False)

    @property
    def verdict(self) -> str:
        statuses = {r.status for r in self.records}
        if "refuted" in statuses:
            return "refuted"
        if "inconclusive" in statuses:
            return "inconclusive"
        return "confirmed"

    def refuted(self) -> list[Record]:
        return [r for r in self.records if r.status == "refuted"]

    def inconclusive(self) -> list[Record]:
        return [r for r in self.records if r.status == "inconclusive"]

    def focus(self) -> list[Record]:
        return [r for r in self.records if r.focus]

    def unstable(self) -> list[Record]:
        """Focus records where the engine predicts growth with width and the measurement
        confirms it (growing slope or a blow-up): the nodes that make the model width-unstable."""
        return [r for r in self.records if r.focus and r.status == "confirmed"
                and r.predicted != NEG and r.predicted > 0]

    def get(self, node: str, kind: str = "change", step: int | None = None) -> Record:
        """The record of ``node`` (``kind``, ``step``; default: the last step)."""
        step = self.steps if step is None else step
        for r in self.records:
            if r.node == node and r.kind == kind and r.step == step:
                return r
        raise KeyError(f"no {kind} record for node {node!r} at step {step}")

    def counts(self) -> dict[str, int]:
        out = {"confirmed": 0, "refuted": 0, "inconclusive": 0}
        for r in self.records:
            out[r.status] += 1
        return out

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict, "counts": self.counts(), "widths": list(self.widths),
            "steps": self.steps, "seeds": self.seeds, "optimizer": self.optimizer,
            "device": self.device, "dtype": self.dtype,
            "tolerance": {k: getattr(self.tolerance, k) for k in self.tolerance.__dataclass_fields__},
            "blowups": [vars(b) for b in self.blowups], "skipped": self.skipped,
            "loss_grad": {str(k): v for k, v in self.loss_grad.items()},
            "seconds": self.seconds, "notes": self.notes,
            "records": [r.to_dict() for r in self.records],
        }

    def __str__(self) -> str:
        return _format(self)

    def plot(self, path: str, *, max_groups: int = 16) -> str:
        """Write the coordinate-check figure to ``path`` (PNG); returns the path."""
        return _plot(self, path, max_groups)


# ----------------------------------------------------------------------------- check


def check(
    factory: Callable[[int], nn.Module],
    widths: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
    *,
    example_inputs=None,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    steps: int = 3,
    seeds: int = 3,
    data=None,
    loss: Callable[[Any, tuple], torch.Tensor] | None = None,
    device: str = "auto",
    dtype: torch.dtype = torch.float32,
    optimizer: str | None = None,
    graph=None,
    progress: bool = True,
    tolerance: Tolerance | None = None,
    trace_widths: Sequence[int] | None = None,
    alignment="tp",
    sample: int | None = 1 << 16,
) -> CheckReport:
    """Train ``factory(w)`` at each width and confirm or refute every predicted exponent.

    example_inputs: tuple of tensors, or callable width -> tuple (as ``trace``); default: the
    model's ``example_inputs()`` or the first batch of ``data``. make_optimizer: model ->
    torch.optim.Optimizer, run on the original model (default: one global Adam lr 1e-3, or SGD
    lr 1e-2 with ``optimizer="sgd"``). data: None (train on the example inputs every step), an
    iterable of input tuples (one batch per step, cycled), or a callable width -> either.
    loss(output, inputs) -> scalar; default ``default_loss``. device: "auto" (CUDA when present),
    "cpu", "cuda", ... optimizer: "sgd" / "adam" class for the engine (default: read from the
    optimizer make_optimizer builds). graph: a ``WidthGraph`` from ``trace`` to take predictions
    from (default: trace at ``trace_widths``, the three smallest widths). tolerance: the status
    thresholds. sample: tensors with more entries are measured on a fixed random subset of
    this many (None: every entry; see the module docstring). Returns a ``CheckReport``.
    """
    from ..predict.engine import propagate
    from ..graph.trace import trace, WidthGraph

    t_start = time.perf_counter()
    widths = _check_widths(widths)
    if not isinstance(steps, int) or steps < 1:
        raise CheckError(f"steps must be a positive integer (training steps to measure), got {steps!r}.")
    if not isinstance(seeds, int) or seeds < 1:
        raise CheckError(f"seeds must be a positive integer, got {seeds!r}.")
    if not callable(factory) or isinstance(factory, nn.Module):
        raise CheckError("factory must be a callable width -> nn.Module (e.g. `lambda n: "
                         "MyModel(hidden=n)`), not a model instance.")
    if optimizer is not None and optimizer not in ("sgd", "adam"):
        from ..theory.abc import optimizer_class
        optimizer = optimizer_class(optimizer)
    tolerance = tolerance or Tolerance()
    if sample is not None and (not isinstance(sample, int) or sample < 1):
        raise CheckError(f"sample must be a positive number of entries or None, got {sample!r}.")
    dev = _device(device)
    say = _say(progress)
    if make_optimizer is None:
        make_optimizer = _default_optimizer(optimizer or "adam")
    loss_fn = loss if loss is not None else default_loss
    data_fn = _data_source(data)
    if example_inputs is None and data_fn is not None:
        example_inputs = lambda w: _first_batch(data_fn(w))  # noqa: E731

    # --- predictions
    t0 = time.perf_counter()
    if graph is None:
        tw = sorted(set(int(w) for w in trace_widths)) if trace_widths else widths[:3]
        say(f"tracing at widths {tw} for the predictions")
        from ..errors import TraceError
        try:
            graph = trace(factory, tw, example_inputs=example_inputs, make_optimizer=make_optimizer)
        except TraceError as e:
            raise CheckError(f"could not trace the model for its predictions: {e}") from e
    elif not isinstance(graph, WidthGraph):
        raise CheckError(f"graph must be a WidthGraph from tensorprog.trace, got {type(graph).__name__}.")
    if optimizer is None:
        from ..theory.abc import optimizer_class
        optimizer = optimizer_class(graph.optimizer) if graph.optimizer else "adam"
    prop = propagate(graph, optimizer, steps=steps, align=alignment)
    t_predict = time.perf_counter() - t0

    _EXPORT_MODES.clear()
    nodes, skipped, focus = _measured_nodes(graph)
    # nodes predicted exactly zero (size or change) are measured over every entry
    exact_cols = [j for j, name in enumerate(nodes) if prop.steps[0][name].x == NEG
                  or any(prop.steps[t][name].dx == NEG for t in range(1, steps + 1))]
    ref_nodes = _ref_nodes(graph)
    notes = []
    if prop.unknown:
        notes.append("ops without an engine rule (predicted as elementwise): "
                     + ", ".join(f"{k} ({len(v)}x)" for k, v in prop.unknown.items()))

    # --- measurement
    T, S, N = steps, seeds, len(nodes)
    size = np.full((len(widths), S, T + 1, N), np.nan)
    change = np.full((len(widths), S, T + 1, N), np.nan)
    ref = np.full((len(widths), S, N), np.nan)  # mean |x_0|, the scale of "zero" changes
    lgrad = np.full((len(widths), S, T), np.nan)  # mean |dloss/doutput| at each update
    blowups: list[Blowup] = []
    t_export = t_train = 0.0
    for wi, w in enumerate(widths):
        t1 = time.perf_counter()
        ep, model0 = _program_for(graph, factory, w, example_inputs, dev, dtype, say)
        runner = _Runner(ep, graph, ref_nodes, nodes, w, sample, exact_cols)
        t_export += time.perf_counter() - t1
        for s in range(S):
            t2 = time.perf_counter()
            model = model0 if s == 0 else _build(factory, w, dev, dtype, s)
            model0 = None
            batches = _batches(data_fn, example_inputs, model, w, dev, dtype, T + 1)
            opt = _make_opt(make_optimizer, model, w)
            sz, ch, r0, lg = runner.train(model, opt, batches, loss_fn, T)
            size[wi, s], change[wi, s], ref[wi, s], lgrad[wi, s] = sz, ch, r0, lg
            blow = _first_blowup(sz, ch)
            if blow is not None:
                t, j = blow
                blowups.append(Blowup(w, s, t, nodes[j], graph.node(nodes[j])["module"]))
            t_train += time.perf_counter() - t2
            say(f"width {w} ({wi + 1}/{len(widths)}) seed {s + 1}/{S}: {T} steps in "
                f"{time.perf_counter() - t2:.2f}s"
                + (f"; non-finite from step {blow[0]} at node {nodes[blow[1]]}" if blow else ""))
            del model, opt, batches
        del runner, ep
        _free(dev)

    # --- fits and statuses
    records = []
    for j, name in enumerate(nodes):
        a = graph.node(name)
        for t in range(T + 1):
            st = prop.steps[t][name]
            kinds = [("size", max(st.x, st.dx))] + ([("change", st.dx)] if t > 0 else [])
            for kind, pred in kinds:
                vals = (size if kind == "size" else change)[:, :, t, j]
                scale = ref[:, :, j] if kind == "change" else None
                cap = st.uncapped.get("dx") if kind == "change" else max(
                    [v for k, v in st.uncapped.items() if k == "x" or t > 0] or [None],
                    key=lambda v: -sp.oo if v is None else v)
                rec = _judge(name, a, kind, t, pred, vals, scale, widths, tolerance, name in focus, cap)
                records.append(rec)
    if dtype != torch.float64:
        _roundoff_recheck(records, nodes, graph, factory, widths[0], example_inputs, data_fn,
                          make_optimizer, loss_fn, T, dev, tolerance, say, ref_nodes, exact_cols)
    loss_grad = _loss_grad_fits(lgrad, widths, tolerance)
    k_assume, why = _assumption_step(loss_grad, prop)
    _outside_assumptions(records, k_assume, why)
    if k_assume is not None:
        notes.append(f"predictions after step {k_assume} are outside the engine's assumptions "
                     f"({why}); disagreements there are reported as inconclusive.")
    _compose(records, prop, tolerance)
    _first_order_notes(records, prop)
    for b in blowups[:5]:
        notes.append(f"non-finite values at width {b.width}, seed {b.seed}, step {b.step}, "
                     f"first at node {b.node} ({b.module or 'top'})")
    if len(blowups) > 5:
        notes.append(f"... non-finite values in {len(blowups) - 5} more runs (see .blowups)")
    seconds = {"total": time.perf_counter() - t_start, "predict": t_predict,
               "export": t_export, "train": t_train}
    return CheckReport(records=records, widths=tuple(widths), steps=T, seeds=S,
                       optimizer=optimizer, device=str(dev), dtype=str(dtype).replace("torch.", ""),
                       tolerance=tolerance, blowups=blowups, skipped=skipped, seconds=seconds,
                       notes=notes, loss_grad=loss_grad, graph=graph, propagation=prop)


# ----------------------------------------------------------------------------- inputs


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


def _check_widths(widths) -> list[int]:
    """trace's width validation, reported as a CheckError."""
    from ..graph.trace import _check_widths as check_trace_widths

    try:
        return check_trace_widths(widths)
    except TraceError as e:
        raise CheckError(str(e)) from None


def _device(device) -> torch.device:
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


def _say(progress):
    """Progress lines on stderr, as trace prints them."""
    from ..graph.trace import _progress

    return _progress(progress)


def _default_optimizer(kind):
    lr = DEFAULT_LR[kind]

    def make(model):
        cls = torch.optim.SGD if kind == "sgd" else torch.optim.Adam
        return cls(model.parameters(), lr=lr)
    return make


def _data_source(data):
    """data -> None or a function width -> iterable of batches."""
    if data is None:
        return None
    if callable(data) and not isinstance(data, (list, tuple, torch.Tensor)):
        return data
    if isinstance(data, torch.Tensor):
        raise CheckError("data must be an iterable of input tuples (one batch per step) or a "
                         "callable width -> batches, not a single tensor; for one fixed batch pass "
                         "example_inputs=(tensor,).")
    if not isinstance(data, Iterable):
        raise CheckError(f"data must be an iterable of input tuples or a callable, got {type(data).__name__}.")
    items = list(data)
    if not items:
        raise CheckError("data is empty: give at least one batch (a tuple of input tensors).")
    return lambda w: items


def _as_batch(b, k):
    """A batch: a tuple of positional inputs, or a dict of keyword inputs (HuggingFace style)."""
    if isinstance(b, torch.Tensor):
        return (b,)
    if isinstance(b, list):
        b = tuple(b)
    if isinstance(b, dict):
        return dict(b)
    if not isinstance(b, tuple):
        raise CheckError(f"batch {k} of data is a {type(b).__name__}; each batch must be a tuple "
                         "of model inputs, one tensor, or a dict of keyword inputs.")
    return b


def _first_batch(d):
    if isinstance(d, (tuple, dict, torch.Tensor)):
        return _as_batch(d, 0)
    if isinstance(d, list) and d and isinstance(d[0], torch.Tensor):
        return _as_batch(d, 0)
    return _as_batch(next(iter(d)), 0)


def _split(batch):
    """(positional, keyword) inputs of a batch, as torch.export's (args, kwargs)."""
    return ((), batch) if isinstance(batch, dict) else (batch, {})


def _batches(data_fn, example_inputs, model, w, dev, dtype, count) -> list:
    """``count`` batches (tuples or keyword dicts, on the device); the same object every step
    for a fixed batch. What the loss receives as ``inputs``."""
    from ..graph.trace import _inputs
    from ..errors import TraceError

    try:
        args, kwargs = _inputs(example_inputs, model, w, "cpu")
    except TraceError as e:
        raise CheckError(str(e)) from e
    ref = _cast(kwargs if kwargs and not args else args, dev, dtype)
    if data_fn is None:
        return [ref] * count
    d = data_fn(w)
    if isinstance(d, (tuple, dict, torch.Tensor)):
        batches = [_as_batch(d, 0)]
    else:
        batches = [_as_batch(b, k) for k, b in zip(range(count), itertools.cycle(d))]
        if not batches:
            raise CheckError(f"data({w}) gave no batches.")
    out = []
    for k, b in enumerate(batches):
        b = _cast(b, dev, dtype)
        if isinstance(ref, dict):  # keyword inputs flatten in the export's key order
            if not isinstance(b, dict) or set(b) != set(ref):
                raise CheckError(f"batch {k} of data must be a dict with keys {sorted(ref)} like "
                                 f"the example inputs, got {type(b).__name__} "
                                 f"{sorted(b) if isinstance(b, dict) else ''}.")
            b = {key: b[key] for key in ref}
        _check_like(b, ref, k, w)
        out.append(b)
    if len(out) == 1:
        return out * count
    return [out[k % len(out)] for k in range(count)]


def _cast(args, dev, dtype):
    """Tensors of a batch (tuple or dict) moved to the device; float ones cast to dtype."""
    def mv(t):
        if isinstance(t, torch.Tensor):
            t = t.to(dev)
            return t.to(dtype) if t.is_floating_point() else t
        return t
    if isinstance(args, dict):
        return {k: pytree.tree_map(mv, v) for k, v in args.items()}
    return tuple(pytree.tree_map(mv, a) for a in args)


def _check_like(batch, ref, k, w):
    lb, lr = pytree.tree_leaves(batch), pytree.tree_leaves(ref)
    if len(lb) != len(lr):
        raise CheckError(f"batch {k} of data has {len(lb)} inputs but the model was exported with "
                         f"{len(lr)} (width {w}); each batch must be a tuple like the example inputs.")
    for i, (x, y) in enumerate(zip(lb, lr)):
        if isinstance(y, torch.Tensor):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(y.shape) or \
                    x.is_floating_point() != y.is_floating_point():
                got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise CheckError(
                    f"input {i} of batch {k} of data is {got} but the model was exported with "
                    f"{tuple(y.shape)} {y.dtype} (width {w}). The exported graph has static "
                    "shapes: every batch must match the example inputs' shapes (or pass "
                    "example_inputs of the data's shape).")


def _build(factory, w, dev, dtype, seed) -> nn.Module:
    torch.manual_seed(seed)
    try:
        with torch.device(dev):
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


def _make_opt(make_optimizer, model, w):
    try:
        opt = make_optimizer(model)
    except Exception as e:
        raise CheckError(f"make_optimizer(model) raised {type(e).__name__}: {e} (width {w}).") from e
    if not isinstance(opt, torch.optim.Optimizer):
        raise CheckError(f"make_optimizer must return a torch.optim.Optimizer, got {type(opt).__name__}.")
    return opt


def _free(dev):
    """Between widths: on CUDA collect cycles and return cached blocks to the driver. On CPU
    reference counting has already freed the width's tensors (a full gc.collect() costs ~0.3 s
    with sympy's and networkx's object graphs in memory, more than a small width's training)."""
    if dev.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- programs


def _program_for(graph, factory, w, example_inputs, dev, dtype, say):
    """(exported program at width w for the device, the seed-0 model it was exported from)."""
    from ..graph.trace import _export, _inputs
    from ..errors import TraceError

    model = _build(factory, w, dev, dtype, 0)
    ep = graph.programs.get(w)
    if ep is None or not _runs_on(ep, dev) or dtype != torch.float32:
        say(f"exporting width {w}")
        try:
            args, kwargs = _inputs(example_inputs, model, w, "cpu")
            args, kwargs = _cast(args, dev, dtype), _cast(kwargs, dev, dtype)
            modes = _EXPORT_MODES.get(id(factory))
            try:  # the export mode (non-strict / strict) that worked at the previous width
                ep = _export(model, args, kwargs, w, modes) if modes else _export(model, args, kwargs, w)
            except TypeError:  # an older trace._export without the modes argument
                ep = _export(model, args, kwargs, w)
            if isinstance(ep, tuple):  # trace._export returns (program, strict?)
                ep, strict = ep
                _EXPORT_MODES[id(factory)] = (strict,)
        except TraceError as e:
            raise CheckError(str(e)) from e
    return ep, model


#: id(factory) -> the export mode that worked for it (mup's MuReadout needs strict export;
#: trying non-strict first at every width would cost a failed export each time). Per check call.
_EXPORT_MODES: dict[int, tuple] = {}


def _runs_on(ep, dev) -> bool:
    for n in ep.graph.nodes:
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor) and v.device.type != dev.type:
            return False
    return True


def _ref_nodes(graph):
    w0 = graph.widths[0]
    return [(n.op, str(n.target)) for n in graph.programs[w0].graph.nodes]


def _measured_nodes(graph):
    """(measured node names in order, skipped {name: why}, focus set)."""
    from ..graph.trace import VIEW_OPS, scale_exp

    has_param = set()
    floats = _float_nodes(graph)
    nodes, skipped = [], {}
    for n in graph.order:
        a = graph.node(n)
        ins = graph.inputs(n)
        if a["param"] or any(u in has_param for u in ins):
            has_param.add(n)
        if a["kind"] == "output":
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
        if graph.node(n)["op"] in FEATURE_OPS:
            focus.add(n)
            cur, end = n, None
            while True:  # the end of its scalar-multiplier chain (NTK's x * fan_in^-1/2)
                outs = list(graph.nx.successors(cur))
                if len(outs) != 1 or graph.nx.number_of_edges(cur, outs[0]) != 1:
                    break
                nxt = outs[0]
                s = scale_exp(graph, nxt)
                if graph.node(nxt)["op"] not in VIEW_OPS and s is None:
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


def _float_nodes(graph) -> set:
    """Names of traced nodes whose value is one floating-point tensor (from the export's meta)."""
    ep = graph.programs[graph.widths[0]]
    return {n.name for n in ep.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].is_floating_point()}


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


class _Runner:
    """One width: the exported program, how to feed it a model, and the training loop."""

    def __init__(self, ep, graph, ref_nodes, nodes, w, sample=None, exact=()):
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
        canon = [n.name for n in graph.programs[graph.widths[0]].graph.nodes]
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

        user = pytree.tree_leaves(_split(batch))
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


def _roundoff_recheck(records, nodes, graph, factory, w, example_inputs, data_fn, make_optimizer,
                      loss_fn, T, dev, tol: Tolerance, say, ref_nodes, exact_cols):
    """Re-measure in float64 (width w, seed 0) the predicted-zero records the float32 run
    refuted; confirm those whose value collapses with the precision (see the module docstring)."""
    bad = [r for r in records if r.predicted == NEG and r.status == "refuted" and not r.blowup]
    if not bad:
        return
    say(f"re-measuring {len(bad)} predicted-zero records in float64 at width {w}")
    f64 = torch.float64
    ep, model = _program_for(graph, factory, w, example_inputs, dev, f64, say)
    runner = _Runner(ep, graph, ref_nodes, nodes, w, None, exact_cols)
    batches = _batches(data_fn, example_inputs, model, w, dev, f64, T + 1)
    sz, ch, _, _ = runner.train(model, _make_opt(make_optimizer, model, w), batches, loss_fn, T)
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
    del runner, ep, model
    _free(dev)


def _loss_grad_fits(lgrad, widths, tol: Tolerance) -> dict:
    """Per update step: slope of mean |d loss / d output| against width, and whether it grows
    (slope >= growth_min and >= 3 stderr, or non-finite)."""
    out = {}
    for t in range(lgrad.shape[2]):
        v = lgrad[:, :, t]
        if np.isnan(v).all():
            continue
        bad = not np.isfinite(v).all()
        slope = se = None
        if not bad and (v > 0).all():
            slope, se = _fit(widths, v)
        grows = bad or (slope is not None and slope >= tol.growth_min and slope >= 3 * se)
        out[t] = {"slope": slope, "stderr": se, "grows": bool(grows), "non_finite": bool(bad)}
    return out


def _assumption_step(loss_grad, prop):
    """(k, why): the first update k after which the engine's predictions leave its assumptions.

    ``propagate`` assumes a Theta(1) loss gradient per output coordinate at every step, and
    adds exponents of successive updates without cancellation. Neither holds once the model
    output has blown up: the engine's own prediction of an output change n^e, e > 0, at step k
    (under MSE the loss gradient then grows like the output; under any loss the next updates
    overshoot and partly cancel, e.g. Adam's sign flips), or a measured loss gradient that grows
    with width at update k. Returns (None, "") when neither happens."""
    ks = []
    for t in range(1, len(prop.steps)):
        e = max((prop.steps[t][o].dx for o in prop.outputs if o in prop.steps[t]), default=NEG)
        if e != NEG and e > 0:
            ks.append((t, f"the engine predicts the output change grows as n^{_exp_str(e)} at step {t}"))
            break
    grown = [t for t, f in loss_grad.items() if f["grows"]]
    if grown:
        t = min(grown)
        ks.append((t, f"the measured loss gradient at update {t + 1} grows with "
                   f"width (slope {_fmt_slope(loss_grad[t]['slope'])})"))
    if not ks:
        return None, ""
    return min(ks)


def _outside_assumptions(records, k, why):
    """Records after step k that disagree are inconclusive, not refuted (see _assumption_step).
    Step k itself and everything before it are judged normally."""
    if k is None:
        return
    for r in records:
        if r.step > k and r.status == "refuted":
            r.status = "inconclusive"
            r.note = ((r.note + "; ") if r.note else "") + (
                f"after step {k} outside the engine's assumptions ({why}): disagreement not "
                "counted as a refutation")


def _fmt_slope(x):
    return "non-finite" if x is None else f"{x:+.2f}"


def _first_blowup(sz, ch):
    """(step, column) of the first non-finite measurement, in step then graph order; or None."""
    bad = ~np.isfinite(sz)
    bad[1:] |= ~np.isfinite(ch[1:])
    for t in range(bad.shape[0]):
        js = np.flatnonzero(bad[t])
        if js.size:
            return t, int(js[0])
    return None


# ----------------------------------------------------------------------------- judging


def _fit(ws, vals):
    """Least-squares slope of log(vals) against log(width) over every (width, seed) point, and
    its standard error. vals: (widths, seeds), positive and finite. The slope equals the mean of
    the per-seed slopes; the standard error pools the scatter of all points about the line
    (seed-to-seed noise and any bend of the curve, W * S - 2 degrees of freedom):
    se = sqrt(s^2 / (S * Sxx)), s^2 = residual sum of squares / (W S - 2)."""
    lx = np.log(np.asarray(ws, dtype=float))
    y = np.log(vals)
    W, S = y.shape
    xc = lx - lx.mean()
    sxx = float((xc ** 2).sum())
    slope = float((xc[:, None] * (y - y.mean())).sum() / (S * sxx))
    resid = y - (y.mean() + slope * xc[:, None])
    dof = W * S - 2
    se = math.sqrt(float((resid ** 2).sum()) / dof / (S * sxx)) if dof > 0 else 0.0
    return slope, se


def _judge(name, attrs, kind, t, pred, vals, scale, widths, tol: Tolerance, focus,
           uncapped=None) -> Record:
    values = {w: [float(v) for v in vals[i]] for i, w in enumerate(widths)}
    rec = Record(node=name, module=attrs["module"], op=attrs["op"], kind=kind, step=t,
                 slope=None, stderr=None, predicted=pred, status="inconclusive", focus=focus,
                 values=values)
    bad = ~np.isfinite(vals)
    rows_ok = ~bad.any(axis=1)
    # slope over the widths where every seed is finite and positive
    pos = rows_ok & (vals > 0).all(axis=1) if vals.size else rows_ok
    if pos.sum() >= 2:
        rec.slope, rec.stderr = _fit([w for w, k in zip(widths, pos) if k], vals[pos])
        if pos.sum() < len(widths):
            rec.note = f"slope over widths {[w for w, k in zip(widths, pos) if k]}"

    if bad.any():
        rec.blowup = True
        where = [w for w, k in zip(widths, bad.any(axis=1)) if k]
        grows = pred != NEG and pred > 0
        rec.status = "confirmed" if grows else "refuted"
        rec.note = f"non-finite (blow-up) at widths {where}" + ("" if grows else
                                                                 f"; predicted {_pred_text(pred)}")
        return rec
    if pred == NEG:
        if kind == "change":
            s = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
            rel = vals / s
        else:
            rel = vals
        worst = float(np.max(rel)) if rel.size else 0.0
        rec.status = "confirmed" if worst <= tol.zero_rtol else "refuted"
        rec.note = (f"predicted exactly zero; measured max {'relative ' if kind == 'change' else ''}"
                    f"value {worst:.3g}")
        return rec
    if (vals == 0).all():
        rec.status = "refuted"
        rec.note = f"measured exactly zero, predicted {_pred_text(pred)}"
        return rec
    if rec.slope is None:
        rec.status = "inconclusive"
        rec.note = "exactly zero at some widths; no slope"
        return rec
    slope, se = rec.slope, rec.stderr
    if pred > 0:
        if slope >= tol.growth_min and slope >= 3 * se:
            rec.status = "confirmed"
            if slope + 3 * se < float(pred) - tol.tol:
                rec.note = (f"growth confirmed, exponent not: slope {slope:+.2f} well below the "
                            f"predicted {_exp_str(pred)} (saturation, lower-order terms, or an "
                            "alignment the engine over-counts)")
        elif slope + 3 * se < tol.growth_min / 2:
            rec.status = "refuted"
            rec.note = f"predicted growth {_pred_text(pred)} but no growth measured"
        else:
            rec.status = "inconclusive"
        return rec
    if uncapped is not None and float(pred) - tol.tol - 2 * se <= slope <= float(uncapped) + tol.tol + 2 * se:
        # a bounded op (tanh, softmax, a norm) fed a growing change: Theta(1) once saturated,
        # growing up to n^uncapped before that
        rec.status = "confirmed"
        rec.note = (f"saturating: Theta(1) once saturated, up to n^{_exp_str(uncapped)} before; "
                    f"measured {slope:+.2f}")
        return rec
    dev = abs(slope - float(pred))
    if dev > tol.tol + 3 * se:
        rec.status = "refuted"
    elif dev <= tol.tol + 2 * se and se <= tol.max_stderr:
        rec.status = "confirmed"
    else:
        rec.status = "inconclusive"
    return rec


def _compose(records, prop, tol: Tolerance):
    """Second pass over size records after training.

    mean |x_t| = mean |x_0 + (x_t - x_0)| has two terms, n^x (init) and n^dx_t (change), each
    tested by its own record (the step-0 size and the step-t change). At finite widths the term
    with the smaller exponent can still be the larger one (muP + Adam hidden biases: init
    1/sqrt(3*64) = 0.07 at n = 64 against a change of 3 x lr 1e-3), and the local slope of the
    sum then lies between the two measured slopes, on its way to max(x, dx_t). A size record the
    first pass did not confirm, whose slope lies between its two terms' measured slopes (within
    tol + 2 stderr), takes the worse status of those two records (both confirmed -> confirmed,
    either refuted -> refuted, else inconclusive), with a note; except that a predicted growth
    (max(x, dx_t) > 0) is never confirmed this way, only by growth of the size itself (the
    change of a bounded op such as tanh saturates before it overtakes the init): inconclusive.
    A size slope outside that band keeps its first-pass status."""
    by = {(r.node, r.kind, r.step): r for r in records}
    order = {"confirmed": 0, "inconclusive": 1, "refuted": 2}
    for r in records:
        if r.kind != "size" or r.step == 0 or r.status == "confirmed" or r.blowup or r.slope is None:
            continue
        st = prop.steps[r.step][r.node]
        if st.x == st.dx or NEG in (st.x, st.dx):
            continue
        r0, rc = by.get((r.node, "size", 0)), by.get((r.node, "change", r.step))
        if r0 is None or rc is None or r0.slope is None or rc.slope is None or rc.blowup:
            continue
        lo, hi = sorted((r0.slope, rc.slope))
        band = tol.tol + 2 * r.stderr
        if not lo - band <= r.slope <= hi + band:
            continue
        r.status = max((r0.status, rc.status), key=order.get)
        if r.status == "confirmed" and r.predicted > 0:
            # a growth is confirmed only by growth seen in this very record: the change may
            # still saturate before it overtakes the init (a bounded op such as tanh)
            r.status = "inconclusive"
        bigger = "init" if _last(r0) >= _last(rc) else "change"
        r.note = (f"two terms: slope between the init ({r0.slope:+.2f}, n^{_exp_str(st.x)}) and "
                  f"change ({rc.slope:+.2f}, n^{_exp_str(st.dx)}) slopes, the {bigger} term larger "
                  f"at width {max(r.values)}; status of those two records"
                  + ("; predicted growth not yet visible in the size" if r.predicted > 0 else ""))


def _first_order_notes(records, prop):
    """Diagnose change records that did not confirm a prediction above the step-1 exponent:
    if x_t - x_0 ~ t (x_1 - x_0) at every width, training is still in its first-order
    (small learning rate) regime at these widths and the predicted higher-order growth, whose
    coefficient carries more powers of the learning rate, cannot show yet. Adds a note only."""
    by = {(r.node, r.kind, r.step): r for r in records}
    for r in records:
        if r.kind != "change" or r.step < 2 or r.status == "confirmed" or r.blowup:
            continue
        r1 = by.get((r.node, "change", 1))
        p1 = prop.steps[1][r.node].dx
        if r1 is None or r1.status != "confirmed" or not (r.predicted > p1):
            continue
        ratios = []
        for w in r.values:
            a, b = r.mean_values[w], r1.mean_values[w]
            if math.isfinite(a) and math.isfinite(b) and b > 0:
                ratios.append(a / b / r.step)
        if ratios and all(0.8 <= x <= 1.25 for x in ratios):
            r.note = ((r.note + "; ") if r.note else "") + (
                f"first-order regime: x_t - x_0 = {np.mean(ratios):.2f} t (x_1 - x_0) at every "
                f"width; the predicted n^{_exp_str(r.predicted)} (above step 1's "
                f"n^{_exp_str(p1)}) is higher order in the learning rate and needs larger widths "
                "or learning rates to show")


def _last(r: Record) -> float:
    v = r.mean_values[max(r.values)]
    return v if math.isfinite(v) else 0.0


# ----------------------------------------------------------------------------- text


_MARK = {"confirmed": "ok", "refuted": "REFUTED", "inconclusive": "?"}


def _cell(r: Record | None) -> str:
    if r is None:
        return ""
    if r.blowup:
        s = "blow-up"
    elif r.slope is None:
        s = "zero" if r.predicted == NEG and r.status == "confirmed" else "-"
    else:
        s = f"{r.slope:+.2f}"
    return f"{s} ({_exp_str(r.predicted) if r.predicted != NEG else 'zero'}) {_MARK[r.status]}"


def _format(rep: CheckReport) -> str:
    c = rep.counts()
    lines = [
        f"tensorprog check: {rep.verdict.upper()}   ({rep.optimizer}, widths {list(rep.widths)}, "
        f"{rep.steps} steps, {rep.seeds} seeds, {rep.device} {rep.dtype}, "
        f"{rep.seconds.get('total', 0):.1f}s)",
        f"  {len(rep.records)} predictions: {c['confirmed']} confirmed, {c['refuted']} refuted, "
        f"{c['inconclusive']} inconclusive. Cells: measured slope (predicted exponent) status.",
        "",
    ]
    by = {(r.node, r.kind, r.step): r for r in rep.records}
    focus = [n for n in dict.fromkeys(r.node for r in rep.records if r.focus)]
    steps = range(rep.steps + 1)
    head = f"  {'node':28s} {'module':24s} {'kind':6s} " + " ".join(f"{'step ' + str(t):>22s}" for t in steps)
    lines.append(head)
    for n in focus:
        for kind in ("size", "change"):
            cells = [_cell(by.get((n, kind, t))) for t in steps]
            mod = by.get((n, "size", 0)).module if by.get((n, "size", 0)) else ""
            lines.append(f"  {n[:28]:28s} {(mod or '-')[:24]:24s} {kind:6s} "
                         + " ".join(f"{x:>22s}" for x in cells))
    grow = {}
    for r in rep.unstable():
        grow.setdefault((r.node, r.kind), r)
    if grow:
        lines += ["", "  growing with width (predicted and measured; the model is not width-stable there):"]
        for r in list(grow.values())[:20]:
            what = "blew up (non-finite)" if r.blowup else f"measured slope {r.slope:+.2f}"
            lines.append(f"    {r.module or r.node} ({r.node}, {r.op}) {r.kind} from step {r.step}: "
                         f"predicted {_pred_text(r.predicted)}, {what}")
    if rep.blowups:
        b = rep.blowups[0]
        lines.append(f"  blow-up: non-finite values in {len(rep.blowups)} run(s); first at width "
                     f"{b.width}, seed {b.seed}, step {b.step}, node {b.node} ({b.module or 'top'})")
    bad = rep.refuted()
    if bad:
        lines += ["", f"  refuted ({len(bad)}):"]
        for r in bad[:40]:
            lines.append(f"    {r.node} ({r.module or '-'}, {r.op}) {r.kind} step {r.step}: predicted "
                         f"{_pred_text(r.predicted)}, measured "
                         + (f"slope {r.slope:+.2f} +- {r.stderr:.2f}" if r.slope is not None else "-")
                         + (f"; {r.note}" if r.note else ""))
        if len(bad) > 40:
            lines.append(f"    ... {len(bad) - 40} more")
    for n in rep.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plot


def _group_key(r: Record) -> str:
    mod = re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", r.module or "")
    return f"{mod or 'top'}:{r.op}"


def _plot(rep: CheckReport, path: str, max_groups: int) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    recs = [r for r in rep.records if r.focus]
    groups: dict[str, list[Record]] = {}
    for r in recs:
        groups.setdefault(_group_key(r), []).append(r)
    keys = list(groups)[:max_groups]
    T = rep.steps
    fig = Figure(figsize=(4 * (T + 1), 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, T + 1, squeeze=False)
    cmap = [f"C{i % 10}" for i in range(len(keys))]
    ws = np.asarray(rep.widths, dtype=float)
    for row, kind in enumerate(("size", "change")):
        for t in range(T + 1):
            ax = axes[row][t]
            if kind == "change" and t == 0:
                ax.axis("off")
                continue
            for color, key in zip(cmap, keys):
                members = [r for r in groups[key] if r.kind == kind and r.step == t]
                if not members:
                    continue
                curves = np.array([[r.mean_values[w] for w in rep.widths] for r in members])
                with np.errstate(invalid="ignore", divide="ignore"):
                    y = np.exp(np.nanmean(np.log(np.where(curves > 0, curves, np.nan)), axis=0))
                ok = np.isfinite(y)
                if ok.sum() == 0:
                    continue
                blown = any(r.blowup for r in members)
                ax.plot(ws[ok], y[ok], "o-", color=color, ms=3, lw=1.2,
                        label=key + (" (blow-up)" if blown else ""))
                i0 = int(np.argmax(ok))
                for pred in dict.fromkeys(r.predicted for r in members):  # one per distinct exponent
                    if pred is not None and pred != NEG:
                        ax.plot(ws, y[i0] * (ws / ws[i0]) ** float(pred), "--", color=color, lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(ws)
            ax.set_xticklabels([str(int(w)) for w in ws], fontsize=7)
            ax.set_xlabel("width")
            ax.set_title(f"{'mean |x_t|' if kind == 'size' else 'mean |x_t - x_0|'}, step {t}",
                         fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[1][0].legend(handles, labels, loc="center", fontsize=7, frameon=False)
    fig.suptitle(f"tensorprog check: {rep.verdict} ({rep.optimizer}; dashed: predicted slopes)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------- CLI


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``tensorprog check`` on an argparse (sub)parser."""
    parser.add_argument("target", nargs="?", help="FILE.py:factory (a function width -> nn.Module). "
                        "The file may also define example_inputs, make_optimizer, loss, data.")
    parser.add_argument("--example", choices=("mlp", "cnn", "gpt"),
                        help="check a zoo example instead of a file")
    parser.add_argument("--param", default="mup", choices=("sp", "ntk", "mup", "mup_table8"),
                        help="zoo parametrization (with --example)")
    parser.add_argument("--optimizer", default=None, choices=("adam", "sgd", "adamw"),
                        help="optimizer (zoo) or default optimizer class for a file without "
                             "make_optimizer (default adam)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: adam 1e-3, sgd 1e-2)")
    parser.add_argument("--widths", nargs="+", default=None,
                        help="widths, space- or comma-separated (default 64 ... 2048; a zoo "
                             "example on the CPU: 64 128 256 512)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--plot", default=None, help="write the coordinate-check PNG here")
    parser.add_argument("--json", default=None, help="write the full report as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--inputs", help="name of example_inputs in FILE (default: example_inputs)")
    parser.add_argument("--make-optimizer", dest="make_optimizer",
                        help="name of make_optimizer(model) in FILE (default: make_optimizer)")
    parser.add_argument("--loss", help="name of loss(output, inputs) in FILE (default: loss)")
    return parser


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in re.split(r"[,\s]+", str(s).strip()) if x]
    except ValueError:
        raise CheckError(f"--widths must be integers (e.g. --widths 64 128 256), got {s!r}.") from None


def _load_target(target: str):
    """(module, factory) for FILE.py:factory, with the CLI's own file loader."""
    from ..cli import _load_file

    if ":" not in target:
        raise CheckError(f"target must be FILE.py:factory, got {target!r}.")
    path, name = target.rsplit(":", 1)
    mod = _load_file(path)
    if not hasattr(mod, name):
        raise CheckError(f"{path} defines no {name!r} (the factory width -> model).")
    return mod, getattr(mod, name)


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tensorprog check``; returns the exit code (0 unless a prediction is refuted: 1)."""
    kw: dict[str, Any] = {}
    if args.example:
        from ..zoo import example
        ex = example(args.example, param=args.param, optimizer=args.optimizer or "adam", lr=args.lr)
        factory = ex.factory
        kw.update(example_inputs=ex.example_inputs, make_optimizer=ex.make_optimizer, loss=ex.loss)
        default_widths = (64, 128, 256, 512) if _device(args.device).type == "cpu" else \
            (64, 128, 256, 512, 1024, 2048)
    elif args.target:
        mod, factory = _load_target(args.target)
        names = {"example_inputs": getattr(args, "inputs", None),
                 "make_optimizer": getattr(args, "make_optimizer", None),
                 "loss": getattr(args, "loss", None), "data": None}
        for key, name in names.items():
            if name and not hasattr(mod, name):
                raise CheckError(f"{args.target.rsplit(':', 1)[0]} defines no {name!r} (for {key}).")
            if hasattr(mod, name or key):
                kw[key] = getattr(mod, name or key)
        if "make_optimizer" not in kw:
            kind = "sgd" if args.optimizer == "sgd" else "adam"
            lr = args.lr or DEFAULT_LR[kind]
            cls = torch.optim.SGD if kind == "sgd" else torch.optim.Adam
            kw["make_optimizer"] = lambda m: cls(m.parameters(), lr=lr)
        default_widths = (64, 128, 256, 512, 1024, 2048)
    else:
        raise CheckError("give FILE.py:factory or --example NAME.")
    widths = [w for item in args.widths for w in _int_list(item)] if args.widths else default_widths
    rep = check(factory, widths, steps=args.steps, seeds=args.seeds,
                device=args.device, progress=not args.quiet, **kw)
    print(rep)
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        rep.plot(args.plot)
        print(f"wrote {args.plot}")
    return 1 if rep.verdict == "refuted" else 0


def main(argv=None) -> int:  # standalone entry: python -m tensorprog.check ...
    parser = add_cli_arguments(argparse.ArgumentParser(prog="tensorprog check"))
    args = parser.parse_args(argv)
    try:
        return cli_main(args)
    except TensorprogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
