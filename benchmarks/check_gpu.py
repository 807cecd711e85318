"""tensorprog check on one GPU: the zoo GPT (muP and SP, Adam) up to width 8192.

Sized for a single H200 in well under 5 minutes: widths 256..8192 (d_model; 2 pre-LN blocks,
4 heads, vocab 64, context 16, batch 4), 3 Adam steps, 2 seeds. At 8192 the model holds
1.6e9 parameters (6.4 GB in fp32); with Adam's two moments and the gradients about 26 GB of
GPU memory (check measures large tensors on a 65536-entry subset, so it keeps no full copy of
the initial weights). Each width is freed before the next (del, gc.collect,
torch.cuda.empty_cache). The predictions come from a CPU trace at the three smallest widths.

Also, with ``--mlp`` (default on): the zoo tanh MLP in SP + Adam at widths 256..8192, where at
large widths tanh saturates (its change is bounded by 2), the test of the engine's rule for
bounded activations (see the printed records for tanh_1).

Prints the verdict, the measured slope of every headline feature against its predicted exponent,
timings and peak memory; writes one PNG per run (``--out``, default the current directory).
Exits 0 with a message when CUDA is absent (``--device cpu`` runs the same on the CPU, for
trying the script with small ``--widths``).

    python benchmarks/check_gpu.py [--widths 256,512,1024,2048,4096,8192] [--seeds 2]
                                   [--steps 3] [--out DIR] [--no-mlp] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
warnings.filterwarnings("ignore")

import torch

from tensorprog import check
from tensorprog.zoo import example


def run(name, param, opt, widths, args, **kw):
    ex = example(name, param=param, optimizer=opt, **kw)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    rep = check(ex.factory, widths, example_inputs=ex.example_inputs,
                make_optimizer=ex.make_optimizer, loss=ex.loss, steps=args.steps,
                seeds=args.seeds, device=args.device, trace_widths=widths[:3], progress=True)
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    c = rep.counts()
    print(f"\n=== {name} {param} {opt}: {rep.verdict.upper()} in {dt:.0f} s (predict "
          f"{rep.seconds['predict']:.0f} s, export {rep.seconds['export']:.0f} s, train "
          f"{rep.seconds['train']:.0f} s), peak GPU memory {peak:.1f} GiB; {c['confirmed']} "
          f"confirmed, {c['refuted']} refuted, {c['inconclusive']} inconclusive")
    seen = set()
    for r in rep.focus():
        if r.step not in (1, args.steps) or (r.node, r.kind, r.step) in seen:
            continue
        seen.add((r.node, r.kind, r.step))
        slope = "blow-up" if r.blowup else (f"{r.slope:+.2f} +- {r.stderr:.2f}" if r.slope is not None else "-")
        print(f"  {r.node:32s} {r.module[:26]:26s} {r.kind:6s} step {r.step}: {slope:>14s}  "
              f"predicted {r.predicted}  {r.status}")
    if name == "mlp":
        for n in ("tanh_1", "tanh_2"):
            for kind in ("size", "change"):
                r = rep.get(n, kind, 1)
                vals = ", ".join(f"{w}: {v:.3g}" for w, v in r.mean_values.items())
                print(f"  {n} {kind} step 1: slope {r.slope:+.2f}, predicted {r.predicted}, "
                      f"{r.status}; values {vals}")
    bad = rep.refuted()
    if bad:
        print(f"  refuted ({len(bad)}):")
        for r in bad[:12]:
            print(f"    {r.node} ({r.module}) {r.kind} step {r.step}: predicted {r.predicted}, "
                  f"slope {r.slope}; {r.note[:160]}")
    path = os.path.join(args.out, f"check_{name}_{param}_{opt}.png")
    rep.plot(path)
    rep.to_json(path.replace(".png", ".json"))
    print(f"  wrote {path}")
    return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="256,512,1024,2048,4096,8192")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=".")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-mlp", action="store_true")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("check_gpu: no CUDA device here; nothing to run (use --device cpu with small "
              "--widths to try the script on the CPU).")
        return 0
    os.makedirs(args.out, exist_ok=True)
    widths = tuple(int(w) for w in args.widths.split(","))
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    total = 0.0
    total += run("gpt", "mup", "adam", widths, args)
    total += run("gpt", "sp", "adam", widths, args)
    if not args.no_mlp:
        total += run("mlp", "sp", "adam", widths, args)
    print(f"\ntotal {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
