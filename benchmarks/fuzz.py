"""Differential fuzzing: random architectures, the engine's exponents against measured slopes.

For each seed, ``tensorprog.zoo.fuzz.random_architecture(seed)`` draws a small model (linear /
einsum / packed-qkv attention / norms / residuals / multiply-then-sum readouts, in-place
multipliers, random per-layer init, multiplier and learning-rate exponents); ``analyze`` and
``check`` run on it. Counted: crashes (an exception that is not a ``TensorprogError``, from either
call), the records ``check`` refutes, and the agreement rate confirmed / (confirmed + refuted).
Every refuted record is printed (node, op, predicted exponent vs measured slope, seed and
architecture); the first refuted node of each (seed, kind, step), in graph order, is marked
``*``: later ones usually inherit its error.

    python benchmarks/fuzz.py --n 40 --json /tmp/fuzz.json
    python benchmarks/fuzz.py --seeds 3 17 --adam-eps 1e-30   # re-run a few, Adam without eps floor

Widths (64 .. 1024), steps and seeds per architecture are flags; one torch thread.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tensorprog import analyze  # noqa: E402
from tensorprog.errors import TensorprogError  # noqa: E402
from tensorprog import check  # noqa: E402
from tensorprog.zoo import fuzz  # noqa: E402


def run_one(seed: int, widths, steps: int, seeds: int, adam_eps: float, exclude=()) -> dict:
    spec = fuzz.random_architecture(seed, exclude)
    factory, inputs = fuzz.build(spec), fuzz.example_inputs(spec)
    opt = fuzz.make_optimizer(spec, eps=adam_eps)
    out = {"seed": seed, "description": spec.describe(), "spec": spec.to_dict(), "crash": None,
           "rejected": None, "records": [], "counts": {}, "notes": []}
    t0 = time.perf_counter()
    try:
        rep = analyze(factory, widths[:3], example_inputs=inputs, make_optimizer=opt)
        out["analyze"] = {"parametrization": rep.parametrization, "stable": rep.stable,
                          "regime": rep.regime}
    except TensorprogError as e:
        out["rejected"] = f"analyze: {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a crash is what we count
        out["crash"] = f"analyze: {type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"
        return out
    try:
        c = check(factory, widths, example_inputs=inputs, make_optimizer=opt, steps=steps,
                  seeds=seeds, progress=False)
    except TensorprogError as e:
        out["rejected"] = (out["rejected"] or "") + f" check: {type(e).__name__}: {e}"
        return out
    except Exception as e:  # noqa: BLE001
        out["crash"] = f"check: {type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"
        return out
    out["seconds"] = time.perf_counter() - t0
    out["counts"] = c.counts()
    out["notes"] = list(c.notes)
    out["blowups"] = [vars(b) for b in c.blowups]
    first = set()
    for r in c.records:
        if r.status != "refuted":
            continue
        key = (r.kind, r.step)
        d = r.to_dict()
        d.pop("values")
        d["local_slope"] = _local_slope(r)
        d["converging"] = _converging(r, d["local_slope"])
        d["first"] = key not in first
        first.add(key)
        out["records"].append(d)
    return out


def _local_slope(r):
    """Slope between the two largest widths (geometric means over seeds), or None."""
    mv = r.mean_values
    ws = sorted(w for w, v in mv.items() if math.isfinite(v) and v > 0)
    if len(ws) < 2:
        return None
    a, b = ws[-2], ws[-1]
    return (math.log(mv[b]) - math.log(mv[a])) / (math.log(b) - math.log(a))


def _converging(r, local):
    """The curve bends toward the prediction: the slope over the two largest widths is at
    least 0.2 closer to the predicted exponent than the fitted slope (a lower-order term with
    a larger constant still dominating: pre-asymptotic)."""
    try:
        p = float(r.predicted)
    except (TypeError, ValueError):
        return False
    if local is None or r.slope is None or not math.isfinite(p):
        return False
    if p > 0:  # predicted growth: only the sign is tested
        return local > r.slope + 0.2
    return abs(local - p) < abs(r.slope - p) - 0.2


def summarize(results: list[dict]) -> dict:
    tot = Counter()
    for r in results:
        tot.update(r["counts"])
    conf, ref = tot["confirmed"], tot["refuted"]
    roots = [d for r in results for d in r["records"] if d["first"]]
    return {"architectures": len(results), "crashes": sum(r["crash"] is not None for r in results),
            "rejected": sum(r["rejected"] is not None for r in results),
            "architectures_with_refuted": sum(bool(r["records"]) for r in results),
            "confirmed": conf, "refuted": ref, "inconclusive": tot["inconclusive"],
            "agreement": conf / (conf + ref) if conf + ref else float("nan"),
            "first_refuted": len(roots),
            "first_refuted_converging": sum(bool(d.get("converging")) for d in roots)}


def _fmt(x):
    return "?" if x is None else f"{x:+.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="number of seeds (0 .. n-1)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="*", help="explicit architecture seeds")
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--check-seeds", type=int, default=2)
    ap.add_argument("--adam-eps", type=float, default=1e-8)
    ap.add_argument("--exclude", nargs="*", default=[], choices=fuzz.CONSTRUCTS,
                    help="constructs never drawn (isolates a class of disagreements)")
    ap.add_argument("--json", default=None, help="write the summary and every record to this file")
    ap.add_argument("--quiet", action="store_true", help="summary and first refuted nodes only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds if args.seeds else list(range(args.start, args.start + args.n))
    results = []
    for s in seeds:
        r = run_one(s, tuple(args.widths), args.steps, args.check_seeds, args.adam_eps, args.exclude)
        results.append(r)
        print(f"[{s}] {r['counts']} {r['description']}", flush=True)
        if r["crash"]:
            print("  CRASH", r["crash"], flush=True)
        if r["rejected"]:
            print("  rejected:", r["rejected"].splitlines()[0], flush=True)
        for note in r["notes"]:
            print("  note:", note)
        for d in r["records"]:
            if args.quiet and not d["first"]:
                continue
            print(f"  {'*' if d['first'] else ' '} {d['node']:<22} {d['op']:<16} {d['kind']:<6} "
                  f"t={d['step']} predicted n^{d['predicted']:<5} measured {d['slope']:+.2f}"
                  f" +- {d['stderr']:.2f} (last two widths {_fmt(d['local_slope'])})"
                  + ("  converging" if d["converging"] else ""), flush=True)
    summ = summarize(results)
    print(json.dumps(summ, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summ, "args": vars(args),
                                               "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
