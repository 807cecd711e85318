"""Bad inputs and faults for the features added after issue 11's first round (sweep hparams /
along, tune, depth analysis, alignment, eps scaling, hybrid optimizers, max_memory, convergence).

Each case runs in this process and is classified: ``clear`` (a TensorprogError subclass, its
message), ``raw`` (any other exception: type and first line) or ``silent`` (no error: what came
back). Run: ``PYTHONPATH=. python benchmarks/bad_inputs_new.py [--cli]``; the table in
benchmarks/BAD_INPUT_FINDINGS.md records the outcomes before and after the fixes.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import warnings

import torch
import torch.nn as nn

from tensorprog import TensorprogError, analyze, analyze_depth, apply_mup, check, check_depth, rules
from tensorprog.theory.abc import ABC, max_stable_lr_exponent
from tensorprog.theory.limits import convergence
from tensorprog.transfer import Choice, IntUniform, LogUniform, Uniform, read_store, sweep, tune


class MLP(nn.Module):
    def __init__(self, width, d_in=4, d_out=2):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.hid = nn.Linear(width, width)
        self.out = nn.Linear(width, d_out)

    def forward(self, x):
        return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))


def mlp(width):
    return MLP(width)


class Block(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(w, w)

    def forward(self, x):
        return torch.relu(self.fc(x))


class ResNet(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


def resnet(width, depth):
    return ResNet(width, depth)


X = torch.randn(8, 4)
DATA = [(X, torch.randn(8, 2))]


def mse(out, batch):
    return ((out - batch[1]) ** 2).mean()


def sw(**kw):
    args = dict(factory=mlp, widths=(8, 16), steps=2, data=DATA, loss=mse, backend="serial",
                progress=False)
    args.update(kw)
    return sweep(**args)


def tn(**kw):
    args = dict(factory=mlp, space={"lr": LogUniform(1e-3, 1e-1)}, proxy_width=8, target_width=16,
                budget=2, steps=2, data=DATA, loss=mse, backend="serial", progress=False,
                check_mup="off", direct=False)
    args.update(kw)
    return tune(**args)


TMP = tempfile.mkdtemp()


def store_of(text):
    p = os.path.join(TMP, f"s{abs(hash(text)) % 10**8}.jsonl")
    with open(p, "w") as f:
        f.write(text)
    return p


def ad(**kw):
    args = dict(factory=resnet, depths=(2, 4), width=8, example_inputs=(X,))
    args.update(kw)
    return analyze_depth(**args)


CASES = [
    # --- sweep(hparams=..., base=..., along=...) ---
    ("sweep hparams={}", lambda: sw(hparams={})),
    ("sweep hparams=[('lr',[1,2])] (a list)", lambda: sw(hparams=[("lr", [1e-3, 1e-2])])),
    ("sweep hparams lr one value", lambda: sw(hparams={"lr": [1e-3]})),
    ("sweep hparams lr=[1e-3, nan]", lambda: sw(hparams={"lr": [1e-3, math.nan]})),
    ("sweep hparams init_scale=[-1, 1]", lambda: sw(hparams={"init_scale": [-1.0, 1.0]}, base={"lr": 1e-2})),
    ("sweep hparams schedule=['cosine','bogus']", lambda: sw(hparams={"schedule": ["cosine", "bogus"]}, base={"lr": 1e-2})),
    ("sweep hparams warmup=[1.5, 3]", lambda: sw(hparams={"warmup": [1.5, 3]}, base={"lr": 1e-2})),
    ("sweep hparams unknown name 'dropout'", lambda: sw(hparams={"dropout": [0.0, 0.1]}, base={"lr": 1e-2})),
    ("sweep hparams name '1bad'", lambda: sw(hparams={"1bad": [1, 2]}, base={"lr": 1e-2})),
    ("sweep hparams without base lr", lambda: sw(hparams={"init_scale": [0.5, 1.0]})),
    ("sweep base={'lr': -1}", lambda: sw(hparams={"init_scale": [0.5, 1.0]}, base={"lr": -1.0})),
    ("sweep base={'lr': nan}", lambda: sw(hparams={"init_scale": [0.5, 1.0]}, base={"lr": math.nan})),
    ("sweep base={'lr': '1e-3'} (a string)", lambda: sw(hparams={"init_scale": [0.5, 1.0]}, base={"lr": "1e-3"})),
    ("sweep base={'schedule': 'bogus'}", lambda: sw(hparams={"init_scale": [0.5, 1.0]}, base={"lr": 1e-2, "schedule": "bogus"})),
    ("sweep base={'warmup': -3}", lambda: sw(hparams={"init_scale": [0.5, 1.0]}, base={"lr": 1e-2, "warmup": -3})),
    ("sweep base={'weight_decay': -0.1}", lambda: sw(hparams={"init_scale": [0.5, 1.0]}, base={"lr": 1e-2, "weight_decay": -0.1})),
    ("sweep base=[('lr', 1e-2)] (not a dict)", lambda: sw(hparams={"init_scale": [0.5, 1.0]}, base=[("lr", 1e-2)])),
    ("sweep base={'dropout': 0.1} (no place)", lambda: sw(hparams={"init_scale": [0.5, 1.0]}, base={"lr": 1e-2, "dropout": 0.1})),
    ("sweep lrs and base lr both", lambda: sw(lrs=[1e-3, 1e-2], base={"lr": 1e-2})),
    ("sweep hparams lr swept and base lr", lambda: sw(hparams={"lr": [1e-3, 1e-2]}, base={"lr": 1e-2})),
    ("sweep along='depth' without width", lambda: sw(lrs=[1e-3, 1e-2], along="depth")),
    ("sweep along='depht' (typo, factory lacks it)", lambda: sw(lrs=[1e-3, 1e-2], along="depht", width=8)),
    ("sweep along='' (empty)", lambda: sw(lrs=[1e-3, 1e-2], along="", width=8)),
    ("sweep along=3 (not a string)", lambda: sw(lrs=[1e-3, 1e-2], along=3, width=8)),
    ("sweep along='depth' width=0", lambda: sw(lrs=[1e-3, 1e-2], along="depth", width=0)),
    ("sweep along='depth' width=8.0", lambda: sw(factory=resnet, lrs=[1e-3, 1e-2], along="depth", width=8.0)),
    ("sweep width=8 with along='width' (ignored)", lambda: sw(lrs=[1e-3, 1e-2], width=8)),
    ("sweep steps=2.0", lambda: sw(lrs=[1e-3, 1e-2], steps=2.0)),
    ("sweep threads=0", lambda: sw(lrs=[1e-3, 1e-2], threads=0)),
    ("sweep warmup=1.5", lambda: sw(lrs=[1e-3, 1e-2], warmup=1.5)),
    ("sweep scales={'lr': 'logarithmic'}", lambda: sw(lrs=[1e-3, 1e-2], scales={"lr": "logarithmic"})),
    ("sweep scales={'init': 'log'} (unknown name)", lambda: sw(lrs=[1e-3, 1e-2], scales={"init": "log"})),
    ("sweep seeds=[0.5]", lambda: sw(lrs=[1e-3, 1e-2], seeds=[0.5])),
    ("sweep average_last=0", lambda: sw(lrs=[1e-3, 1e-2], average_last=0)),
    # --- tune ---
    ("tune space={}", lambda: tn(space={})),
    ("tune space={'lr': (1e-3,)} one value", lambda: tn(space={"lr": (1e-3,)})),
    ("tune space={'lr': LogUniform(-1, 1)}", lambda: tn(space={"lr": LogUniform(-1, 1)})),
    ("tune space={'lr': LogUniform(1e-1, 1e-3)} lo>hi", lambda: tn(space={"lr": LogUniform(1e-1, 1e-3)})),
    ("tune space={'lr': LogUniform(1e-3, nan)}", lambda: tn(space={"lr": LogUniform(1e-3, math.nan)})),
    ("tune space={'lr': LogUniform('1e-3','1e-1')}", lambda: tn(space={"lr": LogUniform("1e-3", "1e-1")})),
    ("tune space IntUniform(1.5, 4)", lambda: tn(space={"warmup": IntUniform(1.5, 4)}, base={"lr": 1e-2})),
    ("tune space={'lr': 1e-3} (a bare number)", lambda: tn(space={"lr": 1e-3})),
    ("tune space Choice('abc') (a string)", lambda: tn(space={"schedule": Choice("abc")}, base={"lr": 1e-2})),
    ("tune space schedule=['cosine','bogus']", lambda: tn(space={"schedule": ["cosine", "bogus"]}, base={"lr": 1e-2})),
    ("tune space lr=Uniform(-1, 1)", lambda: tn(space={"lr": Uniform(-1.0, 1.0)})),
    ("tune base lr=0", lambda: tn(space={"init_scale": [0.5, 1.0]}, base={"lr": 0.0})),
    ("tune proxy_width=16 target_width=16", lambda: tn(proxy_width=16, target_width=16)),
    ("tune proxy_width=8.0", lambda: tn(proxy_width=8.0)),
    ("tune budget=0", lambda: tn(budget=0)),
    ("tune sampler='grid'", lambda: tn(sampler="grid")),
    ("tune check_mup=True", lambda: tn(check_mup=True)),
    ("tune final_seeds=[]", lambda: tn(final_seeds=[])),
    ("tune final_seeds=[0.5]", lambda: tn(final_seeds=[0.5])),
    ("tune seed='a'", lambda: tn(seed="a")),
    ("tune store in a missing folder", lambda: tn(store=os.path.join(TMP, "no", "such", "s.jsonl"))),
    ("tune store is a directory", lambda: tn(store=TMP)),
    ("tune store corrupt (not JSON)", lambda: tn(store=store_of("garbage\nmore garbage\nx\n"))),
    ("tune store other file (JSON lines, no header)", lambda: tn(store=store_of('{"a": 1}\n{"b": 2}\n'))),
    ("tune store from another search (other space)", lambda: (
        tn(store=os.path.join(TMP, "other.jsonl")),
        tn(store=os.path.join(TMP, "other.jsonl"), space={"lr": LogUniform(1e-4, 1e-1)}))),
    ("tune store resumed with a larger budget (legit)", lambda: (
        tn(store=os.path.join(TMP, "more.jsonl")), tn(store=os.path.join(TMP, "more.jsonl"), budget=3))),
    ("tune store header ok, trial record missing keys", lambda: tn(store=_store_with_bad_record())),
    ("read_store on a JSON array file", lambda: read_store(store_of('[1, 2, 3]\n'))),
    # --- depth ---
    ("analyze_depth factory without depth arg", lambda: ad(factory=mlp)),
    ("analyze_depth depths='248'", lambda: ad(depths="248")),
    ("analyze_depth depths=(2, 2, 4) repeated", lambda: ad(depths=(2, 2, 4))),
    ("analyze_depth depths=(2.5, 4)", lambda: ad(depths=(2.5, 4))),
    ("analyze_depth depths=(0, 2)", lambda: ad(depths=(0, 2))),
    ("analyze_depth depths=(True, 4)", lambda: ad(depths=(True, 4))),
    ("analyze_depth depths=(4,) one depth", lambda: ad(depths=(4,))),
    ("analyze_depth width=0", lambda: ad(width=0)),
    ("analyze_depth width=8.5", lambda: ad(width=8.5)),
    ("analyze_depth width='8'", lambda: ad(width="8")),
    ("analyze_depth family='mup'", lambda: ad(family="mup")),
    ("analyze_depth base_depth=0", lambda: ad(base_depth=0)),
    ("analyze_depth base_depth=2.5", lambda: ad(base_depth=2.5)),
    ("analyze_depth widths=(8,)", lambda: ad(widths=(8,))),
    ("analyze_depth wrong-shape example_inputs", lambda: ad(example_inputs=(torch.randn(8, 5),))),
    ("analyze_depth factory an nn.Module instance", lambda: ad(factory=ResNet(8, 2))),
    ("check_depth steps=0", lambda: check_depth(resnet, (2, 4), width=8, example_inputs=(X,), steps=0)),
    ("check_depth seeds=0", lambda: check_depth(resnet, (2, 4), width=8, example_inputs=(X,), seeds=0)),
    ("check_depth lr=-1", lambda: check_depth(resnet, (2, 4), width=8, example_inputs=(X,), lr=-1.0)),
    ("check_depth lr=nan", lambda: check_depth(resnet, (2, 4), width=8, example_inputs=(X,), lr=math.nan)),
    ("check_depth depths=(2, 2, 4)", lambda: check_depth(resnet, (2, 2, 4), width=8, example_inputs=(X,))),
    ("apply_mup base_depth=0", lambda: apply_mup(resnet, 8, example_inputs=(X,), base_depth=0)),
    ("apply_mup base_depth=2.5", lambda: apply_mup(resnet, 8, example_inputs=(X,), base_depth=2.5)),
    ("apply_mup base_depth with width-only factory", lambda: apply_mup(mlp, 8, example_inputs=(X,), base_depth=2)),
    ("apply_mup depth_family='bogus'", lambda: apply_mup(resnet, 8, example_inputs=(X,), base_depth=2, depth_family="bogus")),
    ("apply_mup depth_family='bogus' without base_depth", lambda: apply_mup(mlp, 8, example_inputs=(X,), depth_family="bogus")),
    ("rules base_depth=-2", lambda: rules(mlp, (8, 16), example_inputs=(X,), base_depth=-2)),
    ("rules base_depth='2'", lambda: rules(mlp, (8, 16), example_inputs=(X,), base_depth="2")),
    ("rules depth_family='bogus' base_depth=2", lambda: rules(mlp, (8, 16), example_inputs=(X,), base_depth=2, depth_family="bogus")),
    # --- alignment / geometry / eps ---
    ("ABC alignment='everet' (typo)", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", alignment="everet")),
    ("ABC alignment=None", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", alignment=None)),
    ("ABC alignment=42", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", alignment=42)),
    ("ABC per-layer alignment wrong length", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", alignment=[(1, 1, 1)] * 2)),
    ("ABC per-layer alignment pairs not triples", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", alignment=[(1, 1)] * 3)),
    ("ABC per-layer alignment with NaN", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", alignment=[(math.nan, 1, 1)] * 3)),
    ("ABC per-layer alignment string payload", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", alignment=[("__import__('os')", 1, 1)] * 3)),
    ("ABC geometry='orthogonal' (typo)", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", geometry="orthogonal")),
    ("ABC geometry='gradient' with adam (conflict)", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adam", geometry="gradient")),
    ("ABC optimizer='adamm'", lambda: ABC([0, 0.5, 0.5], [0, 0.5, 0.5], 0, "adamm")),
    ("max_stable_lr_exponent alignment='bogus'", lambda: max_stable_lr_exponent([0, 0.5, 0.5], [0, 0.5, 0.5], "adam", alignment="bogus")),
    ("max_stable_lr_exponent alignment wrong length", lambda: max_stable_lr_exponent([0, 0.5, 0.5], [0, 0.5, 0.5], "adam", alignment=[(1, 1, 1)])),
    ("max_stable_lr_exponent per_layer='yes'", lambda: max_stable_lr_exponent([0, 0, 0], [0, 0.5, 1], "adam", per_layer="yes")),
    ("rules alignment='bogus'", lambda: rules(mlp, (8, 16), example_inputs=(X,), alignment="bogus")),
    ("rules alignment='full' with sgd", lambda: rules(mlp, (8, 16), example_inputs=(X,), alignment="full", optimizer="sgd")),
    ("rules alignment=per-layer tuple", lambda: rules(mlp, (8, 16), example_inputs=(X,), alignment=[(1, 1, 1)] * 3)),
    ("apply_mup eps_scaling='MuP' (case)", lambda: apply_mup(mlp, 8, example_inputs=(X,), eps_scaling="MuP")),
    ("apply_mup eps_scaling=None", lambda: apply_mup(mlp, 8, example_inputs=(X,), eps_scaling=None)),
    ("apply_mup eps_scaling='mup' with SGD (no eps)", lambda: apply_mup(mlp, 8, example_inputs=(X,), eps_scaling="mup", optimizer_cls=torch.optim.SGD)),
    ("analyze alignment='bogus'", lambda: analyze(mlp, (8, 16), example_inputs=(X,), alignment="bogus")),
    ("analyze alignment=per-layer triples", lambda: analyze(mlp, (8, 16), example_inputs=(X,), alignment=[(1, 1, 1)] * 3)),
    ("apply_mup alignment='bogus'", lambda: apply_mup(mlp, 8, example_inputs=(X,), alignment="bogus")),
    ("rules optimizer={'hidden': 'bogus'}", lambda: rules(mlp, (8, 16), example_inputs=(X,), optimizer={"hidden": "bogus"})),
    ("rules optimizer={} (empty hybrid)", lambda: rules(mlp, (8, 16), example_inputs=(X,), optimizer={})),
    ("rules optimizer={'hiden': torch.optim.SGD} (typo role)", lambda: rules(mlp, (8, 16), example_inputs=(X,), optimizer={"hiden": torch.optim.SGD, "default": torch.optim.AdamW})),
    # --- check max_memory ---
    ("check max_memory=nan", lambda: check(mlp, (8, 16), example_inputs=(X,), steps=1, seeds=1, max_memory=math.nan, progress=False)),
    ("check max_memory='8GiB' (CLI syntax in API)", lambda: check(mlp, (8, 16), example_inputs=(X,), steps=1, seeds=1, max_memory="8GiB", progress=False)),
    ("check max_memory=-1", lambda: check(mlp, (8, 16), example_inputs=(X,), steps=1, seeds=1, max_memory=-1, progress=False)),
    ("check max_memory=10 (bytes, too small)", lambda: check(mlp, (8, 16), example_inputs=(X,), steps=1, seeds=1, max_memory=10, progress=False)),
    # --- theory.limits.convergence ---
    ("convergence widths=(8, 8, 16) repeated", lambda: convergence(torch.randn(3, 2).numpy(), (8, 8, 16), 1, seeds=(0,))),
    ("convergence widths=(8,) one", lambda: convergence(torch.randn(3, 2).numpy(), (8,), 1, seeds=(0,))),
    ("convergence widths='816'", lambda: convergence(torch.randn(3, 2).numpy(), "816", 1, seeds=(0,))),
    ("convergence widths=(8.5, 16)", lambda: convergence(torch.randn(3, 2).numpy(), (8.5, 16), 1, seeds=(0,))),
    ("convergence seeds=()", lambda: convergence(torch.randn(3, 2).numpy(), (8, 16), 1, seeds=())),
    ("convergence metric='l2'", lambda: convergence(torch.randn(3, 2).numpy(), (8, 16), 1, seeds=(0,), metric="l2")),
]


def _store_with_bad_record():
    p = os.path.join(TMP, "badrec.jsonl")
    if os.path.exists(p):
        os.remove(p)
    tn(store=p)
    with open(p) as f:
        head = f.readline()
    with open(p, "w") as f:
        f.write(head + '{"phase": "proxy"}\n')
    return p


CLI = [
    ("cli rules --optimizer muon+", ["rules", "--example", "mlp", "--optimizer", "muon+"]),
    ("cli rules --optimizer muon+adamw+sgd", ["rules", "--example", "mlp", "--optimizer", "muon+adamw+sgd"]),
    ("cli rules --optimizer hidden=muon,default", ["rules", "--example", "mlp", "--optimizer", "hidden=muon,default"]),
    ("cli rules --optimizer hiden=muon,default=adamw", ["rules", "--example", "mlp", "--optimizer", "hiden=muon,default=adamw"]),
    ("cli rules --optimizer muon:bogus", ["rules", "--example", "mlp", "--optimizer", "muon:bogus"]),
    ("cli rules --optimizer hidden=muon,hidden=sgd", ["rules", "--example", "mlp", "--optimizer", "hidden=muon,hidden=sgd,default=adamw"]),
    ("cli rules --optimizer hidden=muon,hidden=adamw (repeat)", ["rules", "--example", "mlp", "--optimizer", "hidden=muon,hidden=adamw,default=adamw"]),
    ("cli rules --alignment bogus", ["rules", "--example", "mlp", "--alignment", "bogus"]),
    ("cli rules --alignment full --optimizer sgd", ["rules", "--example", "mlp", "--alignment", "full", "--optimizer", "sgd"]),
    ("cli explain mlp --preset muP --alignment bogus", ["explain", "mlp", "--preset", "muP", "--alignment", "bogus"]),
    ("cli explain mlp --preset muP --optimizer adamm", ["explain", "mlp", "--preset", "muP", "--optimizer", "adamm"]),
    ("cli check --max-memory nan", ["check", "--example", "mlp", "--max-memory", "nan", "--steps", "1"]),
    ("cli check --max-memory 0", ["check", "--example", "mlp", "--max-memory", "0", "--steps", "1"]),
]


def classify(fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
    except TensorprogError as e:
        return "clear", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 -- the point is to see what escapes
        first = (str(e).splitlines() or [""])[0][:160]
        return "raw", f"{type(e).__name__}: {first}"
    return "silent", f"returned {type(out).__name__}"


def run_cli(args):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.run([sys.executable, "-m", "tensorprog", *args], capture_output=True, text=True,
                       env=env, timeout=300)
    err = (p.stderr.strip().splitlines() or [""])
    tb = "Traceback" in p.stderr
    kind = "raw" if tb else ("clear" if p.returncode else "silent")
    return kind, f"exit {p.returncode}: {err[-1][:160]}"


def main():
    out = {}
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    for name, fn in CASES:
        if only and not any(o in name for o in only):
            continue
        kind, msg = classify(fn)
        out[name] = (kind, msg)
        print(f"{kind:6s} | {name} | {msg}", flush=True)
    if "--cli" in sys.argv:
        for name, args in CLI:
            kind, msg = run_cli(args)
            out[name] = (kind, msg)
            print(f"{kind:6s} | {name} | {msg}", flush=True)
    if "--json" in sys.argv:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
