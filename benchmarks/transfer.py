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
from tensorprog.transfer import Sweep, plot_sweeps, stdlib_text_data, sweep, zoo_optimizer

HERE = os.path.dirname(os.path.abspath(__file__))


class AppliedMuP:
    """Picklable muP version of an SP factory via ``tensorprog.transform.mup.apply_mup`` (Adam).

    ``apply_mup`` returns closures (which do not pickle), so each worker process calls it itself,
    once, on first use (it traces the model at base, 2x and 4x base width: a few seconds).
    ``make_optimizer(model, lr)`` passes the swept lr as apply_mup's base lr, so each group gets
    lr * (width / base)^(its muP exponent).
    """

    def __init__(self, sp_factory, base_width: int, example_inputs: tuple):
        self.sp_factory = sp_factory
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
                                    optimizer_cls=torch.optim.Adam)
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
        m = AppliedMuP(gpt, args.base_width, inputs)
        mup = ("muP = apply_mup(SP GPT)", m.factory, m.make_optimizer)
    else:
        if args.mup == "auto":
            print(f"tensorprog.transform.mup.apply_mup not importable ({why}); muP side = zoo.GPT(param='mup')",
                  file=sys.stderr)
        mup = ("muP (zoo GPT, Table 3)",
               functools.partial(zoo.GPT, param="mup", base_width=args.base_width,
                                 block_size=args.block, n_layer=args.n_layer, n_head=args.n_head,
                                 vocab_size=64),
               zoo_optimizer("adam"))
    return [sp, mup]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--figures", default=os.path.join(HERE, "figures"),
                    help="where the docs-ready copy of the figure goes ('' = none)")
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
    for key in ("widths", "lr_log2", "steps", "batch", "block", "backend"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
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


if __name__ == "__main__":
    sys.exit(main())
