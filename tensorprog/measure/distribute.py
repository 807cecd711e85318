"""``check``'s (width, seed) runs, in this process or spread over the sweep backends.

One run is a pure function, ``measure_run(spec, key, width, seed)``: from a picklable
``MeasureSpec`` (the factory, inputs / data, optimizer factory and loss, the traced graph's
measured nodes as plain names, steps, device, dtype) to plain arrays (``RunResult``). Nothing
of the traced graph travels: a worker exports the model at its width itself (once per width
and process) and matches the export to the reference nodes by position, as the in-process run
does. ``measure_all`` runs every (width, seed) with

* ``backend="serial"``: in this process, one width after the other (reusing ``trace``'s exports);
* ``backend="local"``: a process pool (``transfer.backends.run_local``: forkserver workers, one
  torch thread each, killed on Ctrl-C);
* ``backend="ray"``: one Ray task per run (``transfer.backends.run_ray``: ``ray_options`` such as
  ``{"num_gpus": 1}`` per task, a crashed worker retried once),

and collects the arrays into the same (width, seed, step, node) tables, so the judging that
follows cannot tell where a run was made. Ctrl-C keeps the runs that finished
(``Measurements.done``).
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CheckError, TensorprogError
from .data import batches_for
from .judge import Blowup, first_blowup
from .runner import (Runner, build_model, eps_underflow_notes, free_memory, make_opt,
                     program_for)

__all__ = ["MeasureSpec", "RunResult", "Measurements", "measure_run", "measure_job",
           "measure_all", "CHECK_BACKENDS"]

CHECK_BACKENDS = ("serial", "local", "ray")


@dataclass
class MeasureSpec:
    """Everything one (width, seed) run needs; picklable when the user's callables are."""
    factory: Callable
    example_inputs: Any
    data_fn: Callable | None
    make_optimizer: Callable
    loss_fn: Callable
    steps: int
    device: str
    dtype: torch.dtype
    sample: int | None
    nodes: list[str]                 # measured nodes (the traced graph's names), the columns
    exact_cols: list[int]            # columns measured over every entry
    ref_nodes: list[tuple]           # (op, target) of the reference program's nodes
    canon: list[str]                 # the reference program's node names, by position
    #: {width: exported program} made in this process (a worker's cache; empty when pickled)
    exports: dict = field(default_factory=dict, repr=False)

    def __getstate__(self):
        return {**self.__dict__, "exports": {}}


@dataclass
class RunResult:
    key: tuple                       # (width index, seed)
    width: int
    seed: int
    size: np.ndarray                 # (T + 1, N) mean |x_t|
    change: np.ndarray               # (T + 1, N) mean |x_t - x_0|
    ref: np.ndarray                  # (N,) mean |x_0|
    lgrad: np.ndarray                # (T,) mean |d loss / d output| at each update
    lgrad_measured: list[bool]
    export_s: float
    train_s: float
    notes: list[str]
    error: str | None = None         # the failure's text (exceptions may not pickle)
    user_error: bool = False         # a tensorprog error (its message says it all)


def measure_run(spec: MeasureSpec, key, w: int, s: int, programs: dict | None = None,
                say: Callable = lambda msg: None) -> RunResult:
    """Train ``factory(w)`` under seed ``s`` for ``spec.steps`` steps, measuring every node
    (``Runner.train``). The export at width w comes from ``programs`` (``trace``'s, reused),
    else from ``spec.exports`` (this process's), else is made from the seed-0 model, as the
    in-process check always did; raises on failure."""
    dev, dtype = torch.device(spec.device), spec.dtype
    t0 = time.perf_counter()
    ep = (programs or {}).get(w)
    ep = spec.exports.get(w) if ep is None else ep
    if ep is None or s == 0:
        known = {w: ep} if ep is not None else {}
        ep, model = program_for(known, spec.factory, w, spec.example_inputs, dev, dtype, say)
        if w not in spec.exports and w not in (programs or {}):
            spec.exports.clear()  # one width's program at a time
            spec.exports[w] = ep
        if s != 0:
            model = build_model(spec.factory, w, dev, dtype, s)
    else:
        model = build_model(spec.factory, w, dev, dtype, s)
    runner = Runner(ep, spec.canon, spec.ref_nodes, spec.nodes, w, spec.sample, spec.exact_cols)
    t1 = time.perf_counter()
    T = spec.steps
    batches = batches_for(spec.data_fn, spec.example_inputs, model, w, dev, dtype, T + 1)
    opt = make_opt(spec.make_optimizer, model, w)
    notes = eps_underflow_notes(opt, dtype)
    sz, ch, r0, lg = runner.train(model, opt, batches, spec.loss_fn, T)
    return RunResult(key, w, s, sz, ch, r0, lg, list(runner.lgrad_measured), t1 - t0,
                     time.perf_counter() - t1, notes)


def measure_job(spec: MeasureSpec, key, w: int, s: int) -> RunResult:
    """``measure_run`` in a worker: a failure comes back as text (it may not pickle)."""
    try:
        return measure_run(spec, key, w, s)
    except Exception as e:  # noqa: BLE001 -- reported with the run's width and seed by the parent
        user = isinstance(e, TensorprogError)
        text = str(e) if user else f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        empty = np.zeros(0)
        return RunResult(key, w, s, empty, empty, empty, empty, [], 0.0, 0.0, [], text, user)
    finally:
        free_memory(torch.device(spec.device))


@dataclass
class Measurements:
    """The (width, seed) tables ``check`` judges; ``done[wi, s]``: that run finished."""
    size: np.ndarray                 # (W, S, T + 1, N)
    change: np.ndarray
    ref: np.ndarray                  # (W, S, N)
    lgrad: np.ndarray                # (W, S, T)
    done: np.ndarray                 # (W, S) bool
    blowups: list[Blowup]
    notes: list[str]
    export_s: float = 0.0
    train_s: float = 0.0
    interrupted: bool = False


def measure_all(spec: MeasureSpec, widths, seeds: int, modules: list[str], *, backend: str,
                workers: int | None, ray_options: dict | None, programs: dict,
                say: Callable) -> Measurements:
    """Every (width, seed) run of ``spec`` on ``backend`` into ``Measurements`` (see the module
    docstring); ``modules[j]``: the module of node column j (named in blow-ups). Ctrl-C (or
    a KeyboardInterrupt) stops the runs and returns what finished, ``interrupted`` set."""
    W, S, T, N = len(widths), seeds, spec.steps, len(spec.nodes)
    m = Measurements(size=np.full((W, S, T + 1, N), np.nan), change=np.full((W, S, T + 1, N), np.nan),
                     ref=np.full((W, S, N), np.nan), lgrad=np.full((W, S, T), np.nan),
                     done=np.zeros((W, S), dtype=bool), blowups=[], notes=[])
    jobs = [((wi, s), w, s) for wi, w in enumerate(widths) for s in range(S)]

    def collect(res: RunResult) -> None:
        wi, s = res.key
        if res.error is not None:
            where = f"width {res.width}, seed {res.seed}"
            raise CheckError(f"{where}: {res.error}" if res.user_error else
                             f"the run at {where} failed in its worker:\n{res.error}")
        m.size[wi, s], m.change[wi, s], m.ref[wi, s], m.lgrad[wi, s] = \
            res.size, res.change, res.ref, res.lgrad
        if wi == 0 and s == 0:
            m.notes.extend(res.notes)
        blow = first_blowup(res.size, res.change)
        if blow is not None:
            t, j = blow
            m.blowups.append(Blowup(res.width, s, t, spec.nodes[j], modules[j]))
        elif any(k and not np.isfinite(v) for k, v in zip(res.lgrad_measured, res.lgrad)):
            # a non-finite loss gradient the sampled measurements missed: every step after
            # that update measures a corrupted model, so none of it may confirm anything
            t = next(k for k, (ok, v) in enumerate(zip(res.lgrad_measured, res.lgrad))
                     if ok and not np.isfinite(v))
            m.size[wi, s, t + 1:], m.change[wi, s, t + 1:] = np.nan, np.nan
            blow = (t + 1, None)
            m.blowups.append(Blowup(res.width, s, t + 1, "d loss / d output", ""))
        m.done[wi, s] = True
        m.export_s += res.export_s
        m.train_s += res.train_s
        say(f"width {res.width} ({wi + 1}/{W}) seed {s + 1}/{S}: {T} steps in {res.train_s:.2f}s"
            + (f"; non-finite from step {blow[0]} at "
               f"{spec.nodes[blow[1]] if blow[1] is not None else 'the loss gradient'}" if blow else ""))
        if m.done[wi].all():
            say(f"width {res.width} done ({int(m.done.all(axis=1).sum())}/{W} widths)")

    try:
        run_jobs(spec, jobs, collect, backend=backend, workers=workers,
                 ray_options=ray_options, programs=programs, say=say)
    except KeyboardInterrupt:
        m.interrupted = True
        say(f"interrupted: runs stopped; keeping the {int(m.done.sum())} of {W * S} that finished")
    return m


def run_jobs(spec: MeasureSpec, jobs, collect, *, backend: str, workers: int | None,
             ray_options: dict | None, programs: dict | None = None,
             say: Callable = lambda msg: None) -> None:
    """Each job ((width index, seed), width, seed) -> ``collect(RunResult)`` on ``backend``."""
    from ..transfer.backends import run_local, run_ray

    if backend == "serial":
        last = None
        for key, w, s in jobs:
            if last is not None and w != last:
                spec.exports.clear()
                free_memory(torch.device(spec.device))
            last = w
            collect(measure_run(spec, key, w, s, programs, say))
        spec.exports.clear()
        free_memory(torch.device(spec.device))
        return
    if backend == "ray":
        width_of = {key: w for key, w, _ in jobs}
        run_ray(spec, jobs, workers, ray_options or {}, collect,
                lambda key: f"the run at width {width_of[key]}, seed {key[1]}",
                job=measure_job, error=CheckError, what="check")
        return
    check_picklable(spec)
    n = min(workers or os.cpu_count() or 1, len(jobs))
    run_local(spec, jobs, n, collect, job=measure_job, error=CheckError)


def check_picklable(spec: MeasureSpec) -> None:
    """The user's pieces pickle (``transfer.sweep.check_picklable``), as a ``CheckError``."""
    from ..errors import TransferError
    from ..transfer.sweep import check_picklable as check_parts

    try:
        check_parts({"factory": spec.factory, "example_inputs": spec.example_inputs,
                     "data": spec.data_fn, "make_optimizer": spec.make_optimizer,
                     "loss": spec.loss_fn})
    except TransferError as e:
        raise CheckError(str(e)) from None
