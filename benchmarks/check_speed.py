"""How fast is ``tensorprog.check``? Two comparisons, one run.

(a) against the public mup package's coordinate check (``mup.coord_check.get_coord_data``) on the
    same model (an MLP with nn.Linear hidden layers and a MuReadout, set_base_shapes, MuAdam),
    the same widths, steps, seeds and batch. Target: ours no slower. mup records mean |x| of
    every module output during its training forwards (nsteps forwards and updates); ours records
    every ATen node (parameters included) at init and after each update, plus the change from
    init, and also traces the model for the engine's predictions.
(b) against a bare training loop (build, optimizer, ``steps`` forward/backward/update per width
    and seed, nothing recorded) over the same widths, steps and seeds. Target: overhead < 1.3x.
    Reported twice: the whole ``check`` (predictions included: trace + propagate), and the
    measurement alone (``check(graph=...)`` with the trace done beforehand).

Each timing is the best of ``--repeat`` interleaved runs (the machine may be shared). Single-threaded torch
by default (``--threads``): on a contended 2-core machine multi-threaded BLAS on small matrices
is slower and noisier than one thread, for both sides alike.

    python benchmarks/check_speed.py [--widths 256,512,1024,2048,4096] [--batch 64] [--steps 3]
                                     [--seeds 3] [--repeat 3] [--threads 1] [--device cpu]
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
import torch.nn.functional as F

from tensorprog import check
from tensorprog.graph.trace import trace


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="256,512,1024,2048,4096")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",")]
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    try:
        import mup
        from mup.coord_check import get_coord_data
    except ImportError:
        print("the mup package is not installed: pip install mup --no-deps")
        return 1

    d_in, d_out, base = 64, 10, 64

    class MuMLP(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc1 = nn.Linear(d_in, width)
            self.fc2 = nn.Linear(width, width)
            self.fc3 = nn.Linear(width, width)
            self.readout = mup.MuReadout(width, d_out)

        def forward(self, x):
            return self.readout(F.relu(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))))

    def factory(width):
        m = MuMLP(width)
        mup.set_base_shapes(m, MuMLP(base), delta=MuMLP(2 * base))
        return m

    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, d_in, generator=g)
    y = torch.randint(d_out, (a.batch,), generator=g)
    lr = 1e-2
    make_opt = lambda m: mup.MuAdam(m.parameters(), lr=lr)  # noqa: E731
    loss = lambda out, inputs: F.cross_entropy(out, y.to(out.device))  # noqa: E731
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t, out

    def run_mup():
        models = {w: (lambda w=w: factory(w)) for w in widths}
        return get_coord_data(models, [(x, y)], optimizer="adam", lr=lr, mup=True,
                              nsteps=a.steps, nseeds=a.seeds, cuda=dev.type == "cuda",
                              show_progress=False, lossfn="xent")

    def run_bare():
        xs, ys = x.to(dev), y.to(dev)
        for w in widths:
            for s in range(a.seeds):
                torch.manual_seed(s)
                with torch.device(dev):
                    m = factory(w)
                opt = make_opt(m)
                for _ in range(a.steps):
                    out = m(xs)
                    l_ = F.cross_entropy(out, ys)
                    opt.zero_grad(set_to_none=True)
                    l_.backward()
                    opt.step()
        return None

    def run_ours(graph=None):
        return check(factory, widths, example_inputs=(x,), make_optimizer=make_opt, loss=loss,
                     steps=a.steps, seeds=a.seeds, device=a.device, progress=False, graph=graph)

    # warm-up (imports, torch.export's first call, allocator)
    run_ours()
    run_bare()
    get_coord_data({widths[0]: lambda: factory(widths[0])}, [(x, y)], optimizer="adam", lr=lr,
                   nsteps=1, nseeds=1, cuda=dev.type == "cuda", show_progress=False)

    graph = trace(factory, widths[:3], example_inputs=(x,), make_optimizer=make_opt)
    def run_ours_same_states():
        # mup's nsteps forwards observe init and the first nsteps - 1 updates (its last update is
        # never measured); ours with steps - 1 observes exactly those states
        return check(factory, widths, example_inputs=(x,), make_optimizer=make_opt, loss=loss,
                     steps=a.steps - 1, seeds=a.seeds, device=a.device, progress=False)

    runs = {"mup": run_mup, "bare": run_bare, "ours": run_ours, "meas": lambda: run_ours(graph),
            "same": run_ours_same_states}
    times = {k: [] for k in runs}
    outs = {}
    for _ in range(a.repeat):  # interleaved, so that load changes hit every variant alike
        for k, fn in runs.items():
            t, outs[k] = timed(fn)
            times[k].append(t)
    t_mup, t_bare, t_ours, t_meas, t_same = (min(times[k]) for k in ("mup", "bare", "ours", "meas",
                                                                       "same"))
    df, rep = outs["mup"], outs["ours"]

    print(f"model: MLP {d_in} -> 3 x width (ReLU) -> MuReadout({d_out}), MuAdam lr {lr}, batch "
          f"{a.batch}; widths {widths}, {a.steps} steps, {a.seeds} seeds; {dev}, "
          f"{torch.get_num_threads()} thread(s); best of {a.repeat}")
    print(f"  mup get_coord_data:           {t_mup:7.2f} s  ({len(df)} rows: module outputs x steps)")
    print(f"  tensorprog check (all):       {t_ours:7.2f} s  ({len(rep.records)} predictions tested, "
          f"verdict {rep.verdict}; trace+propagate {rep.seconds['predict']:.2f} s, "
          f"exports {rep.seconds['export']:.2f} s)")
    print(f"  tensorprog check (graph= given): {t_meas:4.2f} s")
    print(f"  bare training loop:           {t_bare:7.2f} s")
    print(f"(a) ours / mup:                 {t_ours / t_mup:5.2f}x  (target <= 1.0); ours measures "
          f"the state after the last update too, one more forward per run")
    print(f"(a') same measured states (ours with {a.steps - 1} steps = mup's {a.steps} forwards): "
          f"{t_same:.2f} s, {t_same / t_mup:5.2f}x")
    print(f"(b) ours / bare loop:           {t_ours / t_bare:5.2f}x  with predictions; "
          f"{t_meas / t_bare:5.2f}x measurement only  (target < 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
