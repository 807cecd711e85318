"""How fast is a verdict? tensorprog.analyze vs the public mup package's coordinate check.

Prints, in one run:
  1. end-to-end ``analyze`` time (trace + engine + verdict) for a 12-layer GPT-2 config at
     widths 64/128/256 (target: under 5 s on 2 cores);
  2. on the same MLP (the mup package's CIFAR-10 MLP example: MuReadout + MuAdam, and the SP
     twin with nn.Linear + Adam): ``analyze`` at widths 64/128/256 vs mup's ``get_coord_data``
     as that example runs it (3 steps, 5 seeds, batch 64, widths 64..2048),
     each reaching a judgement (ours: the verdict; theirs: is every module's mean |x| flat in
     width at step 3, judged as in mup's own tests: max/min ratio across widths within 1.2x per
     doubling on average), with the time ratio (target: ours at least 10x faster) and whether
     the two judgements agree.

Needs: pip install pandas; pip install --no-deps mup.
Run: python benchmarks/analyze_speed.py
"""
from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

warnings.filterwarnings("ignore")


def gpt2_factory(n_layer=12):
    from transformers import GPT2Config, GPT2LMHeadModel

    def factory(n):
        return GPT2LMHeadModel(GPT2Config(n_embd=n, n_layer=n_layer, n_head=4, vocab_size=50257,
                                          n_positions=1024, use_cache=False))
    return factory


class MLP(nn.Module):
    """The MLP of the mup package's CIFAR-10 example: 3072 inputs, two hidden layers, 10 classes."""

    def __init__(self, n, readout, d_in=3072, d_out=10):
        super().__init__()
        self.inp, self.hid1, self.hid2 = nn.Linear(d_in, n), nn.Linear(n, n), nn.Linear(n, n)
        self.out = readout(n, d_out)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.hid1(h))
        h = torch.tanh(self.hid2(h))
        return self.out(h)


def mup_mlp(n):
    from mup import MuReadout, set_base_shapes

    m = MLP(n, MuReadout)
    set_base_shapes(m, MLP(64, MuReadout), delta=MLP(128, MuReadout))
    return m


def sp_mlp(n):
    return MLP(n, nn.Linear)


def coord_check_judgement(df, widths):
    """mup-style judgement: mean |x| of every module flat in width at the last step."""
    last = df[df.t == df.t.max()]
    flat = {}
    for module, g in last.groupby("module"):
        g = g.groupby("width").l1.mean().reindex(widths)
        ratio = g.max() / max(g.min(), 1e-30)
        per_doubling = ratio ** (1 / math.log2(widths[-1] / widths[0]))
        flat[module] = per_doubling <= 1.2
    return all(flat.values()), flat


def run_coord_check(factory, mup_opt, widths, steps=3, batch=64, seeds=5):
    """mup's coordinate check as its MLP example runs it: 3 steps, 5 seeds, batch 64."""
    from mup.coord_check import get_coord_data

    torch.manual_seed(0)
    x, y = torch.randn(batch, 3072), torch.randint(0, 10, (batch,))
    models = {w: (lambda w=w: factory(w)) for w in widths}
    t = time.perf_counter()
    df = get_coord_data(models, [(x, y)], optimizer="adam", lr=1e-2, mup=mup_opt, nsteps=steps,
                        nseeds=seeds, cuda=False, show_progress=False, lossfn="xent")
    return time.perf_counter() - t, df


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpt2-layers", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from tensorprog import analyze

    # 1. GPT-2, 12 layers
    f = gpt2_factory(args.gpt2_layers)
    x = torch.randint(0, 50257, (1, 64))
    analyze(gpt2_factory(1), (64, 128), example_inputs=(x,))  # warm torch.export's caches
    t = time.perf_counter()
    rep = analyze(f, (64, 128, 256), example_inputs=(x,),
                  make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=3e-4))
    t_gpt2 = time.perf_counter() - t
    print(f"analyze, GPT-2 {args.gpt2_layers} layers, widths 64/128/256: {t_gpt2:.2f} s "
          f"-> {rep.parametrization}, {rep.regime} (target < 5 s)")

    # 2. same MLP: verdict vs coordinate check
    import mup

    widths_cc = [64, 128, 256, 512, 1024, 2048]
    for label, factory, make_opt, mup_opt in [
        ("muP (MuReadout + MuAdam)", mup_mlp, lambda m: mup.MuAdam(m.parameters(), lr=1e-2), True),
        ("SP (nn.Linear + Adam)", sp_mlp, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), False),
    ]:
        xin = torch.randn(64, 3072)
        t = time.perf_counter()
        rep = analyze(factory, (64, 128, 256), example_inputs=(xin,), make_optimizer=make_opt)
        t_ours = time.perf_counter() - t
        t_cc, df = run_coord_check(factory, mup_opt, widths_cc)
        flat, per_module = coord_check_judgement(df, widths_cc)
        ours_mup = rep.parametrization == "muP" and rep.stable
        print(f"{label}: analyze {t_ours:.2f} s -> {rep.parametrization} ({rep.regime}); "
              f"coord check (3 steps, 5 seeds, widths 64..2048) {t_cc:.2f} s -> "
              f"{'flat' if flat else 'not flat: ' + ', '.join(k or '(model output)' for k, v in per_module.items() if not v)}; "
              f"speed-up {t_cc / t_ours:.1f}x; agree: {ours_mup == flat}")


if __name__ == "__main__":
    main()
