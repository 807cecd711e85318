"""``sweep``: train every (width, hyperparameter value, seed) and return a ``Sweep`` (one
hyperparameter) or ``HPSweeps`` (several); ``run_trials``: the backends loop, shared with ``tune``.
See the package docs.
"""
from __future__ import annotations

import functools
import math
import os
import pickle
import sys
import time
from collections.abc import Iterator
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import TransferError
from ..validate import as_int, check_widths
from .backends import BACKENDS, TrialConfig, TrialResult, run_local, run_ray, run_trial
from .hparams import (HPData, HPFactory, HPOptimizer, TrialPoint, check_base, check_values,
                      default_scale, describe_point, route_hparams)
from .result import HPSweeps, Sweep
from .tasks import default_forward, default_optimizer

__all__ = ["sweep", "run_trials", "make_trial_config", "describe", "check_picklable"]


def describe(obj) -> str:
    if isinstance(obj, functools.partial):
        return f"functools.partial({describe(obj.func)}, ...)"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', '?')}.{name}"


def check_picklable(parts: dict[str, Any]) -> None:
    main = sys.modules.get("__main__")
    interactive = main is not None and not getattr(main, "__file__", None)
    for what, obj in parts.items():
        try:
            pickle.dumps(obj)
        except Exception as e:  # noqa: BLE001 -- any pickling failure means the same thing
            raise TransferError(
                f"{what} ({describe(obj)}) cannot be sent to worker processes: {type(e).__name__}: "
                f"{e}. backend='local' pickles everything it sends; define {what} as a module-level "
                "function or class (or a functools.partial of one), not a lambda or a function "
                "defined inside another function; or run with backend='serial' (in this process) "
                "or backend='ray' (cloudpickle)") from None
        target = obj.func if isinstance(obj, functools.partial) else obj
        if interactive and getattr(target, "__module__", None) == "__main__":
            raise TransferError(
                f"{what} ({describe(obj)}) is defined in an interactive session (__main__ has no "
                "file), which spawned worker processes cannot import; move it into a module, or "
                "use backend='serial' or backend='ray'")


def _check_sizes(values, what: str, cast, minimum: int, why: str) -> tuple:
    try:
        seq = [cast(v) for v in values]
    except (TypeError, ValueError):
        raise TransferError(f"{what} must be a sequence of numbers; got {values!r}") from None
    if cast is int and any(float(v) != int(v) for v in values):
        raise TransferError(f"{what} must be whole numbers; got {list(values)!r}")
    if len(seq) < minimum:
        raise TransferError(f"{what} needs at least {minimum} value{'s' if minimum > 1 else ''} "
                            f"{why}; got {list(seq)!r}")
    if len(set(seq)) != len(seq):
        raise TransferError(f"{what} has repeated values: {list(seq)!r}")
    return tuple(seq)


def _resolve_data(data, what: str = "sweep"):
    if data is None:
        raise TransferError(f"{what} needs data: a callable (width, seed) -> iterable of batches (e.g. "
                            "stdlib_text_data(...), teacher_student_data(...)) or a list of batches")
    if isinstance(data, torch.Tensor):
        raise TransferError("data is a single tensor; pass a list of batches (data=[batch]) or a "
                            "callable (width, seed) -> iterable of batches")
    if isinstance(data, (list, tuple)):
        if not data:
            raise TransferError("data is an empty list of batches")
        return data
    if isinstance(data, Iterator):
        raise TransferError("data is a one-shot iterator / generator; trials would share and "
                            "exhaust it. "
                            "Pass a callable (width, seed) -> iterator (e.g. a generator function), "
                            "or a list of batches")
    if callable(data):
        return data
    raise TransferError(f"data must be a callable (width, seed) -> iterable of batches or a list of "
                        f"batches; got {type(data).__name__}")


def make_trial_config(factory, hp_names, *, steps: int, data, make_optimizer=None, loss=None,
                      forward=None, average_last: int | None = None, device: str = "cpu",
                      threads: int = 1, what: str = "sweep") -> tuple[TrialConfig, dict]:
    """(``backends.TrialConfig`` whose pieces read a ``TrialPoint``'s hyperparameters, routes).

    Checks the pieces shared by ``sweep`` and ``tune``; ``hp_names``: every hyperparameter a trial
    will carry (swept or fixed), routed by ``hparams.route_hparams``."""
    if not isinstance(steps, int) or steps < 1:
        raise TransferError(f"steps must be a positive int; got {steps!r}")
    average_last = max(1, steps // 10) if average_last is None else int(average_last)
    if not 1 <= average_last <= steps:
        raise TransferError(f"average_last must be in 1..steps={steps}; got {average_last}")
    if threads < 1:
        raise TransferError("threads must be >= 1")
    if not callable(factory):
        raise TransferError(f"factory must be a callable width -> nn.Module; "
                            f"got {type(factory).__name__}")
    data = _resolve_data(data, what)
    if loss is None:
        loss = getattr(data, "loss", None)
        if loss is None:
            raise TransferError("no loss given and the data has no .loss; pass loss=fn(output, batch)")
    make_optimizer = make_optimizer or default_optimizer
    routes = route_hparams(hp_names, factory, make_optimizer, data)
    if "data" in routes.values():
        data = HPData(data, routes)
    cfg = TrialConfig(factory=HPFactory(factory, routes),
                      make_optimizer=HPOptimizer(make_optimizer, routes, steps), loss=loss,
                      data=data, forward=forward or default_forward, steps=steps,
                      average_last=average_last, warmup=0, device=str(device), threads=int(threads))
    return cfg, routes


def run_trials(cfg: TrialConfig, trials: Sequence[tuple], collect: Callable, *, backend: str,
               workers: int | None = None, ray_options: dict | None = None,
               describe: Callable | None = None) -> int:
    """Run ``trials`` [(key, width, lr slot, seed)] through ``backends`` and hand each
    ``TrialResult`` to ``collect`` as it finishes; returns the number of workers used.
    ``describe(key)`` names a trial in errors (a crashed Ray worker). Ctrl-C propagates as
    KeyboardInterrupt after every worker is stopped."""
    if backend not in BACKENDS:
        raise TransferError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise TransferError(f"workers must be a positive int (or None: one per CPU); got {workers!r}")
    if not trials:
        return 0
    n_workers = min(workers or os.cpu_count() or 1, len(trials))
    if backend == "serial":
        for key, w, lr, s in trials:
            collect(run_trial(cfg, key, w, lr, s))
        return 1
    if backend == "ray":
        name = describe or repr
        run_ray(cfg, trials, workers, ray_options or {}, collect, lambda key: f"trial {name(key)}")
        return workers or 0
    check_picklable({"factory": cfg.factory.factory,
                     "make_optimizer": cfg.make_optimizer.make_optimizer, "loss": cfg.loss,
                     "data": getattr(cfg.data, "data", cfg.data), "forward": cfg.forward})
    run_local(cfg, trials, n_workers, collect)
    return n_workers


def sweep(factory: Callable[[int], nn.Module], widths: Sequence[int], lrs: Sequence[float] | None = None,
          *, steps: int, data, hparams: dict[str, Sequence] | None = None, base: dict | None = None,
          scales: dict[str, str] | None = None, seeds: Sequence[int] = (0,),
          make_optimizer: Callable[[nn.Module, float], torch.optim.Optimizer] | None = None,
          loss: Callable[[Any, Any], torch.Tensor] | None = None, backend: str = "local",
          workers: int | None = None, progress: bool = True,
          forward: Callable[[nn.Module, Any], Any] | None = None, average_last: int | None = None,
          warmup: int = 0, device: str = "cpu", threads: int = 1,
          ray_options: dict | None = None, name: str = "", along: str = "width",
          width: int | None = None):
    """Train ``factory(width)`` for ``steps`` steps at every width x value x seed; see the module docs.

    Either ``lrs`` (the learning-rate sweep; returns a ``Sweep``) or ``hparams`` = {name: values}
    (returns ``HPSweeps``, one ``Sweep`` per name: each name swept with every other hyperparameter
    at its ``base`` value, TP5 Figure 3). ``base``: {name: value} for the hyperparameters not
    swept (``lr`` is required there when not swept); names are routed as ``hparams`` describes.
    ``scales``: {name: "log" | "linear" | "categorical"} overrides how an optimum is measured
    (default ``hparams.default_scale``).
    ``average_last``: final loss = mean of that many last training losses (default
    max(1, steps // 10)). ``warmup``: linear learning-rate warmup over that many steps (0 = none;
    the same as ``base={"warmup": ...}``). ``device``: where each trial trains ("cpu", "cuda", ...).
    ``threads``: torch threads per trial. ``workers``: processes (``local``) or CPUs of a fresh
    local Ray instance (``ray``); default ``os.cpu_count()``. ``name`` labels printouts and plots.
    ``widths`` and numeric values are sorted (the grid's rows and columns follow the sorted order).
    ``along``: the scale dimension the optimum is followed along (TP5 Figure 4): "width"
    (default), or the name of a factory / data parameter (``depth``, ``n_layer``, ``batch_size``,
    ``seq_len``...) or "steps"; then ``widths`` holds that dimension's sizes, every trial is
    built at ``width``, and the drift is per doubling of that dimension.
    Raises ``TransferError`` on bad arguments or when a trial raises (divergence is not an error).
    Ctrl-C (KeyboardInterrupt) stops every trial within seconds (the local backend kills its
    workers) and returns a partial result of the finished trials (``Sweep.partial``;
    ``pending`` marks the trials not run, their losses ``nan``), which can be saved with ``to_json``.
    """
    if (lrs is None) == (hparams is None):
        raise TransferError("sweep takes either lrs=[...] (a learning-rate sweep) or "
                            "hparams={name: [values], ...}, not both / neither")
    if lrs is not None:
        lrs = _check_sizes(lrs, "lrs", float, 2, "to pick a best one")
        if any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
            raise TransferError(f"learning rates must be positive and finite; got {list(lrs)}")
        grid = {"lr": lrs}
    else:
        if not isinstance(hparams, dict) or not hparams:
            raise TransferError(f"hparams must be a non-empty dict name -> values; got {hparams!r}")
        grid = {k: check_values(k, v) for k, v in hparams.items()}
    what = "widths" if along == "width" else f"sizes along {along}"
    widths = tuple(check_widths(widths, error=TransferError, what=what,
                                why="to measure how the best value moves"))
    if along != "width" and (not isinstance(width, int) or width < 1):
        raise TransferError(f"along={along!r} sweeps {along} at one width: pass width=<int>")
    if along != "width" and along in (hparams or {}):
        raise TransferError(f"{along!r} is both swept as a hyperparameter and the scale dimension")
    seeds = _check_sizes(seeds, "seeds", int, 1, "to train anything")
    warmup = as_int(warmup, "warmup", TransferError)
    if warmup < 0:
        raise TransferError(f"warmup must be a whole number of steps >= 0; got {warmup!r}")
    base = check_base(base)
    if lrs is not None and "lr" in base:
        raise TransferError(f"lrs sweeps the learning rate, so base['lr']={base['lr']!r} would be "
                            "ignored; drop it from base (or sweep hparams={'lr': [...], ...} with "
                            "base={'lr': ...} for the other hyperparameters' runs)")
    if along == "width" and width is not None:
        raise TransferError(f"width={width!r} is the fixed width of a sweep along another dimension "
                            "(along='depth', ...); a sweep along width takes its widths from "
                            "widths=... : drop width= or pass along=")
    unknown = sorted(set(scales or {}) - set(grid))
    if unknown:
        raise TransferError(f"scales names {unknown}, which are not swept (swept: {sorted(grid)}); "
                            "scales={name: 'log' | 'linear' | 'categorical'} is for swept names")
    if warmup:
        base.setdefault("warmup", int(warmup))
    if "lr" not in base and set(grid) != {"lr"}:
        raise TransferError("every hyperparameter but the swept one stays at its base value, and "
                            "the learning rate has none: give it as base={'lr': ...}")
    scales = {k: (scales or {}).get(k) or default_scale(k, v) for k, v in grid.items()}
    grid = {k: tuple(sorted(v)) if scales[k] != "categorical" else v for k, v in grid.items()}
    if backend not in BACKENDS:
        raise TransferError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    widths, names = tuple(sorted(widths)), list(grid)
    extra = {along} if along not in ("width", "steps") else set()
    cfgs = {}                                   # training steps -> TrialConfig
    for n_steps in (widths if along == "steps" else (steps,)):
        cfgs[n_steps], _ = make_trial_config(
            factory, set(grid) | set(base) | extra, steps=n_steps, data=data,
            make_optimizer=make_optimizer, loss=loss, forward=forward,
            average_last=average_last, device=device, threads=threads)
    cfg = cfgs[max(cfgs)]
    steps, average_last = cfg.steps, cfg.average_last

    trials = []
    for a, hp in enumerate(names):
        for i, w in enumerate(widths):
            for j, v in enumerate(grid[hp]):
                point = {**base, hp: v}
                if extra:
                    point[along] = w
                for k, s in enumerate(seeds):
                    at = w if along == "width" else width
                    trials.append(((a, i, j, k), TrialPoint(at, point), point, s))
    trials.sort(key=lambda t: -int(t[1]))      # widest first: better packing of the pool

    shapes = [(len(widths), len(grid[hp]), len(seeds)) for hp in names]
    losses = [np.full(sh, np.nan) for sh in shapes]
    histories = [np.full(sh + (steps,), np.nan) for sh in shapes]
    times = [np.full(sh, np.nan) for sh in shapes]
    finished = [np.zeros(sh, dtype=bool) for sh in shapes]
    t_start = time.perf_counter()
    done = 0

    def collect(res: TrialResult) -> None:
        nonlocal done
        (a, i, j, k) = res.key
        hp, v = names[a], grid[names[a]][j]
        desc = describe_point({hp: v})
        if res.error is not None:
            label = f"lr={v:g}" if hp == "lr" else f"{hp}={v!r}"
            raise TransferError(f"trial {along}={widths[i]}, {label}, seed={seeds[k]} failed:\n"
                                f"{res.error}")
        losses[a][i, j, k] = res.final
        finished[a][i, j, k] = True
        histories[a][i, j, k, :len(res.history)] = res.history
        times[a][i, j, k] = res.seconds
        done += 1
        if progress:
            status = f"{res.final:.4f}" if math.isfinite(res.final) else \
                f"diverged at step {len(res.history)}"
            print(f"[tensorprog transfer{' ' + name if name else ''}] {done}/{len(trials)} "
                  f"{along} {widths[i]} {desc} seed {seeds[k]}: "
                  f"{status} ({res.seconds:.1f} s, {time.perf_counter() - t_start:.0f} s total)",
                  file=sys.stderr, flush=True)

    def describe_trial(key) -> str:
        a, i, j, k = key
        v = grid[names[a]][j]
        label = f"lr={v:g}" if names[a] == "lr" else f"{names[a]}={v!r}"
        return f"{along}={widths[i]}, {label}, seed={seeds[k]}"

    n_workers = 0
    try:
        for n_steps, c in cfgs.items():
            group = [t for t in trials if along != "steps" or widths[t[0][1]] == n_steps]
            n_workers = max(n_workers, run_trials(c, group, collect, backend=backend,
                                                  workers=workers, ray_options=ray_options,
                                                  describe=describe_trial))
        interrupted = False
    except KeyboardInterrupt:  # Ctrl-C: the trials are stopped; keep what finished
        interrupted = True
        print(f"[tensorprog transfer{' ' + name if name else ''}] interrupted: trials stopped; "
              f"returning a partial result with the {done} of {len(trials)} trials that finished",
              file=sys.stderr, flush=True)
    meta = {"steps": steps, "average_last": average_last, "warmup": base.get("warmup", 0),
            "backend": backend,
            "workers": n_workers if backend == "local" else (workers if backend == "ray" else 1),
            "threads": threads, "device": str(device),
            "wall_s": round(time.perf_counter() - t_start, 2), "factory": describe(factory),
            "data": repr(data) if not isinstance(data, (list, tuple)) else f"{len(data)} fixed batches",
            "make_optimizer": describe(make_optimizer or default_optimizer),
            "torch": torch.__version__, "along": along}
    if along != "width":
        meta["width"] = width
    if interrupted:
        meta["partial"] = f"interrupted after {done} of {len(trials)} trials"
    out = HPSweeps()
    for a, hp in enumerate(names):
        fixed = {k: v for k, v in base.items() if k != hp}
        out[hp] = Sweep(widths=widths, lrs=grid[hp], seeds=seeds, losses=losses[a],
                        histories=histories[a], times=times[a], name=name, hp=hp,
                        scale=scales[hp], meta={**meta, "base": fixed}, along=along,
                        pending=~finished[a] if interrupted else None)
    return out["lr"] if lrs is not None else out
