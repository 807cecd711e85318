"""Why did the proxy-tuned setting lose to direct tuning? Train the candidates at both widths.

Reads a stored ``--mode tune`` result of ``benchmarks/transfer.py`` (default: the muP GPT of
``benchmarks/results/transfer_tune_gpt_nonzero.json``, ``apply_mup`` with a random readout and
query, 64 -> 256) and trains, at the proxy and at the target width, over fresh seeds: the proxy search's top ``--top`` settings and the direct search's best. Two
readings (TP5 arXiv 2203.03466 §5 tunes on one proxy seed too):

* the proxy's top settings are equal within the proxy's seed noise but not at the target: the
  loss landscape sharpens with width, and one noisy proxy trial per setting cannot rank them;
* the direct search's best is also best at the proxy: the proxy could have found it, and the
  random search's draw or the proxy's noise is to blame; if it is worse at the proxy, its
  optimum really moved with width (finite-width drift).

Run: ``python benchmarks/transfer_cross_eval.py`` (about 5 minutes on 2 cores for the GPT at
64 / 256). Writes ``benchmarks/results/transfer_cross_eval_gpt.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from tensorprog.transfer import TransferError, stdlib_text_data
from tensorprog.transfer.hparams import TrialPoint
from tensorprog.transfer.sweep import make_trial_config, run_trials

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import sides  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", default=os.path.join(HERE, "results", "transfer_tune_gpt_nonzero.json"))
    ap.add_argument("--side", default="muP = apply_mup(SP GPT)")
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "transfer_cross_eval_gpt.json"))
    args = ap.parse_args(argv)

    with open(args.result) as fh:
        stored = json.load(fh)
    cfg_args = argparse.Namespace(**stored["config"])
    res = stored[args.side]
    proxy = sorted((t for t in res["trials"] if t["phase"] == "proxy" and t["loss"] is not None),
                   key=lambda t: t["loss"])[:args.top]
    settings = [(f"proxy #{k + 1}", t["hp"], t["loss"]) for k, t in enumerate(proxy)]
    settings.append(("direct best", res["best_direct"], None))
    widths = (res["proxy_width"], res["target_width"])
    label, factory, make_opt = next(s for s in sides(cfg_args) if s[0] == args.side)
    data = stdlib_text_data(block_size=cfg_args.block, batch_size=cfg_args.batch, vocab=64)
    names = sorted({k for _, hp, _ in settings for k in hp})
    cfg, _ = make_trial_config(factory, names, steps=res["steps"], data=data,
                               make_optimizer=make_opt)
    trials = [((i, j, k), TrialPoint(w, hp), hp, s)
              for i, (_, hp, _) in enumerate(settings) for j, w in enumerate(widths)
              for k, s in enumerate(args.seeds)]
    losses = np.full((len(settings), len(widths), len(args.seeds)), math.nan)
    t0 = time.perf_counter()

    def collect(r):
        if r.error is not None:
            raise TransferError(r.error)
        losses[r.key] = r.final
        print(f"  {settings[r.key[0]][0]} width {widths[r.key[1]]} seed {args.seeds[r.key[2]]}: "
              f"{r.final:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    run_trials(cfg, trials, collect, backend="local", workers=args.workers)
    mean = losses.mean(axis=2)
    err = losses.std(axis=2, ddof=1) / math.sqrt(len(args.seeds))
    rows = []
    print(f"\n{label}: {res['steps']} steps, seeds {args.seeds}")
    print(f"{'setting':12s} {'hp':52s} " + " ".join(f"{'width ' + str(w):>16s}" for w in widths))
    for i, (name, hp, search_loss) in enumerate(settings):
        hp_text = ", ".join(f"{k} 2^{math.log2(v):+.2f}" for k, v in sorted(hp.items()))
        print(f"{name:12s} {hp_text:52s} " + " ".join(
            f"{mean[i, j]:.4f}+-{err[i, j]:.4f}" for j in range(len(widths))))
        rows.append({"setting": name, "hp": hp, "search_loss_seed0": search_loss,
                     "losses": {str(w): losses[i, j].tolist() for j, w in enumerate(widths)},
                     "mean": mean[i].tolist(), "stderr": err[i].tolist()})
    with open(args.out, "w") as fh:
        json.dump({"source": os.path.relpath(args.result, HERE), "side": label, "widths": widths,
                   "seeds": args.seeds, "steps": res["steps"], "rows": rows,
                   "wall_s": round(time.perf_counter() - t0, 1)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
