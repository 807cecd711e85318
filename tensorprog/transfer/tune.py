"""``tune``: tune hyperparameters on a small proxy, transfer them to the target width, and compare
with the same search spent on the target directly (muTransfer, TP5 arXiv 2203.03466 §5 and
Figure 5).

Phases, each a set of trials run through ``run_trials`` (the sweep backends: serial, local
processes, Ray):

1. ``proxy``: ``budget`` settings drawn from ``space`` (random search or Optuna's TPE), each
   trained at ``proxy_width`` (at every one of ``proxy_seeds``, averaged); the best (lowest final
   training loss) is the tuned setting.
2. ``transfer``: that setting, copied unchanged, trained at ``target_width`` for every seed in
   ``final_seeds``: muTransfer's result.
3. ``direct`` (``direct=True``): the same search, same budget, at ``target_width``; with the
   same sampler seed by default (``direct_seed=None``: a paired comparison, random search then
   proposes the same candidates at both widths, so the two agree exactly when the ranking of
   the candidates survives the change of width), or its own ``direct_seed`` (independent
   candidates, as TP5 Figure 5's separate searches); 4. ``direct_eval``: its best setting at the
   other ``final_seeds``. The direct side's loss is measured on those seeds only: the search
   trial of the winning setting was chosen as the minimum of ``budget`` noisy losses, so its own
   loss is biased low (it would flatter direct tuning). Final seeds other than ``seed`` (the
   default, ``(1,)``) give both sides fresh runs.

Compute is counted in **parameter-steps**: trainable parameters of the trained model times
training steps. Every trial sees batches of the same size, so training FLOPs are a fixed multiple
of it (about 6 x parameters x tokens per step for a transformer, Kaplan et al. 2020, arXiv
2001.08361 §2.1); ratios of parameter-steps are ratios of FLOPs. Tuning cost of muTransfer =
proxy search + one target run (one seed); of direct tuning = the direct search.

Resuming: with ``store=path`` every finished trial is appended to a JSON-lines file (a header
line with the search's settings, then one JSON object per trial, flushed as it finishes).
Calling ``tune`` again with the same ``store`` and settings runs only the trials that are not
there (a half-written last line from a killed run is ignored); different settings are an error.
A larger ``budget`` extends a stored search.

muP check (``check_mup``): before searching, ``tensorprog.analyze`` traces the model at the
proxy width and twice and four times it. Transfer across width is what muP predicts (TP5 Table 1
and §2); for a model that analyze does not call muP the proxy's optimum is expected to move, so
``check_mup="refuse"`` (default) raises, ``"warn"`` warns loudly and goes on, ``"off"`` skips the
check. Each hyperparameter is also labelled: width-transferable per TP5 Table 1 (lr, init scale,
output multiplier, schedule, warmup), not (weight decay: regularisation; batch size, sequence
length, depth, steps: TP5 transfers them only empirically, Figure 4), or unknown to the theory.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from typing import Callable, Sequence

import torch

from ..errors import TransferError
from ..validate import as_int, check_file_path
from .hparams import (NOT_WIDTH_TRANSFERABLE, WIDTH_TRANSFERABLE, TrialPoint, check_base,
                      describe_point)
from .space import SAMPLERS, check_space, make_sampler
from .sweep import make_trial_config, run_trials
from .tune_result import TuneResult, settings_of

__all__ = ["tune", "transferability", "read_store", "check_store_path"]

PHASES = ("proxy", "transfer", "direct", "direct_eval")


def transferability(names) -> dict[str, str]:
    """{name: "width-transferable (TP5 Table 1)" | "not width-transferable ..." | "unknown ..."}."""
    out = {}
    for n in names:
        if n in WIDTH_TRANSFERABLE:
            out[n] = "width-transferable in muP (TP5 Table 1: optimisation, init, multipliers)"
        elif n in NOT_WIDTH_TRANSFERABLE:
            out[n] = ("not expected to transfer with width (TP5 Table 1: regularisation, or a scale "
                      "dimension transferred only empirically)")
        else:
            out[n] = "unknown to the theory: its transfer is an empirical question"
    return out


#: keys (and their types) of a stored trial record, as ``tune`` writes them
RECORD_KEYS = {"phase": str, "index": int, "width": int, "seed": int, "hp": dict}


def check_store_path(path) -> None:
    """A store path ``tune`` can write: a str / PathLike of a file (existing or new) in an existing
    folder. Checked before any training, so a typo costs nothing."""
    what = f"store={str(path)!r}" if isinstance(path, (str, os.PathLike)) else "store"
    check_file_path(path, what, TransferError, example="tune.jsonl", read=True,
                    why="a typo here would start a fresh search instead of resuming")


def _check_record(path: str, n: int, rec) -> None:
    ok = isinstance(rec, dict) and all(isinstance(rec.get(k), t) and not isinstance(rec.get(k), bool)
                                       for k, t in RECORD_KEYS.items())
    ok = ok and rec["phase"] in PHASES and ("loss" in rec) and (
        rec["loss"] is None or isinstance(rec["loss"], (int, float)))
    if not ok:
        raise TransferError(f"{path}: line {n + 1} is not a tune trial record (it needs "
                            f"{', '.join(RECORD_KEYS)} and loss; got {str(rec)[:200]}); the file was "
                            "edited or written by something else: delete it or pass another store")


def read_store(path: str, signature: dict | None = None) -> list[dict]:
    """Trial records of a JSON-lines store (a half-written last line is dropped). With
    ``signature``: ``TransferError`` when the file was written by a search with other settings;
    a record without its keys (``RECORD_KEYS``, loss) is a ``TransferError`` too."""
    if not os.path.exists(path):
        return []
    if os.path.isdir(path):
        raise TransferError(f"store={path!r} is a folder, not a tune store file")
    try:
        with open(path) as fh:
            lines = fh.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise TransferError(f"{path}: cannot read it as a tune store ({type(e).__name__}: {e})") from None
    records = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n >= len(lines) - 2:      # the last line, cut short by a kill
                break
            raise TransferError(f"{path}: line {n + 1} is not JSON; not a tune store?") from None
    if not records:
        return []
    head = records[0]
    if not isinstance(head, dict) or "tensorprog_tune" not in head:
        raise TransferError(f"{path} is not a tune store (no header line); pass another store path")
    if signature is not None and head.get("signature") != _jsonable(signature):
        raise TransferError(
            f"{path} holds trials of a different search (stored settings "
            f"{head.get('signature')}, now {_jsonable(signature)}); delete it or pass another store")
    for n, rec in enumerate(records[1:], 1):
        _check_record(path, n, rec)
    return records[1:]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=repr))


def _drop_partial_line(path: str) -> None:
    """Cut a half-written last line (a killed run) so that new records start on a line of their own."""
    with open(path, "rb+") as fh:
        text = fh.read()
        if text and not text.endswith(b"\n"):
            fh.truncate(text.rfind(b"\n") + 1)


def _append(path: str | None, record: dict) -> None:
    if path is None:
        return
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=repr) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _count_params(factory_cfg, width: int, point: dict) -> int:
    """Trainable parameters of the model a trial trains (built on the meta device when possible)."""
    try:
        with torch.device("meta"):
            model = factory_cfg(TrialPoint(width, point))
    except Exception:  # noqa: BLE001 -- a factory that cannot build on meta: build it for real
        model = factory_cfg(TrialPoint(width, point))
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def _mup_check(factory_cfg, make_opt_cfg, point: dict, width: int, data, check_mup: str,
               forward_is_default: bool) -> str:
    """analyze's verdict at (width, 2 width, 4 width), or why there is none; acts on check_mup."""
    if check_mup == "off":
        return "not checked (check_mup='off')"
    from ..predict.analyze import analyze

    verdict, why = None, ""
    try:
        example = None
        if forward_is_default:
            batch = data[0] if isinstance(data, (list, tuple)) else next(iter(data(width, 0)))
            example = (batch[0],) if isinstance(batch, (tuple, list)) else (batch,)
        report = analyze(lambda w: factory_cfg(TrialPoint(w, point)), (width, 2 * width, 4 * width),
                         example_inputs=example, make_optimizer=lambda m: make_opt_cfg(m, point))
        verdict = report.parametrization
    except Exception as e:  # noqa: BLE001 -- a model analyze cannot trace is reported, not fatal
        why = f"analyze could not check the model ({type(e).__name__}: {str(e)[:300]})"
    if verdict == "muP":
        return "muP (tensorprog.analyze)"
    msg = (f"tune: {why or f'tensorprog.analyze says this model is {verdict}, not muP'}. "
           "Hyperparameters tuned on a narrow proxy transfer to a wide target when the model is in "
           "muP (TP5 arXiv 2203.03466 §2, Table 1); otherwise their optima move with width (in SP "
           "the best Adam learning rate falls like 1/width) and the proxy's setting is expected to "
           "be wrong at the target. Fix: parametrize the model in muP (tensorprog.apply_mup, or the "
           "zoo's param='mup'); pass check_mup='warn' to go on anyway, 'off' to skip the check")
    if check_mup == "refuse":
        raise TransferError(msg)
    warnings.warn("\n" + "!" * 78 + "\n" + msg + "\n" + "!" * 78, stacklevel=3)
    return why or f"{verdict} (tensorprog.analyze; check_mup='warn': tuned anyway)"


def tune(factory: Callable, space: dict, *, proxy_width: int, target_width: int, budget: int,
         steps: int, data, sampler: str = "random", seed: int = 0, base: dict | None = None,
         final_seeds: Sequence[int] = (1,), direct: bool = True, direct_seed: int | None = None,
         proxy_seeds: Sequence[int] | None = None, proxy_budget: int | None = None,
         store: str | None = None,
         check_mup: str = "refuse", make_optimizer: Callable | None = None,
         loss: Callable | None = None, forward: Callable | None = None,
         average_last: int | None = None, backend: str = "local", workers: int | None = None,
         threads: int = 1, device: str = "cpu", ray_options: dict | None = None,
         progress: bool = True, name: str = "") -> TuneResult:
    """Tune ``space`` at ``proxy_width``, transfer to ``target_width``, compare with direct tuning.

    See the module docs. ``space``: {name: LogUniform | Uniform | IntUniform | Choice | [options]}
    over any hyperparameters ``sweep`` accepts (built-in or routed to factory / make_optimizer /
    data); ``base``: fixed values of the others (``lr`` must be in one of them). ``budget``: trials
    per search. ``seed``: the sampler's seed and the training seed of search trials.
    ``final_seeds``: seeds of the final target runs (two or more give the noise of the comparison;
    the search seed, if among them, does not count on the direct side: module docs).
    ``direct_seed``: the direct search's sampler seed (default ``seed``: paired candidates).
    ``store``: a JSON-lines file in an existing folder (``check_store_path``, before training);
    Ctrl-C stops the trials and keeps every finished one there for the next call to resume.
    ``proxy_seeds``: training seeds of every proxy trial (default ``(seed,)``); a setting's proxy
    loss is the mean over them (diverged if any seed diverged). The proxy is cheap, and one seed
    per setting lets a setting that was lucky on that seed win the search; the extra seeds count
    in the proxy's compute. Pick them apart from ``final_seeds``.
    ``proxy_budget``: settings the proxy search tries (default ``budget``). A proxy trial costs
    (proxy / target parameters) of a target trial, so a larger proxy search can still cost a
    fraction of the direct one (TP5 Figure 5 plots each at its own compute); the summary states
    both budgets and the compute ratio.
    """
    space = check_space(space)
    base = check_base(base)
    seed = as_int(seed, "seed", TransferError)
    if direct_seed is not None:
        direct_seed = as_int(direct_seed, "direct_seed", TransferError)
    if store is not None:
        check_store_path(store)
    if sampler not in SAMPLERS:
        raise TransferError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if check_mup not in ("refuse", "warn", "off"):
        raise TransferError(f"check_mup must be 'refuse', 'warn' or 'off'; got {check_mup!r}")
    proxy_budget = budget if proxy_budget is None else proxy_budget
    for what, v in (("proxy_width", proxy_width), ("target_width", target_width), ("budget", budget),
                    ("proxy_budget", proxy_budget)):
        if not isinstance(v, int) or v < 1:
            raise TransferError(f"{what} must be a positive int; got {v!r}")
    if proxy_width >= target_width:
        raise TransferError(f"proxy_width ({proxy_width}) must be smaller than target_width "
                            f"({target_width}): the point is to tune the small model")
    if isinstance(final_seeds, (str, bytes)) or not hasattr(final_seeds, "__iter__"):
        raise TransferError(f"final_seeds must be a sequence of ints, e.g. (0, 1); got {final_seeds!r}")
    final_seeds = tuple(as_int(s, "each of final_seeds", TransferError) for s in final_seeds)
    if proxy_seeds is not None and (isinstance(proxy_seeds, (str, bytes)) or
                                    not hasattr(proxy_seeds, "__iter__")):
        raise TransferError(f"proxy_seeds must be a sequence of ints, e.g. (0, 1, 2); got {proxy_seeds!r}")
    proxy_seeds = (seed,) if proxy_seeds is None else \
        tuple(as_int(s, "each of proxy_seeds", TransferError) for s in proxy_seeds)
    if not proxy_seeds or len(set(proxy_seeds)) != len(proxy_seeds):
        raise TransferError(f"proxy_seeds must be distinct and non-empty; got {proxy_seeds}")
    if len(proxy_seeds) > 1 and sampler != "random":
        raise TransferError("several proxy_seeds need sampler='random' (a model-based sampler "
                            "would be told a setting's loss before all its seeds ran); pass one "
                            "seed or use random search")
    if not final_seeds or len(set(final_seeds)) != len(final_seeds):
        raise TransferError(f"final_seeds must be distinct and non-empty; got {final_seeds}")
    if "lr" not in space and "lr" not in base:
        raise TransferError("the learning rate is neither searched nor fixed: add it to space or "
                            "base={'lr': ...}")
    overlap = set(space) & set(base)
    if overlap:
        raise TransferError(f"{sorted(overlap)} are both searched (space) and fixed (base)")
    cfg, routes = make_trial_config(factory, set(space) | set(base), steps=steps, data=data,
                                    make_optimizer=make_optimizer, loss=loss, forward=forward,
                                    average_last=average_last, device=device, threads=threads,
                                    what="tune")
    signature = {"space": {k: repr(v) for k, v in space.items()}, "base": base,
                 "proxy_width": proxy_width, "target_width": target_width, "steps": steps,
                 "average_last": cfg.average_last, "sampler": sampler, "seed": seed,
                 "final_seeds": list(final_seeds), "direct": direct, "direct_seed": direct_seed}
    if proxy_seeds != (int(seed),):
        signature["proxy_seeds"] = list(proxy_seeds)
    if proxy_budget != budget:
        signature["proxy_budget"] = proxy_budget
    notes = transferability(space)
    centre = {**base, **{k: d.centre() for k, d in space.items()}}
    mup = _mup_check(cfg.factory, cfg.make_optimizer, centre, proxy_width,
                     getattr(cfg.data, "data", cfg.data), check_mup, forward is None)
    if progress:
        print(f"[tensorprog tune{' ' + name if name else ''}] model: {mup}", file=sys.stderr)
        for k, v in notes.items():
            print(f"[tensorprog tune] {k}: {v}", file=sys.stderr)

    records = read_store(store, signature) if store else []
    if store and os.path.exists(store):
        _drop_partial_line(store)
    if store and not os.path.exists(store):
        _append(store, {"tensorprog_tune": 1, "signature": _jsonable(signature)})
    elif store and not records and os.path.getsize(store) == 0:
        _append(store, {"tensorprog_tune": 1, "signature": _jsonable(signature)})
    resumed = len(records)
    params_cache: dict[tuple, int] = {}
    t_start = time.perf_counter()

    def compute_of(width: int, point: dict) -> int:
        key = (width, tuple(sorted((k, repr(v)) for k, v in point.items() if routes.get(k) == "factory")))
        if key not in params_cache:
            params_cache[key] = _count_params(cfg.factory, width, point)
        return params_cache[key] * steps

    def run(phase: str, jobs: list[tuple[int, int, dict, int]]) -> list[dict]:
        """Train jobs [(index, width, hp, seed)]; store and return their records."""
        new = []
        trials = [((PHASES.index(phase), n, s), TrialPoint(w, {**base, **hp}), {**base, **hp}, s)
                  for n, w, hp, s in jobs]
        by_key = {t[0]: job for t, job in zip(trials, jobs)}

        def collect(res):
            n, w, hp, s = by_key[res.key]
            if res.error is not None:
                raise TransferError(f"tune trial {phase} #{n} (width={w}, {describe_point(hp)}, "
                                    f"seed={s}) failed:\n{res.error}")
            rec = {"phase": phase, "index": n, "width": w, "seed": s, "hp": hp,
                   "loss": res.final if math.isfinite(res.final) else None,
                   "diverged_at": None if math.isfinite(res.final) else len(res.history),
                   "seconds": round(res.seconds, 3), "compute": compute_of(w, {**base, **hp})}
            _append(store, rec)
            new.append(rec)
            if progress:
                done = sum(r["phase"] == phase for r in records) + len(new)
                status = f"{res.final:.4f}" if math.isfinite(res.final) else "diverged"
                print(f"[tensorprog tune{' ' + name if name else ''}] {phase} {done} width {w} "
                      f"{describe_point(hp)} seed {s}: {status} ({res.seconds:.1f} s, "
                      f"{time.perf_counter() - t_start:.0f} s total)", file=sys.stderr, flush=True)

        run_trials(cfg, trials, collect, backend=backend, workers=workers, ray_options=ray_options)
        records.extend(new)
        return new

    def search(phase: str, width: int, sampler_seed: int, seeds: tuple) -> None:
        budget_here = proxy_budget if phase == "proxy" else budget
        smp = make_sampler(sampler, space, sampler_seed)
        have = {(r["index"], r["seed"]) for r in records if r["phase"] == phase}
        stored = {r["index"]: r for r in settings_of(records, phase, budget_here)
                  if all((r["index"], s) in have for s in seeds)}
        for n in sorted(stored):
            smp.replay(stored[n]["hp"], _loss(stored[n]))

        def jobs_of(n, hp):
            return [(n, width, hp, s) for s in seeds if (n, s) not in have]

        if sampler == "random":
            run(phase, [j for n in range(budget_here) if n not in stored
                        for j in jobs_of(n, smp.propose(n)[0])])
            return
        batch = max(1, workers or os.cpu_count() or 1) if backend != "serial" else 1
        free = [n for n in range(budget_here) if n not in stored]   # a killed batch may leave gaps
        while free:
            todo, free = free[:batch], free[batch:]
            asked = [smp.propose(n) for n in todo]
            run(phase, [j for n, (p, _) in zip(todo, asked) for j in jobs_of(n, p)])
            by_index = {r["index"]: r for r in settings_of(records, phase, budget_here)}
            for n, (_, handle) in zip(todo, asked):
                smp.tell(handle, _loss(by_index[n]))

    def finals(phase: str, hp: dict, skip: tuple = ()) -> None:
        have = {r["seed"] for r in records if r["phase"] == phase and r["hp"] == _jsonable(hp)}
        run(phase, [(0, target_width, hp, s) for s in final_seeds if s not in have and s not in skip])

    try:
        search("proxy", proxy_width, seed, proxy_seeds)
        best_proxy = _best(records, "proxy", proxy_budget)
        finals("transfer", best_proxy["hp"])
        if direct:
            search("direct", target_width, seed if direct_seed is None else int(direct_seed),
                   (seed,))
            best_direct = _best(records, "direct", budget)
            finals("direct_eval", best_direct["hp"], skip=(seed,))
    except KeyboardInterrupt:  # Ctrl-C: the trials are stopped (run_trials); say what is kept
        kept = (f"the {len(records)} finished trials are in {store}: run the same tune(...) call "
                "again to resume from them" if store else
                f"{len(records)} trials had finished; pass store='tune.jsonl' to keep trials "
                "across an interruption")
        print(f"[tensorprog tune{' ' + name if name else ''}] interrupted: trials stopped; {kept}",
              file=sys.stderr, flush=True)
        raise
    return TuneResult.build(records, budget=budget, proxy_width=proxy_width,
                            target_width=target_width, steps=steps, seed=seed,
                            final_seeds=final_seeds, space=signature["space"], base=base,
                            sampler=sampler, notes=notes, mup=mup, name=name,
                            proxy_budget=proxy_budget if proxy_budget != budget else None,
                            meta={"resumed_trials": resumed, "backend": backend,
                                  "wall_s": round(time.perf_counter() - t_start, 2)})


def _loss(rec: dict) -> float:
    return math.inf if rec["loss"] is None else float(rec["loss"])


def _best(records: list[dict], phase: str, budget: int) -> dict:
    rows = settings_of(records, phase, budget)
    finite = [r for r in rows if r["loss"] is not None]
    if not finite:
        raise TransferError(f"every {phase} trial diverged ({len(rows)} of them); narrow the space "
                            "(smaller learning rates) or train fewer steps")
    return min(finite, key=lambda r: (r["loss"], r["index"]))

