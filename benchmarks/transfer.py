"""muTransfer, measured: does the best learning rate move with width? SP GPT against its muP version.

One learning-rate sweep per parametrization of the same nanoGPT-style model (``zoo.GPT``, 2 pre-LN
blocks, 4 heads, d_head = width / 4, Adam, constant LR), trained as a character-level language
model on Python's own standard-library sources (``transfer.stdlib_text_data``: no download,
64-token vocabulary). Reports the best learning rate per width and the drift of log2(best lr) per
doubling of width for each, and draws TP5 Figure 1 (training loss vs log2 lr, one curve per
width): SP's optimum should slide to smaller learning rates as width grows (drift clearly < 0),
muP's should stay put (drift ~ 0).

The muP side is ``tensorprog.transform.mup.apply_mup`` applied to the SP GPT when that module is importable
(``--mup auto``, the default; ``--mup apply_mup`` insists on it), and the zoo's hand-written muP GPT
(``zoo.GPT(param="mup")``, TP5 Table 3) otherwise (``--mup zoo`` forces it). Base width 64: there
both sides are the same model with the same learning rates, so their width-64 curves coincide.

CPU default: widths 64, 128, 256, 512; lrs 2^-12 .. 2^-5; 100 steps of batch 16 x 32 tokens;
seed 0; two worker processes on 2 cores: about 5 minutes on an idle machine (10 minutes measured on
a shared, loaded one). ``--gpu``: CUDA, widths 256 .. 4096, lrs 2^-14 .. 2^-6, 200 steps of batch
32 x 128 tokens, trials one after another on the GPU (TF32 matmuls); estimated 15-20 minutes on
one H100 / H200 (width 4096 dominates), not yet run.

Writes ``benchmarks/out/transfer.png`` and ``transfer.json`` (both sweeps, ``Sweep.from_dict``
reads them back) and copies the figure to ``benchmarks/figures/transfer.png`` (``--gpu``:
``transfer_gpu.*``).

Modes (``--mode``):

* ``lr`` (default): the above.
* ``hparams``: TP5 Figure 3, SP against muP: the learning rate, the output multiplier and the
  init scale (``--hps``) each swept across widths with the others at their base values; the
  base learning rate is the best one of the smallest width, measured first in the same run (at
  the base width SP and muP are the same model). Default model ``--model mlp``: the zoo's 3-layer
  tanh MLP on ``teacher_student_data`` (batch 64), widths 64..512, 150 steps, Adam; a few minutes
  on 2 cores. ``--model gpt`` runs the GPT above instead (tens of minutes on CPU).
* ``tune``: TP5 Figure 5: ``transfer.tune`` with ``--budget`` random-search trials over lr,
  output multiplier and init scale at the proxy width (64), the best setting copied to the target
  width (512), against the same search at the target (its own candidates: ``--direct-seed``);
  target losses over ``--final-seeds`` (default 1 2 3: fresh seeds, not the searches' seed 0)
  and compute in parameter-steps; ``--proxy-budget`` gives the proxy search more settings than
  the direct one (a proxy trial is cheap). muP, and SP (``check_mup='warn'``) for contrast.
  The GPT figures in README: ``--model gpt --mup zoo --zero-init --widths 64 512 --proxy-budget
  64 --proxy-seeds 0 4 5`` (about 12 minutes on 2 cores). Trials
  are stored in ``benchmarks/out/transfer_tune_<model>_<side>.jsonl`` as they finish: a killed
  run resumes where it stopped; delete them to start over (other settings are refused).
* ``along``: TP5 Figure 4: the learning-rate optimum of the muP GPT (zero readout and query, TP5
  App. D.2) followed along other scale dimensions at one width (``--along-width``, default 128):
  depth (``n_layer`` 1..8), batch size (8..64), sequence length (8..64) and training steps
  (50..400), each doubled three times with the others at their defaults. Which optima stay and
  which move is measured, not assumed: TP5 reports these transfers as empirical (its Table 1).
  About 5 minutes on 2 cores.

Each mode writes ``benchmarks/out/transfer_<mode>.{png,json}`` and copies the figure to
``benchmarks/figures/`` (the ``lr`` mode keeps its old names).

Run: ``python benchmarks/transfer.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import time

import torch

from tensorprog import zoo
from tensorprog.transfer import (LogUniform, Sweep, TuneResult, plot_hp_panels, plot_sweeps,
                                 stdlib_text_data, sweep, teacher_student_data, tune, zoo_optimizer)

HERE = os.path.dirname(os.path.abspath(__file__))


class AppliedMuP:
    """Picklable muP version of an SP factory via ``tensorprog.transform.mup.apply_mup`` (Adam).

    ``apply_mup`` returns closures (which do not pickle), so each worker process calls it itself,
    once, on first use (it traces the model at base, 2x and 4x base width: a few seconds).
    ``make_optimizer(model, lr)`` passes the swept lr as apply_mup's base lr, so each group gets
    lr * (width / base)^(its muP exponent).
    """

    def __init__(self, sp_factory, base_width: int, example_inputs: tuple, zero_init: tuple = ()):
        self.sp_factory = sp_factory
        self.zero_init = zero_init
        self.base_width = base_width
        self.example_inputs = example_inputs
        self._built = None

    def __getstate__(self):
        return {**self.__dict__, "_built": None}

    def _get(self):
        if self._built is None:
            from tensorprog.transform.mup import apply_mup

            self._built = apply_mup(self.sp_factory, self.base_width,
                                    example_inputs=self.example_inputs,
                                    optimizer_cls=torch.optim.Adam, zero_init=self.zero_init)
        return self._built

    def factory(self, width: int):
        return self._get()[0](width)

    def make_optimizer(self, model, lr: float):
        return self._get()[1](model, lr=lr)


def apply_mup_available() -> tuple[bool, str]:
    try:
        from tensorprog.transform.mup import apply_mup  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- any failure means: use the zoo's muP
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def sides(args):
    """[(label, factory, make_optimizer)] for SP and muP."""
    gpt = functools.partial(zoo.GPT, param="sp", base_width=args.base_width, block_size=args.block,
                            n_layer=args.n_layer, n_head=args.n_head, vocab_size=64)
    sp = ("SP", gpt, zoo_optimizer("adam"))
    ok, why = apply_mup_available()
    if args.mup == "apply_mup" and not ok:
        sys.exit(f"--mup apply_mup: tensorprog.transform.mup.apply_mup is not importable ({why})")
    if args.mup != "zoo" and ok:
        inputs = (torch.randint(64, (2, args.block), generator=torch.Generator().manual_seed(0)),)
        zero = ("readout", "query") if args.zero_init else ()
        m = AppliedMuP(gpt, args.base_width, inputs, zero)
        mup = ("muP = apply_mup(SP GPT" + (", zero readout + query)" if zero else ")"),
               m.factory, m.make_optimizer)
    else:
        if args.mup == "auto":
            print(f"tensorprog.transform.mup.apply_mup not importable ({why}); muP side = zoo.GPT(param='mup')",
                  file=sys.stderr)
        zero = dict(readout_zero_init=True, query_zero_init=True) if args.zero_init else {}
        mup = ("muP (zoo GPT" + (", zero readout + query)" if zero else ", Table 3)"),
               functools.partial(zoo.GPT, param="mup", base_width=args.base_width,
                                 block_size=args.block, n_layer=args.n_layer, n_head=args.n_head,
                                 vocab_size=64, **zero),
               zoo_optimizer("adam"))
    return [sp, mup]


HP_GRIDS = {  # values around 1 for the multipliers (powers of 2), the lr grid from the options
    "output_mult": [2.0 ** k for k in range(-4, 4)],
    "init_scale": [2.0 ** (k / 2) for k in range(-4, 5)],
    "schedule": ["constant", "linear", "cosine", "inverse_sqrt", "step"],
}


def model_sides(args):
    """[(label, factory, make_optimizer)] for SP and muP, and the data."""
    if args.model == "gpt":
        return sides(args), stdlib_text_data(block_size=args.block, batch_size=args.batch, vocab=64)
    out = []
    for label, param in (("SP", "sp"), ("muP (zoo MLP)", "mup")):
        out.append((label, functools.partial(zoo.MLP, param=param, depth=3,
                                             base_width=args.base_width), zoo_optimizer("adam")))
    return out, teacher_student_data(batch_size=args.batch)


def run_hparams(args, lrs, device) -> dict:
    sides_, data = model_sides(args)
    common = dict(steps=args.steps, data=data, seeds=args.seeds, backend=args.backend,
                  workers=args.workers, progress=not args.quiet, device=device)
    # stage 1: the learning rate, both sides; base lr = best lr at the smallest width
    lr_sweeps = {label: sweep(f, args.widths, lrs, make_optimizer=m, name=label, **common)
                 for label, f, m in sides_}
    mup_lr = lr_sweeps[sides_[1][0]]
    base_lr = mup_lr.refined_best_lr[0]
    print(f"base lr (muP, width {args.widths[0]}, parabola-refined): {base_lr:.3g}", flush=True)
    rows = {}
    for label, f, m in sides_:
        others = {hp: HP_GRIDS[hp] for hp in args.hps if hp != "lr"}
        res = sweep(f, args.widths, hparams=others, base={"lr": base_lr}, make_optimizer=m,
                    name=label, **common) if others else {}
        rows[label] = {"lr": lr_sweeps[label], **res} if "lr" in args.hps else dict(res)
    return {"rows": rows, "base_lr": base_lr}


def run_tune(args, device) -> dict:
    sides_, data = model_sides(args)
    space = {"lr": LogUniform(2.0 ** args.lr_log2[0], 2.0 ** args.lr_log2[1]),
             "output_mult": LogUniform(2.0 ** -4, 2.0 ** 3),
             "init_scale": LogUniform(2.0 ** -2, 2.0 ** 2)}
    results = {}
    for label, f, m in sides_:
        if args.side != "both" and label.split()[0] != args.side:
            continue
        store = os.path.join(args.out, f"{args.tag or 'transfer_tune_' + args.model}_"
                                       f"{label.split()[0]}.jsonl")
        results[label] = tune(f, space, proxy_width=args.widths[0], target_width=args.widths[-1],
                              budget=args.budget, steps=args.steps, data=data, make_optimizer=m,
                              final_seeds=args.final_seeds, store=store, backend=args.backend,
                              workers=args.workers, progress=not args.quiet, device=device,
                              check_mup="warn" if label == "SP" else "refuse", name=label,
                              sampler=args.sampler, direct_seed=args.direct_seed,
                              proxy_seeds=args.proxy_seeds, proxy_budget=args.proxy_budget)
        print(f"\n{results[label]}\n", flush=True)
    return results


ALONG_SIZES = {"n_layer": [1, 2, 4, 8], "batch_size": [8, 16, 32, 64], "seq_len": [8, 16, 32, 64],
               "steps": [50, 100, 200, 400]}


def run_along(args, lrs, device) -> dict:
    """--mode along: {dimension: Sweep} of the muP GPT's lr along each of ``ALONG_SIZES``."""
    longest = max(ALONG_SIZES["seq_len"])
    gpt = functools.partial(zoo.GPT, param="mup", base_width=args.base_width, block_size=longest,
                            n_layer=args.n_layer, n_head=args.n_head, vocab_size=64,
                            readout_zero_init=True, query_zero_init=True)
    data = stdlib_text_data(block_size=longest, batch_size=args.batch, vocab=64)
    default_len = {"seq_len": args.block}          # the other sweeps train on --block tokens
    out = {}
    for dim, sizes in ALONG_SIZES.items():
        if dim not in args.along:
            continue
        kw = {} if dim == "seq_len" else {"base": {"seq_len": default_len["seq_len"]}}
        out[dim] = sweep(gpt, sizes, hparams={"lr": lrs}, along=dim, width=args.along_width,
                         steps=args.steps, data=data, seeds=args.seeds, backend=args.backend,
                         workers=args.workers, progress=not args.quiet, device=device,
                         make_optimizer=zoo_optimizer("adam"),
                         name=f"muP GPT width {args.along_width}", **kw)["lr"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("lr", "hparams", "tune", "along"), default="lr")
    ap.add_argument("--model", choices=("gpt", "mlp"),
                    help="default: gpt for --mode lr, mlp for hparams and tune")
    ap.add_argument("--hps", nargs="+", default=["lr", "output_mult", "init_scale"],
                    choices=["lr", *HP_GRIDS], help="--mode hparams: what to sweep")
    ap.add_argument("--along", nargs="+", default=list(ALONG_SIZES), choices=list(ALONG_SIZES),
                    help="--mode along: the scale dimensions to follow the lr along")
    ap.add_argument("--along-width", type=int, default=128, help="--mode along: the model's width")
    ap.add_argument("--budget", type=int, default=16, help="--mode tune: trials per search")
    ap.add_argument("--proxy-budget", type=int,
                    help="--mode tune: trials of the proxy search (default --budget)")
    ap.add_argument("--final-seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="--mode tune: seeds of the target runs (the searches train with seed 0)")
    ap.add_argument("--proxy-seeds", type=int, nargs="+",
                    help="--mode tune: train every proxy setting at these seeds and rank the "
                    "settings by their mean (default: the search seed 0 only)")
    ap.add_argument("--side", choices=("both", "SP", "muP"), default="both",
                    help="--mode tune: tune SP, muP or both")
    ap.add_argument("--sampler", choices=("random", "tpe"), default="random")
    ap.add_argument("--direct-seed", type=lambda v: None if v == "paired" else int(v), default=1,
                    help="--mode tune: sampler seed of the direct search (the proxy's is 0); "
                    "'paired': the proxy's candidates")
    ap.add_argument("--gpu", action="store_true", help="CUDA, widths up to 4096 (see module docs)")
    ap.add_argument("--widths", type=int, nargs="+")
    ap.add_argument("--lr-log2", type=float, nargs=2, metavar=("LO", "HI"),
                    help="log2 of the smallest and largest lr (grid spaced by 2x)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--block", type=int)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--base-width", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, help="local processes (default: all CPUs)")
    ap.add_argument("--backend", choices=("local", "serial", "ray"),
                    help="default: local on CPU, serial with --gpu")
    ap.add_argument("--mup", choices=("auto", "apply_mup", "zoo"), default="auto")
    ap.add_argument("--zero-init", action="store_true",
                    help="the muP GPT's readout and query start at zero (TP5 App. D.2; "
                    "apply_mup(zero_init=...), or the zoo's with --mup zoo)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--figures", default=os.path.join(HERE, "figures"),
                    help="where the docs-ready copy of the figure goes ('' = none)")
    ap.add_argument("--tag", help="--mode hparams / tune: output file name (default "
                    "transfer[_gpu]_<mode>[_<model>])")
    ap.add_argument("--replot", metavar="JSON", help="--mode tune: redraw the figure (and print "
                    "the summary) of a stored result instead of running")
    ap.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    args = ap.parse_args(argv)

    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu: CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = True
        defaults = dict(widths=[256, 512, 1024, 2048, 4096], lr_log2=(-14, -6), steps=200,
                        batch=32, block=128, backend="serial", device="cuda", tag="transfer_gpu")
    else:
        defaults = dict(widths=[64, 128, 256, 512], lr_log2=(-12, -5), steps=100, batch=16, block=32,
                        backend="local", device="cpu", tag="transfer")
    args.model = args.model or ("gpt" if args.mode in ("lr", "along") else "mlp")
    if args.model == "mlp" and not args.gpu:
        defaults.update(widths=[64, 128, 256, 512], lr_log2=(-14, -4), steps=150, batch=64)
    for key in ("widths", "lr_log2", "steps", "batch", "block", "backend"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.mode != "lr":
        return main_workflow(args, defaults)
    lo, hi = args.lr_log2
    lrs = [2.0 ** k for k in range(int(lo), int(hi) + 1)]
    data = stdlib_text_data(block_size=args.block, batch_size=args.batch, vocab=64)

    print(f"muTransfer benchmark: GPT {args.n_layer} layers, {args.n_head} heads, widths {args.widths}, "
          f"{len(lrs)} lrs 2^{int(lo)}..2^{int(hi)}, {args.steps} steps x {args.batch}x{args.block} "
          f"tokens, seeds {args.seeds}, {args.backend} on {defaults['device']} "
          f"({os.cpu_count()} CPUs, torch {torch.__version__}); text: {len(data.files_read())} stdlib "
          f"files, {data.tokens().numel()} chars", flush=True)
    t0 = time.perf_counter()
    results: list[Sweep] = []
    for label, factory, make_opt in sides(args):
        s = sweep(factory, args.widths, lrs, steps=args.steps, data=data, seeds=args.seeds,
                  make_optimizer=make_opt, backend=args.backend, workers=args.workers,
                  progress=not args.quiet, device=defaults["device"], name=label)
        results.append(s)
        print(f"\n{s}\n", flush=True)
    wall = time.perf_counter() - t0

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, defaults["tag"] + ".png")
    plot_sweeps(results, png)
    payload = {"config": {k: v for k, v in vars(args).items()}, "wall_s": round(wall, 1),
               "sweeps": [s.to_dict() for s in results]}
    with open(os.path.join(args.out, defaults["tag"] + ".json"), "w") as fh:
        json.dump(payload, fh, indent=1, allow_nan=False, default=str)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        shutil.copyfile(png, os.path.join(args.figures, defaults["tag"] + ".png"))

    print("summary")
    for s in results:
        best = ", ".join(f"{w}: 2^{math.log2(lr):.0f}" if math.isfinite(lr) else f"{w}: none"
                         for w, lr in zip(s.widths, s.best_lr))
        print(f"  {s.name:28s} drift {s.drift:+.2f} +- {s.drift_err:.2f} (grid), "
              f"{s.drift_refined:+.2f} +- {s.drift_refined_err:.2f} (refined); best lr {best}")
    print(f"  wall time {wall:.0f} s; figure {png}")
    return 0


def main_workflow(args, defaults) -> int:
    """--mode hparams / tune: run, write JSON and the figure, print the summary."""
    lo, hi = args.lr_log2
    lrs = [2.0 ** k for k in range(int(lo), int(hi) + 1)]
    tag = args.tag or (f"{defaults['tag']}_{args.mode}" + ("" if args.model == "mlp" else f"_{args.model}"))
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, tag + ".png")
    sizes = (f"width {args.along_width}, along {', '.join(args.along)}" if args.mode == "along"
             else f"widths {args.widths}")
    print(f"muTransfer benchmark ({args.mode}): {args.model}, {sizes}, {args.steps} "
          f"steps, batch {args.batch}, seeds {args.seeds}, {args.backend} on {defaults['device']} "
          f"({os.cpu_count()} CPUs, torch {torch.__version__})", flush=True)
    t0 = time.perf_counter()
    if args.mode == "hparams":
        out = run_hparams(args, lrs, defaults["device"])
        plot_hp_panels(out["rows"], png)
        payload = {"base_lr": out["base_lr"],
                   "rows": {label: {hp: s.to_dict() for hp, s in row.items()}
                            for label, row in out["rows"].items()}}
        summary = [f"  {label:16s} {hp:12s} [{s.verdict}] {s.summary()}"
                   for label, row in out["rows"].items() for hp, s in row.items()]
    elif args.mode == "along":
        out = run_along(args, lrs, defaults["device"])
        plot_hp_panels({"muP GPT": out}, png)
        payload = {"rows": {"muP GPT": {dim: s.to_dict() for dim, s in out.items()}}}
        summary = [f"  lr along {dim:10s} [{s.verdict}] {s.summary()}" for dim, s in out.items()]
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if args.replot:
            with open(args.replot) as fh:
                stored = json.load(fh)
            results = {k: TuneResult.from_dict(v) for k, v in stored.items()
                       if k not in ("config", "wall_s")}
        else:
            results = run_tune(args, defaults["device"])
        fig = Figure(figsize=(5.6 * len(results), 4.4))
        FigureCanvasAgg(fig)
        for ax, r in zip(fig.subplots(1, len(results), squeeze=False)[0], results.values()):
            r.plot(ax=ax)
        fig.savefig(png, dpi=110)
        payload = {label: r.to_dict() for label, r in results.items()}
        summary = [f"{label}:\n{r.summary()}" for label, r in results.items()]
    wall = time.perf_counter() - t0
    if not (args.mode == "tune" and args.replot):
        with open(os.path.join(args.out, tag + ".json"), "w") as fh:
            json.dump({"config": vars(args), "wall_s": round(wall, 1), **payload}, fh, indent=1,
                      default=str)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        shutil.copyfile(png, os.path.join(args.figures, tag + ".png"))
    print("summary\n" + "\n".join(summary) + f"\n  wall time {wall:.0f} s; figure {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
