"""``check`` confirms the Muon predictions to width 2048 (issue 10's "Done when"), CPU.

The test suite runs the same check to width 1024 (tests/test_optimizers.py::
test_check_confirms_muon_predictions, ~2-6 s); adding width 2048 costs 40-80 s on this project's
2-core machine (Muon's Newton-Schulz iteration is five 2048^3 matmul rounds per hidden matrix and
step), too slow for the suite, so the 2048 figures are measured here and recorded in README.

Model: input (AdamW), two hidden n x n layers (torch.optim.Muon, lr 0.02), a zero-init readout
with a 64/n multiplier (AdamW): TP5 (arXiv 2203.03466) App. D.2 / Table 8's readout. Prediction
(spectral condition, Yang, Simon, Bernstein 2023, arXiv 2310.17813): with a constant lr the
second hidden layer's output change is flat in width for ``adjust_lr_fn="original"``
(sqrt(max(1, A/B)) = 1 for a square matrix) and grows for "match_rms_adamw"
(0.2 sqrt(max(A, B)) = 0.2 n^{1/2}): like n^{1/2} in its first-order terms dW2 z1, W2 dz1, and
like n^1 in dW2 dz1, the engine's prediction, which is second order in lr and overtakes only
near n ~ 2e5 at lr 0.02 (benchmarks/muon_terms.py measures the terms; ``check`` confirms the
growth and notes the slope ~1/2 as pre-asymptotic). Prints, per adjust_lr_fn: refuted nodes (expected none),
the hidden change's status and slope over widths 64..2048, and the time against the same
check to width 1024 in the same run.

    python benchmarks/muon_check.py [--steps 3] [--seeds 2] [--threads 1]
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
import torch.nn as nn

from tensorprog import check


class MuonMLP(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.n = n
        self.inp = nn.Linear(16, n, bias=False)
        self.h1, self.h2 = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
        self.out = nn.Linear(n, 4, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = torch.relu(self.h2(torch.relu(self.h1(h))))
        return self.out(h) * (64 / self.n)


def muon_adamw(adjust):
    def make(m):
        return [torch.optim.Muon([m.h1.weight, m.h2.weight], lr=0.02, adjust_lr_fn=adjust,
                                 weight_decay=0.0),
                torch.optim.AdamW([m.inp.weight, m.out.weight], lr=1e-3, weight_decay=0.0)]
    return make


def run(adjust, widths, steps, seeds, x):
    t0 = time.perf_counter()
    rep = check(MuonMLP, widths, example_inputs=(x,), make_optimizer=muon_adamw(adjust),
                steps=steps, seeds=seeds, progress=False)
    h = rep.get("linear_2", "change", steps)
    return time.perf_counter() - t0, rep.refuted(), h


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    for adjust in ("original", "match_rms_adamw"):
        base_s, _, _ = run(adjust, (64, 128, 256, 512, 1024), args.steps, args.seeds, x)
        s, refuted, h = run(adjust, (64, 128, 256, 512, 1024, 2048), args.steps, args.seeds, x)
        print(f"{adjust:16s} widths 64..2048: refuted {len(refuted)} "
              f"{[(r.node, r.kind, r.step) for r in refuted]}; hidden change {h.status}, "
              f"slope {h.slope:+.3f} (predicted {h.predicted}; {h.note or 'no note'}); {s:.1f} s "
              f"({s / base_s:.1f}x the check to 1024, {base_s:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
