"""Does muP's best init scale move with width? The readout init decides (TP5 arXiv 2203.03466).

``init_scale`` multiplies the init of every weight matrix (TP5 Figure 3's global init-std
multiplier). In a muP model whose readout starts non-zero (TP5 Table 3: readout init variance
1/fan_in^2, here SP std * sqrt(base_width / width)), the network's output at init is a random
function of size ~ init_scale * sqrt(base_width / width): the training loss pays for it, more at
narrow widths, so a large init scale is penalised less as width grows and the best init scale
moves up by a finite-width correction that fades like width^-1/2. With the readout zero at init
(TP5 App. D.2, the mup package's recommendation) that term is gone and only the hidden layers'
(width-independent, in muP) response to the init scale is left.

This script sweeps ``init_scale`` on the zoo's 3-layer tanh muP MLP (teacher-student regression,
Adam, lr = the base lr of ``benchmarks/results/transfer_hparams_mlp.json``) with both readout
inits, several seeds, and reports the drift of the parabola-refined argmin per width doubling,
with two uncertainties: the least-squares standard error over widths, and the spread over seeds
(bootstrap: seeds resampled with replacement, the grid averaged, refined and fitted again).

``--hps lr output_mult --readouts zero --tag transfer_zero_readout`` sweeps the other two
(grids of ``benchmarks/transfer.py --mode hparams``) for the zero-readout model.

``--model gpt`` does the same for the zoo's 2-layer muP GPT with its readout and query zero at
init (TP5 App. D.2) on the stdlib character-level task (100 steps, batch 16 x 32 tokens, the grids
and base lr of ``benchmarks/transfer.py --mode hparams --model gpt --mup zoo --zero-init``, whose
JSON ``--add-seeds-from`` takes, so its seed-0 runs are not trained again).

Run: ``python benchmarks/transfer_init_scale.py`` (about 10 minutes on 2 cores). Writes
``benchmarks/out/<tag>.{json,png}`` (tag ``transfer_init_scale``) and copies the figure and JSON to
``benchmarks/figures/`` and ``benchmarks/results/``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time

import numpy as np

from tensorprog import zoo
from tensorprog.transfer import (Sweep, plot_hp_panels, stdlib_text_data, sweep, teacher_student_data,
                                 zoo_optimizer)

HERE = os.path.dirname(os.path.abspath(__file__))
READOUTS = {"muP, readout init ~ 1/width (Table 3)": False,
            "muP, zero readout init (App. D.2)": True}
#: --hps other than init_scale: the grids of benchmarks/transfer.py --mode hparams
OTHER_GRIDS = {"lr": [2.0 ** k for k in range(-14, -3)],
               "output_mult": [2.0 ** k for k in range(-4, 4)]}


GPT_GRIDS = {"lr": [2.0 ** k for k in range(-12, -4)],          # benchmarks/transfer.py's
             "output_mult": [2.0 ** k for k in range(-4, 4)],   # GPT grids
             "init_scale": [2.0 ** (k / 2) for k in range(-4, 5)]}
GPT_LABEL = "muP GPT, zero readout + query (App. D.2)"


def gpt_setup(args):
    """(factory, data, base lr, {hp: seed-0 Sweep or None}) of ``--model gpt``."""
    factory = functools.partial(zoo.GPT, param="mup", base_width=64, block_size=32, n_layer=2,
                                n_head=4, vocab_size=64, readout_zero_init=True,
                                query_zero_init=True)
    data = stdlib_text_data(block_size=32, batch_size=16, vocab=64)
    if not args.add_seeds_from:
        return factory, data, args.base_lr, {}
    with open(args.add_seeds_from) as fh:
        stored = json.load(fh)
    row = next(r for label, r in stored["rows"].items() if label.startswith("muP"))
    return factory, data, stored["base_lr"], {hp: Sweep.from_dict(d) for hp, d in row.items()}


def with_stored_seeds(s: Sweep, stored: Sweep | None) -> Sweep:
    """``s`` with the seeds of ``stored`` (same widths and grid) added along the seed axis."""
    if stored is None:
        return s
    if stored.widths != s.widths or not np.allclose(stored.lrs, s.lrs):
        sys.exit(f"--add-seeds-from: {s.hp}'s stored widths / grid differ from this run's")
    return Sweep(widths=s.widths, lrs=s.lrs, losses=np.concatenate([stored.losses, s.losses], 2),
                 seeds=tuple(stored.seeds) + tuple(s.seeds), hp=s.hp, scale=s.scale, name=s.name)


def seed_bootstrap(s: Sweep, draws: int = 400, rng_seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the refined drift over seed resamples (with replacement)."""
    rng = np.random.default_rng(rng_seed)
    k = len(s.seeds)
    out = []
    for _ in range(draws):
        pick = rng.integers(0, k, size=k)
        sub = Sweep(widths=s.widths, lrs=s.lrs, losses=s.losses[:, :, pick],
                    seeds=tuple(range(k)), hp=s.hp, scale=s.scale)
        out.append(sub.drift_refined)
    out = np.asarray(out)
    out = out[np.isfinite(out)]
    return float(out.mean()), float(out.std(ddof=1))


def per_seed(s: Sweep) -> list[float]:
    return [Sweep(widths=s.widths, lrs=s.lrs, losses=s.losses[:, :, k:k + 1], seeds=(sd,),
                  hp=s.hp, scale=s.scale).drift_refined for k, sd in enumerate(s.seeds)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--log2-range", type=float, nargs=2, default=(-1.5, 2.0))
    ap.add_argument("--step", type=float, default=0.25, help="grid spacing in log2 units")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--hps", nargs="+", default=["init_scale"],
                    choices=["init_scale", *OTHER_GRIDS], help="what to sweep (one at a time)")
    ap.add_argument("--readouts", nargs="+", default=["table3", "zero"], choices=["table3", "zero"])
    ap.add_argument("--tag", help="output file name (default transfer_init_scale[_gpt])")
    ap.add_argument("--model", choices=("mlp", "gpt"), default="mlp")
    ap.add_argument("--base-lr", type=float, default=2.0 ** -7,
                    help="--model gpt without --add-seeds-from: the lr of the other sweeps")
    ap.add_argument("--add-seeds-from", metavar="JSON", help="--model gpt: a benchmarks/transfer.py "
                    "--mode hparams JSON whose muP sweeps (same grids) join this run's seeds")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    args.tag = args.tag or ("transfer_init_scale" + ("_gpt" if args.model == "gpt" else ""))
    if args.model == "gpt":
        if args.widths == ap.get_default("widths"):
            args.widths = [64, 128, 256, 512]
        if args.steps == ap.get_default("steps"):
            args.steps = 100
        gpt_factory, gpt_data, base_lr, stored = gpt_setup(args)
        for hp, st in stored.items():       # fail before training, not after
            if hp in args.hps and (list(st.widths) != sorted(args.widths)
                                   or not np.allclose(st.lrs, GPT_GRIDS[hp])):
                sys.exit(f"--add-seeds-from: its {hp} sweep has widths {list(st.widths)} and grid "
                         f"{list(st.lrs)}; this run's are {sorted(args.widths)}, {GPT_GRIDS[hp]}")
    else:
        with open(os.path.join(HERE, "results", "transfer_hparams_mlp.json")) as fh:
            base_lr = json.load(fh)["base_lr"]
    lo, hi = args.log2_range
    grid = [2.0 ** (lo + i * args.step) for i in range(int(round((hi - lo) / args.step)) + 1)]
    data = teacher_student_data(batch_size=64)
    t0 = time.perf_counter()
    rows, report = {}, {}
    chosen = {label: zero for label, zero in READOUTS.items()
              if ("zero" if zero else "table3") in args.readouts}
    if args.model == "gpt":
        chosen = {GPT_LABEL: True}
    for (label, zero), hp in ((r, hp) for r in chosen.items() for hp in args.hps):
        if args.model == "gpt":
            factory, values, hp_data = gpt_factory, GPT_GRIDS[hp], gpt_data
        else:
            factory = functools.partial(zoo.MLP, param="mup", depth=3, base_width=64,
                                        readout_zero_init=zero)
            values, hp_data = (grid if hp == "init_scale" else OTHER_GRIDS[hp]), data
        res = sweep(factory, args.widths, hparams={hp: values},
                    base={} if hp == "lr" else {"lr": base_lr},
                    steps=args.steps, data=hp_data, seeds=args.seeds,
                    make_optimizer=zoo_optimizer("adam"), workers=args.workers,
                    progress=not args.quiet, name=label)
        s = with_stored_seeds(res[hp], stored.get(hp)) if args.model == "gpt" else res[hp]
        rows.setdefault(label, {})[hp] = s
        boot = seed_bootstrap(s)
        report.setdefault(label, {})[hp] = {
            "refined_best_log2": [float(np.log2(v)) for v in s.refined_best_value],
            "drift_grid": [s.drift, s.drift_err],
            "drift_refined": [s.drift_refined, s.drift_refined_err],
            "drift_seed_bootstrap": list(boot),
            "drift_per_seed": per_seed(s),
            "sweep": s.to_dict(histories=False),
        }
        print(f"{label}: refined best log2 {hp} per width "
              f"{[round(v, 2) for v in report[label][hp]['refined_best_log2']]}; {s.summary()}; "
              f"seed bootstrap {boot[0]:+.2f} +- {boot[1]:.2f}; per seed "
              f"{[round(d, 2) for d in report[label][hp]['drift_per_seed']]}", flush=True)
    wall = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, args.tag + ".png")
    plot_hp_panels(rows, png)
    path = os.path.join(args.out, args.tag + ".json")
    with open(path, "w") as fh:
        json.dump({"config": {**vars(args), "base_lr": base_lr, "grid": grid}, "wall_s": round(wall, 1),
                   "rows": report}, fh, indent=1, default=str)
    shutil.copyfile(png, os.path.join(HERE, "figures", args.tag + ".png"))
    shutil.copyfile(path, os.path.join(HERE, "results", args.tag + ".json"))
    print(f"wall time {wall:.0f} s; {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
