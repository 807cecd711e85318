"""What does apply_mup's per-module attention scale cost? (transform/attention_scale.py)

The muP attention scale is a per-thread TorchFunctionMode entered around the forward of each
module that calls scaled_dot_product_attention: every torch call inside those modules goes
through one Python function. This times, in one run, the forward (and forward + backward) of the
zoo GPT in muP at several widths, against the same model with the attention hooks removed and
the muP scale written into the modules' ``scale`` attribute instead (identical outputs, no mode),
and prints the time ratios.

Run: python benchmarks/attention_scale.py [--widths 64 256 1024] [--repeats 30]

Measured (2 shared CPU cores, one torch thread, best of 15; zoo GPT, 2 layers):

 width   fwd mode  fwd plain  ratio   f+b mode  f+b plain  ratio
    64     0.65ms     0.55ms   1.18     1.95ms     1.81ms   1.08
   256     3.32ms     3.34ms   0.99    10.83ms    11.31ms   0.96
   512    12.12ms    11.83ms   1.02    36.46ms    38.06ms   0.96

so the mode costs ~0.1 ms per forward: visible on a tiny model, within noise from width 256.
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from tensorprog.transform.attention_scale import AttentionScale
from tensorprog.transform.mup import apply_mup
from tensorprog.zoo import example


def without_mode(model, base, width):
    """The same model with the attention written in: hooks removed, ``attn.scale`` set."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for k in [k for k, h in hooks.items()
                      if isinstance(getattr(h, "__self__", None), AttentionScale)]:
                del hooks[k]
        if hasattr(m, "d_head") and hasattr(m, "scale"):
            m.scale = m.d_head ** -0.5 * math.sqrt(base / width)
    return twin


def timed(fn, repeats):
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = 64
    ex = example("gpt", param="sp", optimizer="adam", base_width=base)
    mf, _ = apply_mup(ex.factory, base, example_inputs=ex.example_inputs,
                      widths=(base, 2 * base), lr=1e-3)
    print(f"{'width':>6} {'fwd mode':>10} {'fwd plain':>10} {'ratio':>6} {'f+b mode':>10} "
          f"{'f+b plain':>10} {'ratio':>6}")
    for w in args.widths:
        torch.manual_seed(0)
        model = mf(w)
        twin = without_mode(model, base, w)
        x = ex.example_inputs(w)
        with torch.no_grad():
            assert torch.allclose(model(*x), twin(*x), rtol=1e-5, atol=1e-6)

        def fwd(m):
            with torch.no_grad():
                m(*x)

        def fwd_bwd(m):
            m(*x).square().mean().backward()
        f1, f0 = timed(lambda: fwd(model), args.repeats), timed(lambda: fwd(twin), args.repeats)
        b1, b0 = timed(lambda: fwd_bwd(model), args.repeats), timed(lambda: fwd_bwd(twin), args.repeats)
        print(f"{w:>6} {f1 * 1e3:>8.2f}ms {f0 * 1e3:>8.2f}ms {f1 / f0:>6.2f} {b1 * 1e3:>8.2f}ms "
              f"{b0 * 1e3:>8.2f}ms {b1 / b0:>6.2f}")


if __name__ == "__main__":
    main()
