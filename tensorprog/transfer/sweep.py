"""``sweep``: train every (width, learning rate, seed) and return a ``Sweep``; see the package docs.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import math
import os
import pickle
import sys
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import TransferError
from ..validate import check_widths
from .backends import (BACKENDS, TrialConfig, TrialResult, mp_context, run_ray, run_trial,
                       worker_init, worker_trial)
from .result import Sweep
from .tasks import default_forward, default_optimizer

__all__ = ["sweep"]


def _describe(obj) -> str:
    if isinstance(obj, functools.partial):
        return f"functools.partial({_describe(obj.func)}, ...)"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', '?')}.{name}"


def _check_picklable(parts: dict[str, Any]) -> None:
    main = sys.modules.get("__main__")
    interactive = main is not None and not getattr(main, "__file__", None)
    for what, obj in parts.items():
        try:
            pickle.dumps(obj)
        except Exception as e:  # noqa: BLE001 -- any pickling failure means the same thing
            raise TransferError(
                f"{what} ({_describe(obj)}) cannot be sent to worker processes: {type(e).__name__}: "
                f"{e}. backend='local' pickles everything it sends; define {what} as a module-level "
                "function or class (or a functools.partial of one), not a lambda or a function "
                "defined inside another function; or run with backend='serial' (in this process) "
                "or backend='ray' (cloudpickle)") from None
        target = obj.func if isinstance(obj, functools.partial) else obj
        if interactive and getattr(target, "__module__", None) == "__main__":
            raise TransferError(
                f"{what} ({_describe(obj)}) is defined in an interactive session (__main__ has no "
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


def _resolve_data(data):
    if data is None:
        raise TransferError("sweep needs data: a callable (width, seed) -> iterable of batches (e.g. "
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


def sweep(factory: Callable[[int], nn.Module], widths: Sequence[int], lrs: Sequence[float], *,
          steps: int, data, seeds: Sequence[int] = (0,),
          make_optimizer: Callable[[nn.Module, float], torch.optim.Optimizer] | None = None,
          loss: Callable[[Any, Any], torch.Tensor] | None = None, backend: str = "local",
          workers: int | None = None, progress: bool = True,
          forward: Callable[[nn.Module, Any], Any] | None = None, average_last: int | None = None,
          warmup: int = 0, device: str = "cpu", threads: int = 1,
          ray_options: dict | None = None, name: str = "") -> Sweep:
    """Train ``factory(width)`` for ``steps`` steps at every width x lr x seed; see the module docs.

    ``average_last``: final loss = mean of that many last training losses (default
    max(1, steps // 10)). ``warmup``: linear learning-rate warmup over that many steps (0 = none;
    applied to every optimizer group). ``device``: where each trial trains ("cpu", "cuda", ...).
    ``threads``: torch threads per trial. ``workers``: processes (``local``) or CPUs of a fresh
    local Ray instance (``ray``); default ``os.cpu_count()``. ``name`` labels printouts and plots.
    ``widths`` and ``lrs`` are sorted (the grid's rows and columns follow the sorted order).
    Raises ``TransferError`` on bad arguments or when a trial raises (divergence is not an error).
    """
    widths = tuple(check_widths(widths, error=TransferError,
                                why="to measure how the best learning rate moves"))
    lrs = _check_sizes(lrs, "lrs", float, 2, "to pick a best one")
    if any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise TransferError(f"learning rates must be positive and finite; got {list(lrs)}")
    seeds = _check_sizes(seeds, "seeds", int, 1, "to train anything")
    if not isinstance(steps, int) or steps < 1:
        raise TransferError(f"steps must be a positive int; got {steps!r}")
    average_last = max(1, steps // 10) if average_last is None else int(average_last)
    if not 1 <= average_last <= steps:
        raise TransferError(f"average_last must be in 1..steps={steps}; got {average_last}")
    if warmup < 0 or threads < 1:
        raise TransferError("warmup must be >= 0 and threads >= 1")
    if backend not in BACKENDS:
        raise TransferError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not callable(factory):
        raise TransferError(f"factory must be a callable width -> nn.Module; "
                            f"got {type(factory).__name__}")
    data = _resolve_data(data)
    if loss is None:
        loss = getattr(data, "loss", None)
        if loss is None:
            raise TransferError("no loss given and the data has no .loss; pass loss=fn(output, batch)")
    cfg = TrialConfig(factory=factory, make_optimizer=make_optimizer or default_optimizer, loss=loss,
                  data=data, forward=forward or default_forward, steps=steps,
                  average_last=average_last, warmup=int(warmup), device=str(device),
                  threads=int(threads))

    # sort widths and lrs so the grid reads left-to-right, top-to-bottom
    widths, lrs = tuple(sorted(widths)), tuple(sorted(lrs))
    trials = [((i, j, k), w, lr, s) for i, w in enumerate(widths) for j, lr in enumerate(lrs)
              for k, s in enumerate(seeds)]
    trials.sort(key=lambda t: -t[1])           # widest first: better packing of the pool
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise TransferError(f"workers must be a positive int (or None: one per CPU); got {workers!r}")
    n_workers = min(workers or os.cpu_count() or 1, len(trials))

    shape = (len(widths), len(lrs), len(seeds))
    losses = np.full(shape, np.nan)
    histories = np.full(shape + (steps,), np.nan)
    times = np.full(shape, np.nan)
    t_start = time.perf_counter()
    done = 0

    def collect(res: TrialResult) -> None:
        nonlocal done
        (i, j, k) = res.key
        if res.error is not None:
            raise TransferError(f"trial width={widths[i]}, lr={lrs[j]:g}, seed={seeds[k]} failed:\n"
                                f"{res.error}")
        losses[i, j, k] = res.final
        histories[i, j, k, :len(res.history)] = res.history
        times[i, j, k] = res.seconds
        done += 1
        if progress:
            status = f"{res.final:.4f}" if math.isfinite(res.final) else \
                f"diverged at step {len(res.history)}"
            print(f"[tensorprog transfer{' ' + name if name else ''}] {done}/{len(trials)} "
                  f"width {widths[i]} lr {lrs[j]:.3g} (2^{math.log2(lrs[j]):.1f}) seed {seeds[k]}: "
                  f"{status} ({res.seconds:.1f} s, {time.perf_counter() - t_start:.0f} s total)",
                  file=sys.stderr, flush=True)

    if backend == "serial":
        for key, w, lr, s in trials:
            collect(run_trial(cfg, key, w, lr, s))
    elif backend == "local":
        _check_picklable({"factory": cfg.factory, "make_optimizer": cfg.make_optimizer,
                          "loss": cfg.loss, "data": cfg.data, "forward": cfg.forward})
        cfg_bytes = pickle.dumps(cfg)
        with cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=mp_context(),
                                    initializer=worker_init, initargs=(cfg_bytes,)) as pool:
            futures = [pool.submit(worker_trial, key, w, lr, s) for key, w, lr, s in trials]
            try:
                for fut in cf.as_completed(futures):
                    try:
                        res = fut.result()
                    except BrokenProcessPool as e:
                        raise TransferError(
                            f"a worker process died ({e}); out of memory? Try fewer workers, or "
                            "backend='serial' to see the error in this process") from None
                    collect(res)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    else:
        run_ray(cfg, trials, workers, ray_options or {}, collect)

    meta = {"steps": steps, "average_last": average_last, "warmup": warmup, "backend": backend,
            "workers": n_workers if backend == "local" else (workers if backend == "ray" else 1),
            "threads": threads, "device": str(device),
            "wall_s": round(time.perf_counter() - t_start, 2), "factory": _describe(factory),
            "data": repr(data) if not isinstance(data, (list, tuple)) else f"{len(data)} fixed batches",
            "make_optimizer": _describe(cfg.make_optimizer), "torch": torch.__version__}
    return Sweep(widths=widths, lrs=lrs, seeds=seeds, losses=losses, histories=histories,
                 times=times, name=name, meta=meta)
