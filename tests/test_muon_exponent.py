"""The second hidden layer's change under Muon "match_rms_adamw": n^1, carried by dW dz alone.

Hand derivation (torch 2.13, torch/optim/_muon.py). Muon steps W -= lr * s * O, O the 5-step
Newton-Schulz polar factor of the (Frobenius-normalised) momentum: for a gradient of finite rank
r (the batch) it is ~ U V^T, spectral norm ~1, rows spanning the batch's layer inputs;
s = sqrt(max(1, A/B)) ("original") or 0.2 sqrt(max(A, B)) ("match_rms_adamw") for an A x B
weight: s = 1 or 0.2 n^1/2 for n x n. So for v in O's row space, O v has norm ~ ||v|| spread
over n coordinates: coordinates of dW v ~ lr s * (coordinates of v).

Model (tests/test_optimizers.py's MLP): z0 = relu(W0 x) (AdamW, fan-in 16), h1 = W1 z0,
z1 = relu(h1), h2 = W2 z1 (Muon lr 0.02, n x n), a zero-init readout (AdamW): update 1 moves only the readout, update 2 is the first Muon step.
Its change, with s = 0.2 n^1/2 (Everett et al. 2024, arXiv 2407.05872, §3 for the split):
* input layer (AdamW, finite fan-in): dz0 ~ lr_adam, Theta(1) in n: exponent 0;
* h1: dW1 z0 ~ lr s (z0 spans O1's rows) -> 1/2; W1 dz0 ~ n^-1/2 n^1/2 (CLT) -> 0;
  dW1 dz0 ~ lr s -> 1/2. So dh1, dz1 ~ n^1/2;
* h2: dW2 z1 ~ lr s -> 1/2; W2 dz1 ~ n^-1/2 * n^1/2 * n^1/2 (n CLT terms) -> 1/2;
  dW2 dz1 ~ lr s * (coordinates of dz1) = n^1/2 * n^1/2 -> 1 (dz1 overlaps the span of z1,
  which spans O2's rows: relu outputs are nonnegative, so <dz1, z1> ~ n * their coordinates).
So h2's change is n^1 asymptotically (TP alignment: u = 1 for dW dz), but that term is second
order in lr (lr^2 n against lr n^1/2): at lr 0.02 the n^1/2 terms dominate up to n ~ 2e5
(benchmarks/muon_terms.py). "original" (s = 1): every term exponent 0.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from tensorprog import analyze, check
from tensorprog.measure.judge import Tolerance, second_order_notes
from test_optimizers import MLP, X, hybrid  # its Muon + AdamW MLP (Muon lr 0.02 by default)

HALF = sp.Rational(1, 2)
WIDTHS = (64, 128, 256, 512)


# (h1 change, h2 change, h2's terms dW z0 / W0 dz / dW dz) at update 2, from the derivation above
HAND = {"match_rms_adamw": (HALF, 1, (HALF, HALF, 1)), "original": (0, 0, (0, 0, 0))}


@pytest.mark.parametrize("adjust", sorted(HAND))
def test_engine_exponents_match_the_hand_derivation(adjust):
    rep = analyze(MLP, (64, 128, 256), example_inputs=(X,), make_optimizer=hybrid(adjust), steps=2)
    s2 = rep.propagation.steps[2]
    dh1, dh2, terms = HAND[adjust]
    assert (s2["linear_1"].dx, s2["linear_2"].dx) == (dh1, dh2)
    assert tuple(s2["linear_2"].terms[k] for k in ("dW z0", "W0 dz", "dW dz")) == terms


def _slopes(lr, seeds=2):
    """Own measurement: log-log slopes (numpy fit) of the three terms of h2's change over
    update 2 and of their sum, mean RMS over seeds."""
    y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    vals = []
    for n in WIDTHS:
        per_seed = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            m = MLP(n)
            opts = hybrid("match_rms_adamw", lr=lr)(m)
            snaps = []
            for t in range(3):
                with torch.no_grad():
                    z1 = torch.relu(m.h1(torch.relu(m.inp(X))))
                    snaps.append((m.h2.weight.detach().clone(), z1))
                if t < 2:
                    for o in opts:
                        o.zero_grad()
                    (0.5 * ((m(X) - y) ** 2).mean()).backward()
                    for o in opts:
                        o.step()
            (W, z), (Wb, zb) = snaps[1], snaps[2]
            dW, dz = Wb - W, zb - z
            terms = [z @ dW.T, dz @ W.T, dz @ dW.T]
            per_seed.append([t.pow(2).mean().sqrt().item() for t in terms + [sum(terms)]])
        vals.append(np.mean(per_seed, axis=0))
    vals = np.array(vals)
    return [float(np.polyfit(np.log(WIDTHS), np.log(vals[:, k]), 1)[0]) for k in range(4)]


def test_measured_terms_have_the_derived_exponents():
    dwz, wdz, dwdz, total = _slopes(0.02)
    assert abs(dwz - 0.5) < 0.15 and abs(wdz - 0.5) < 0.15, (dwz, wdz)
    # the engine's n^1, measured on its own (0.89 at 64..512, 0.95 at 128..1024: finite-width
    # curvature); n^1/2, what an unaligned dW dz (u = 1/2) would give, is far outside
    assert abs(dwdz - 1.0) < 0.2, dwdz
    assert abs(total - 0.5) < 0.15, total  # lr 0.02: the lr n^1/2 terms still dominate
    # a learning rate 50x larger puts the lr^2 n term on top already at these widths (0.81)
    assert _slopes(1.0)[3] > 0.7


def test_check_says_the_measured_half_is_pre_asymptotic():
    rep = check(MLP, WIDTHS, example_inputs=(X,), make_optimizer=hybrid("match_rms_adamw"),
                steps=2, seeds=2, progress=False)
    h = rep.get("linear_2", "change", 2)
    assert h.predicted == 1 and abs(h.slope - 0.5) < 0.15, (h.predicted, h.slope)
    assert h.status == "confirmed"  # growth, the sign the judge tests
    assert "pre-asymptotic" in h.note and "dW dz" in h.note and "n^1/2" in h.note, h.note
    # the note compares exponents: a slope at the predicted n^1, or far from both, gets none
    for slope in (1.0, 0.2):
        h.slope, h.note = slope, None
        second_order_notes([h], rep.propagation, rep.graph, Tolerance())
        assert h.note is None, (slope, h.note)
    orig = check(MLP, WIDTHS, example_inputs=(X,), make_optimizer=hybrid("original"),
                 steps=2, seeds=2, progress=False).get("linear_2", "change", 2)
    assert orig.status == "confirmed" and "pre-asymptotic" not in (orig.note or "")
