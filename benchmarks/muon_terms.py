"""The second hidden layer's one-step change under Muon, split into its three terms (CPU).

Model: benchmarks/muon_check.py's (input layer AdamW lr 1e-3, two hidden n x n layers
torch.optim.Muon, a zero-init readout with a 64/n multiplier, AdamW). The readout starts at zero,
so update 1 moves only the readout; update 2 is the first Muon step of the hidden layers. Its
change of h2 = W2 z1 is exactly

    dh2 = dW2 z1 + W2 dz1 + dW2 dz1      (Everett et al. 2024, arXiv 2407.05872, §3)

With "match_rms_adamw" dW = -lr 0.2 sqrt(n) O, O the Newton-Schulz polar factor of a rank-8
gradient (spectral norm ~1, rows spanning the batch's inputs), so O v has coordinates ~ those of
v for v in its row space: dh1 = dW1 z0 ~ lr sqrt(n), hence dz1 ~ lr sqrt(n); dW2 z1 ~ lr sqrt(n),
W2 dz1 ~ lr sqrt(n) (W2's n^-1/2 entries summed over n independent terms), and dW2 dz1 ~
(lr sqrt(n))^2 = lr^2 n (dz1 lies in dW2's row space: relu outputs all overlap). The engine's
n^1 is that last term; at lr 0.02 it is ~6% of the change at n = 1024. Prints, per width, the
RMS of each term (mean over seeds) and log-log slopes fitted with numpy (all widths and the last
pair), for the given Muon learning rates, plus the crossover width where the n^1 term would
overtake the rest (from the widest width's values).

    python benchmarks/muon_terms.py [--lrs 0.02,1.0] [--widths 128,256,512,1024,2048] [--seeds 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from muon_check import MuonMLP  # this directory's script


def hidden(m, x):
    """(h1, z1, h2): the first hidden pre-activation, its relu, the second pre-activation."""
    h1 = m.h1(torch.relu(m.inp(x)))
    z1 = torch.relu(h1)
    return h1, z1, m.h2(z1)


def one_step_terms(n, seed, lr, adjust, x, y):
    """RMS of dh1 and of the three terms of dh2 over update 2 (the first Muon step), and of
    h2_3 - h2_0 (what ``check`` measures at step 3)."""
    torch.manual_seed(seed)
    m = MuonMLP(n)
    opts = [torch.optim.Muon([m.h1.weight, m.h2.weight], lr=lr, adjust_lr_fn=adjust, weight_decay=0.0),
            torch.optim.AdamW([m.inp.weight, m.out.weight], lr=1e-3, weight_decay=0.0)]
    snaps = []
    for t in range(4):
        with torch.no_grad():
            snaps.append((m.h2.weight.detach().clone(), *hidden(m, x)))
        if t == 3:
            break
        for o in opts:
            o.zero_grad()
        (0.5 * ((m(x) - y) ** 2).mean()).backward()
        for o in opts:
            o.step()
    rms = lambda v: v.pow(2).mean().sqrt().item()  # noqa: E731
    (W2, h1, z1, h2), (W2b, h1b, z1b, h2b) = snaps[1], snaps[2]
    dW, dz = W2b - W2, z1b - z1
    return {"dh1": rms(h1b - h1), "dW2 z1": rms(z1 @ dW.T), "W2 dz1": rms(dz @ W2.T),
            "dW2 dz1": rms(dz @ dW.T), "dh2": rms(h2b - h2), "dh2 (3 steps)": rms(snaps[3][3] - snaps[0][3])}


def slope(widths, values):
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", default="0.02,1.0")
    ap.add_argument("--widths", default="128,256,512,1024,2048")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--adjust", default="match_rms_adamw")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
    for lr in (float(v) for v in args.lrs.split(",")):
        t0 = time.perf_counter()
        res = {}
        for n in widths:
            runs = [one_step_terms(n, s, lr, args.adjust, x, y) for s in range(args.seeds)]
            res[n] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        print(f"{args.adjust}, Muon lr {lr}, widths {widths}, {args.seeds} seeds "
              f"({time.perf_counter() - t0:.0f} s)")
        print(f"  {'term':14s} " + " ".join(f"{n:>8d}" for n in widths) + "   slope  last pair")
        for k in res[widths[0]]:
            v = [res[n][k] for n in widths]
            print(f"  {k:14s} " + " ".join(f"{u:8.4f}" for u in v)
                  + f"   {slope(widths, v):+.2f}  {slope(widths[-2:], v[-2:]):+.2f}")
        big = res[widths[-1]]
        first, second = big["dh2"] - big["dW2 dz1"], big["dW2 dz1"]
        if args.adjust == "match_rms_adamw" and 0 < second < first:
            # first ~ n^1/2, second ~ n: equal at n (first / second)^2
            print(f"  the n^1 term overtakes the n^1/2 terms near n ~ {widths[-1] * (first / second) ** 2:.2g}")


if __name__ == "__main__":
    main()
