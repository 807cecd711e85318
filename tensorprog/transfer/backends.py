"""Running the trials: one trial's training loop, and the process-pool and Ray backends.

The backends run any *job*: a module-level function ``job(cfg, *trial[1:]...)`` called as
``job(cfg, *trial)`` in a worker, with one picklable ``cfg`` shared by every trial (sent once per
worker) and ``trial[0]`` its key. ``sweep`` and ``tune`` run ``run_trial``; ``check`` runs its
(width, seed) measurements (``measure.distribute``) through the same two functions.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import TransferError

BACKENDS: tuple[str, ...] = ("local", "serial", "ray")

__all__ = ["BACKENDS", "TrialConfig", "TrialResult", "run_trial", "worker_init", "worker_trial",
           "ray_trial", "mp_context", "run_local", "run_ray", "PRELOAD", "RAY_CRASHES"]


@dataclass
class TrialConfig:
    factory: Callable
    make_optimizer: Callable
    loss: Callable
    data: Any                 # callable (width, seed) -> iterable, or a list of batches
    forward: Callable
    steps: int
    average_last: int
    warmup: int
    device: str
    threads: int


@dataclass
class TrialResult:
    key: tuple[int, int, int]
    final: float
    history: list
    seconds: float
    error: str | None = None


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, tuple):
        return tuple(_to_device(b, device) for b in batch)
    if isinstance(batch, list):
        return [_to_device(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_iter(data, width: int, seed: int) -> Iterator:
    if isinstance(data, (list, tuple)):
        return _cycle(data)
    return iter(data(width, seed))


def _cycle(batches) -> Iterator:
    while True:
        yield from batches


def _train(cfg: TrialConfig, width: int, lr: float, seed: int) -> tuple[float, list]:
    device = torch.device(cfg.device)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    model = cfg.factory(width).to(device)
    model.train()
    opt = cfg.make_optimizer(model, lr)
    base = [group["lr"] for group in opt.param_groups]
    batches = _batch_iter(cfg.data, width, seed)
    history: list[float] = []
    for step in range(cfg.steps):
        if cfg.warmup:
            f = min(1.0, (step + 1) / cfg.warmup)
            for group, b in zip(opt.param_groups, base):
                group["lr"] = b * f
        try:
            batch = next(batches)
        except StopIteration:
            raise TransferError(f"data({width}, {seed}) yielded only {step} batches; the sweep needs "
                                f"steps={cfg.steps}") from None
        batch = _to_device(batch, device)
        out = cfg.forward(model, batch)
        loss = cfg.loss(out, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            history.append(math.inf)
            return math.inf, history
        history.append(value)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(np.mean(history[-cfg.average_last:])), history


def run_trial(cfg: TrialConfig, key: tuple[int, int, int], width: int, lr: float, seed: int) -> TrialResult:
    """One trial, in whatever process; exceptions come back as text (they may not pickle)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    try:
        final, history = _train(cfg, width, lr, seed)
        return TrialResult(key, final, history, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 -- reported with the trial's coordinates by the parent
        msg = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        return TrialResult(key, math.nan, [], time.perf_counter() - t0, error=msg)
    finally:
        torch.set_num_threads(threads)


#: This worker process's (job, cfg), set once by ``worker_init`` (a pool worker runs one job).
_WORKER: tuple[Callable, Any] | None = None


def worker_init(cfg_bytes: bytes, job: Callable = run_trial) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group: the parent stops the workers (``run_local``); a
    # worker that took it itself would report the trial as failed and pick up the next one
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    thread_lock_for_tqdm()
    _WORKER = (job, pickle.loads(cfg_bytes))


def thread_lock_for_tqdm() -> None:
    """tqdm's default lock includes a multiprocessing RLock, a named semaphore in a forkserver /
    spawn worker, and ``torch.fx.Interpreter.run`` builds a (disabled) tqdm bar on every run. A
    worker killed on Ctrl-C cannot release it, and the resource tracker then reports it leaked at
    exit; a pool worker needs no lock shared across processes."""
    try:
        from tqdm.std import tqdm
    except ImportError:
        return
    import threading
    tqdm.set_lock(threading.RLock())


def worker_trial(*trial):
    job, cfg = _WORKER
    return job(cfg, *trial)


def ray_trial(cfg, key, width, lr, seed) -> TrialResult:
    return run_trial(cfg, key, width, lr, seed)


#: Modules the forkserver imports once, so that forked workers start warm (torch's optimizers
#: import torch._dynamo on first construction: about a second per fresh process otherwise).
PRELOAD = ["__main__", "torch", "torch._dynamo", "tensorprog.zoo", "tensorprog.transfer"]


def mp_context():
    """forkserver (workers forked from one warm server process that imported torch once) where the
    platform has it, else spawn. Either way workers never inherit this process's threads or CUDA
    state, and everything they run is pickled."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def run_local(cfg, trials, n_workers: int, collect, job: Callable = run_trial,
              error: type = TransferError) -> None:
    """Every trial (a tuple: key, then ``job``'s arguments after ``cfg``) in a process pool of
    ``n_workers``, each result of ``job(cfg, *trial)`` handed to ``collect`` as it comes. On any
    exception in this process (Ctrl-C: KeyboardInterrupt, or ``collect`` raising) the queued
    trials are cancelled and the workers killed, so nothing keeps running. A dead worker is an
    ``error``."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=mp_context(),
                               initializer=worker_init, initargs=(pickle.dumps(cfg), job))
    try:
        with sigterm_kills_pool(pool):
            futures = [pool.submit(worker_trial, *trial) for trial in trials]
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except BrokenProcessPool as e:
                    raise error(
                        f"a worker process died ({e}); out of memory? Try fewer workers, or "
                        "backend='serial' to see the error in this process") from None
                collect(res)
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def sigterm_kills_pool(pool):
    """While the pool runs, SIGTERM (a scheduler's or ``kill``'s stop) kills the pool's workers
    and then this process (exit status 143), as SIGTERM's default action would, but without
    leaving the workers orphaned and running. Only in the main thread, where Python runs signal
    handlers; the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        for p in list((getattr(pool, "_processes", None) or {}).values()):
            if p.is_alive():
                p.kill()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_pool(pool) -> None:
    """Cancel what is queued and kill the workers of a ProcessPoolExecutor (running trials
    included), then wait for them to be gone. (``_processes`` is the executor's own table of its
    worker processes; the public API has no way to stop a running call.)"""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=5)


#: What Ray raises when the process running a task died (killed, out of memory, segfault):
#: names looked up in ray.exceptions (they moved between Ray versions).
RAY_CRASHES = ("WorkerCrashedError", "RayActorError", "NodeDiedError", "OutOfMemoryError",
               "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError")


def run_ray(cfg, trials, workers, ray_options: dict, collect, describe, job: Callable = ray_trial,
            error: type = TransferError, what: str = "transfer") -> None:
    """Every trial as a Ray task ``job(cfg, *trial)`` (``cfg`` put in the object store once). A
    task whose worker process died (``RAY_CRASHES``) is run once more; a second crash is an
    ``error`` naming the trial (``describe(key)``; ``what`` tags the retry message). On any
    exception here (Ctrl-C included) the outstanding tasks are cancelled."""
    try:
        import ray
        import ray.exceptions as rex
    except ImportError:
        raise error("backend='ray' needs Ray, which is not installed: pip install "
                            "'tensorprog[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        kwargs = {} if os.environ.get("RAY_ADDRESS") or not workers else {"num_cpus": int(workers)}
        ray.init(**kwargs)
    crashes = tuple(getattr(rex, n) for n in RAY_CRASHES if isinstance(getattr(rex, n, None), type))
    # retries are ours (once, named): Ray's own would re-run a crashing task three times silently
    options = {"num_cpus": 1, "max_retries": 0, **ray_options}
    remote = ray.remote(job).options(**options)
    cfg_ref = ray.put(cfg)
    submitted = {}

    def submit(trial, attempt):
        submitted[remote.remote(cfg_ref, *trial)] = (trial, attempt)

    for trial in trials:
        submit(trial, 1)
    try:
        while submitted:
            ready, _ = ray.wait(list(submitted), num_returns=1)
            trial, attempt = submitted.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except crashes as e:
                if attempt == 1:
                    print(f"[tensorprog {what}] the Ray worker running {describe(trial[0])} "
                          f"crashed ({type(e).__name__}); retrying it once", file=sys.stderr,
                          flush=True)
                    submit(trial, 2)
                    continue
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise error(
                    f"{describe(trial[0])} failed: its Ray worker process died twice "
                    f"({type(e).__name__}: {first}); out of memory, or a crash in native code? Try "
                    "backend='serial' to see the error in this process") from None
            collect(res)
    except BaseException:
        for ref in submitted:
            ray.cancel(ref, force=True)
        raise
