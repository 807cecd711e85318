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

Each (width, seed) run is one pure function (``distribute.measure_run``) of picklable inputs
(factory, inputs / data, optimizer factory, loss, the measured nodes by name, steps, device,
dtype) to plain arrays, so ``backend="local"`` (a process pool) and ``backend="ray"`` (a
cluster) run exactly what ``backend="serial"`` runs in this process; a worker exports its width
itself (once per width and process). Ctrl-C keeps the finished runs: a partial report.

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
* a non-finite value (NaN / inf) at some width: a **blow-up**, never a confirmation (a
  non-finite value measures no size). Refuted when it reads as growth with width that the
  prediction rules out (finite at the smallest widths, non-finite from some width on, Theta(1)
  or less predicted); otherwise undetermined (status "inconclusive", the reason in the note):
  non-finite at every width is a numerical fault (float16 with Adam's eps = 1e-8, which is 0 in
  float16; a NaN in the model), and a blow-up where growth is predicted agrees with it but does
  not measure it. A non-finite loss gradient that the (sampled) measurements missed marks every
  later step of that run non-finite. Each such record's note and the report's ``blowups`` say
  where it first went non-finite (width, seed, step, node).
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
* second-order term (``second_order_notes``, a note only): a predicted growth carried by the
  dW dz term alone (second order in the learning rate, e.g. Muon "match_rms_adamw"'s second
  hidden layer: n^1 against n^1/2 for dW z0 and W0 dz), measured at the first-order exponent
  and clearly below its own, gets a note saying it is pre-asymptotic.

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

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import sympy as sp
import torch
import torch.nn as nn

from ..errors import CheckError
from ..jsonio import JSONMixin
from ..validate import check_steps
from ..rng import preserves_rng
from .judge import (NEG, Blowup, Record, Tolerance, assumption_step, compose,
                    first_order_notes, judge, loss_grad_fits, non_finite_notes, outside_assumptions,
                    second_order_notes)
from .data import FirstBatchOf, data_source
from .distribute import CHECK_BACKENDS, MeasureSpec, measure_all, run_jobs
from .memory import check_memory
from .runner import (EXPORT_MODES, canonical_names, check_widths, default_loss, default_optimizer,
                     measured_nodes, progress_printer, reference_nodes, resolve_device,
                     reusable_programs, roundoff_recheck)

__all__ = ["check", "CheckReport", "Record", "Tolerance", "Blowup", "default_loss"]


@dataclass(eq=False)
class CheckReport(JSONMixin):
    """What ``check`` measured. ``str()`` is a readable table; ``to_dict()`` is JSON-able;
    ``from_json`` / ``from_dict`` read it back into an equal report (without ``graph`` and
    ``propagation``, which JSON does not carry)."""

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
    #: why the report is partial ("" when every run finished): Ctrl-C stopped the runs; the
    #: records are judged on the widths whose every seed finished (``widths``)
    partial: str = ""
    #: (width, seed) runs that did not finish (a partial report)
    missing: list = field(default_factory=list)
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
            "seconds": self.seconds, "notes": self.notes, "partial": self.partial,
            "missing": [list(m) for m in self.missing],
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CheckReport":
        """Inverse of ``to_dict`` (decoded JSON: ``jsonio.read_json``)."""
        from ..jsonio import from_jsonable

        d = from_jsonable(d)  # plain json.loads output too
        return cls(records=[Record.from_dict(r) for r in d["records"]], widths=tuple(d["widths"]),
                   steps=d["steps"], seeds=d["seeds"], optimizer=d["optimizer"],
                   device=d["device"], dtype=d["dtype"], tolerance=Tolerance(**d["tolerance"]),
                   blowups=[Blowup(**b) for b in d["blowups"]], skipped=dict(d["skipped"]),
                   seconds=dict(d["seconds"]), notes=list(d["notes"]),
                   loss_grad={int(k): v for k, v in d["loss_grad"].items()},
                   partial=d.get("partial", ""), missing=[tuple(m) for m in d.get("missing", [])])

    def __str__(self) -> str:
        from ..text.check import format_check

        return format_check(self)

    def plot(self, path: str, *, max_groups: int = 16) -> str:
        """Write the coordinate-check figure to ``path`` (PNG); returns the path."""
        from .plots import plot_check

        return plot_check(self, path, max_groups)


@preserves_rng
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
    adam_eps: str = "limit",
    max_memory: float | str | None = "auto",
    backend: str = "serial",
    workers: int | None = None,
    ray_options: dict | None = None,
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
    this many (None: every entry; see the module docstring). adam_eps: the engine's Adam eps
    ("limit" or "asymptotic", as ``analyze``). max_memory: refuse (``CheckError``) before
    training when the largest width's ``memory_estimate`` exceeds this many bytes; "auto" (the
    device's free memory) or None (no check).

    backend: where the (width, seed) runs train, as for ``transfer.sweep``: "serial" (default:
    this process, one after the other), "local" (a pool of ``workers`` processes, default one per
    CPU; the factory, inputs, data, optimizer and loss must pickle: module-level functions or
    ``functools.partial`` of them) or "ray" (one Ray task per run; ``ray_options`` such as
    ``{"num_gpus": 1}``, the default on CUDA; ``workers``: CPUs of a fresh local Ray instance).
    Each run is the same pure function of the same inputs wherever it runs, and the judging is
    the same: a check spread over a cluster reads as the local one. With "ray", device "auto"
    means CUDA when ``ray_options`` asks for GPUs, and max_memory "auto" is not checked here (the
    workers' devices are not this machine's). max_memory is the need of one run: ``workers``
    runs at once on one machine need that much each.

    Ctrl-C (KeyboardInterrupt) during the runs stops them within seconds (workers killed) and
    returns a partial report (``partial`` says why, ``missing`` lists the (width, seed) runs that
    did not finish): its records are judged on the widths whose every seed finished, and are
    inconclusive ("undetermined") where fewer than two did. It saves with ``to_json``.
    Returns a ``CheckReport``.
    """
    from ..predict.engine import propagate
    from ..graph.trace import trace, WidthGraph

    t_start = time.perf_counter()
    widths = check_widths(widths)
    steps = check_steps(steps, CheckError)
    seeds = check_steps(seeds, CheckError, "seeds")
    if not callable(factory) or isinstance(factory, nn.Module):
        raise CheckError("factory must be a callable width -> nn.Module (e.g. `lambda n: "
                         "MyModel(hidden=n)`), not a model instance.")
    if optimizer is not None and optimizer not in ("sgd", "adam"):
        from ..theory.abc import optimizer_class
        optimizer = optimizer_class(optimizer)
    tolerance = tolerance or Tolerance()
    if sample is not None and (not isinstance(sample, int) or sample < 1):
        raise CheckError(f"sample must be a positive number of entries or None, got {sample!r}.")
    if backend not in CHECK_BACKENDS:
        raise CheckError(f"unknown backend {backend!r}; choose one of: {', '.join(CHECK_BACKENDS)}.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise CheckError(f"workers must be a positive int (or None: one per CPU), got {workers!r}.")
    ray_options = dict(ray_options or {})
    dev = remote_device(device, ray_options) if backend == "ray" else resolve_device(device)
    if backend == "ray" and dev.type == "cuda":
        ray_options.setdefault("num_gpus", 1)
    say = progress_printer(progress)
    if make_optimizer is None:
        make_optimizer = default_optimizer(optimizer or "adam")
    loss_fn = loss if loss is not None else default_loss
    data_fn = data_source(data)
    if example_inputs is None and data_fn is not None:
        example_inputs = FirstBatchOf(data_fn)

    # --- predictions
    t0 = time.perf_counter()
    if graph is None:
        tw = check_widths(trace_widths, "trace_widths") if trace_widths is not None else widths[:3]
        say(f"tracing at widths {tw} for the predictions")
        from ..errors import TraceError
        try:
            graph = trace(factory, tw, example_inputs=example_inputs, make_optimizer=make_optimizer)
        except TraceError as e:
            raise CheckError(f"could not trace the model for its predictions: {e}") from e
    elif not isinstance(graph, WidthGraph):
        raise CheckError(f"graph must be a WidthGraph from tensorprog.trace, got {type(graph).__name__}.")
    special = next((p for p in graph.programs.values() if getattr(p, "specialised", False)), None)
    if special is not None:
        raise CheckError(
            f"{special.note}: that graph is right for the example inputs only, while check trains "
            "other seeds and steps whose data take other branches, so it cannot run it as the "
            "model. Make the branch traceable (torch.where / torch.cond) to check this model.")
    if optimizer is None:
        from ..graph.optimizers import optimizer_class as steps_class
        from ..theory.abc import optimizer_class
        optimizer = (steps_class(graph) or optimizer_class(graph.optimizer)) if graph.optimizer else "adam"
    prop = propagate(graph, optimizer, steps=steps, align=alignment, adam_eps=adam_eps)
    t_predict = time.perf_counter() - t0
    if not (backend == "ray" and max_memory == "auto"):
        check_memory(graph, max(widths), dtype, optimizer, dev, max_memory)

    EXPORT_MODES.clear()
    nodes, skipped, focus = measured_nodes(graph)
    # nodes predicted exactly zero (size or change) are measured over every entry
    exact_cols = [j for j, name in enumerate(nodes) if prop.steps[0][name].x == NEG
                  or any(prop.steps[t][name].dx == NEG for t in range(1, steps + 1))]
    ref_nodes = reference_nodes(graph)
    notes = []
    if prop.unknown:
        notes.append("ops without an engine rule (predicted as elementwise): "
                     + ", ".join(f"{k} ({len(v)}x)" for k, v in prop.unknown.items()))

    # --- measurement: every (width, seed) run, on the backend
    T, S = steps, seeds
    spec = MeasureSpec(factory, example_inputs, data_fn, make_optimizer, loss_fn, T, str(dev), dtype,
                       sample, nodes, exact_cols, ref_nodes, canonical_names(graph))
    modules = [graph.node(n)["module"] for n in nodes]
    m = measure_all(spec, widths, S, modules, backend=backend, workers=workers,
                    ray_options=ray_options, programs=reusable_programs(graph, dev, dtype), say=say)
    blowups = m.blowups
    notes.extend(m.notes)
    t_export, t_train = m.export_s, m.train_s
    all_widths, missing, partial = widths, [], ""
    if m.interrupted:  # judge the widths whose every seed finished
        complete = [wi for wi in range(len(widths)) if m.done[wi].all()]
        missing = [(w, s) for wi, w in enumerate(widths) for s in range(S) if not m.done[wi, s]]
        widths = [widths[wi] for wi in complete]
        partial = (f"interrupted after {int(m.done.sum())} of {len(all_widths) * S} runs; judged "
                   f"on widths {widths} of {list(all_widths)}"
                   + ("" if len(widths) >= 2 else " (fewer than 2: every prediction undetermined)"))
    else:
        complete = list(range(len(widths)))
    size, change, ref, lgrad = (a[complete] for a in (m.size, m.change, m.ref, m.lgrad))
    judged = len(widths) >= 2

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
                rec = judge(name, a, kind, t, pred, vals, scale, widths, tolerance, name in focus, cap)
                if not judged:
                    rec.status, rec.slope, rec.stderr = "inconclusive", None, None
                    rec.note = (f"undetermined: only widths {widths} finished (interrupted); a "
                                "slope needs two")
                records.append(rec)
    if not judged:
        return CheckReport(records=records, widths=tuple(widths), steps=T, seeds=S,
                           optimizer=optimizer, device=str(dev), dtype=str(dtype).replace("torch.", ""),
                           tolerance=tolerance, blowups=blowups, skipped=skipped,
                           seconds={"total": time.perf_counter() - t_start, "predict": t_predict,
                                    "export": t_export, "train": t_train},
                           notes=notes, partial=partial, missing=missing, graph=graph,
                           propagation=prop)
    if dtype != torch.float64 and not partial:
        roundoff_recheck(records, nodes, widths[0], tolerance, say,
                         lambda: float64_run(spec, widths[0], backend, workers, ray_options))
    loss_grad = loss_grad_fits(lgrad, widths, tolerance)
    k_assume, why = assumption_step(loss_grad, prop)
    outside_assumptions(records, k_assume, why)
    if k_assume is not None:
        notes.append(f"predictions after step {k_assume} are outside the engine's assumptions "
                     f"({why}); disagreements there are reported as inconclusive.")
    compose(records, prop, tolerance)
    first_order_notes(records, prop)
    second_order_notes(records, prop, graph, tolerance)
    non_finite_notes(records, blowups)
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
                       notes=notes, loss_grad=loss_grad, partial=partial, missing=missing, graph=graph,
                       propagation=prop)


def float64_run(spec: MeasureSpec, w: int, backend, workers, ray_options):
    """(sizes, changes) of seed 0 at width w trained in float64, every entry measured (the
    roundoff re-measurement), on the check's backend."""
    import dataclasses

    out = []
    spec64 = dataclasses.replace(spec, dtype=torch.float64, sample=None, exports={})
    run_jobs(spec64, [((0, 0), w, 0)], out.append, backend=backend, workers=1,
             ray_options=ray_options)
    res = out[0]
    if res.error is not None:
        raise CheckError(f"the float64 re-measurement at width {w} failed: {res.error}")
    return res.size, res.change


def remote_device(device, ray_options: dict) -> torch.device:
    """The device Ray workers train on: not checked against this machine (the cluster's may
    differ); "auto" is CUDA when ``ray_options`` asks for GPUs, else this machine's choice."""
    if device in (None, "auto"):
        return torch.device("cuda") if ray_options.get("num_gpus") else resolve_device("auto")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CheckError(f"unknown device {device!r}: {e}") from None
    return d if d.type == "cuda" else resolve_device(device)
