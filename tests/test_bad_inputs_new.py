"""Bad inputs to the features added after issue 11's first round (sweep hparams / base / along,
tune, depth analysis, alignment, eps scaling, hybrid optimizers, max_memory, convergence): each
is a clear error naming the cause (a ``TensorprogError``), raised before any training, never a
raw exception, a silent coercion or an ignored option. ``benchmarks/BAD_INPUT_FINDINGS.md``
lists every case tried; each test here failed on the code before the fix (see the table).
"""
import functools
import math
import os
import subprocess
import sys

import pytest
import sympy as sp
import torch
import torch.nn as nn

from tensorprog import (CheckError, TensorprogError, TraceError, analyze_depth, apply_mup,
                        check_depth, rules)
from tensorprog.errors import TheoryError, TransferError
from tensorprog.measure.memory import check_memory
from tensorprog.ops import alignment as resolve_alignment
from tensorprog.ops.core import Alignment
from tensorprog.theory.abc import ABC, max_stable_lr_exponent
from tensorprog.theory.limits import convergence
from tensorprog.transfer import Choice, IntUniform, LogUniform, Uniform, read_store, sweep, tune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = torch.randn(8, 4)
DATA = [(X, torch.randn(8, 2))]
MUP_ABC = ([0, 0, 0], [0, 0.5, 1])  # muP (TP4 Table 3, L = 2) in the a_1 + b_1 = 0 gauge


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.inp, self.hid, self.out = nn.Linear(4, width), nn.Linear(width, width), nn.Linear(width, 2)

    def forward(self, x):
        return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))


def resnet(width, depth):
    return nn.Sequential(nn.Linear(4, width), *[nn.Linear(width, width) for _ in range(depth)])


def mse(out, batch):
    return ((out - batch[1]) ** 2).mean()


def _never_called(*args, **kwargs):
    raise AssertionError("a trial ran: the bad input must be refused before any training")


SWEEP = dict(factory=_never_called, widths=(8, 16), steps=2, data=DATA, loss=mse, backend="serial",
             progress=False)
TUNE = dict(factory=_never_called, space={"lr": LogUniform(1e-3, 1e-1)}, proxy_width=8,
            target_width=16, budget=2, steps=2, data=DATA, loss=mse, backend="serial",
            progress=False, check_mup="off", direct=False)


# ----------------------------------------------------------------------------- code from strings

def test_alignment_strings_are_never_evaluated(monkeypatch):
    monkeypatch.delenv("TP_PWNED", raising=False)
    payload = "__import__('os').environ.__setitem__('TP_PWNED', '1') or 1"
    with pytest.raises(TheoryError, match="not an exponent formula"):
        ABC(*MUP_ABC, 0, "adam", alignment=[(payload, 1, 1)] * 3)
    with pytest.raises(TheoryError, match="not an exponent formula"):
        max_stable_lr_exponent(*MUP_ABC, "adam", alignment=[(1, 1, 1), (payload, 1, 1), (1, 1, 1)])
    with pytest.raises(ValueError, match="dw_z0"):
        resolve_alignment(Alignment(dw_z0=payload))
    assert "TP_PWNED" not in os.environ
    # the arithmetic form still reads: "1/2" is the CLT alignment
    p = ABC(*MUP_ABC, 0, "adam", alignment=[(1, "1/2", "1/2")] * 3)
    assert p.alignment[1] == (1, sp.Rational(1, 2), sp.Rational(1, 2))


@pytest.mark.parametrize("bad", [[(math.nan, 1, 1)] * 3, [(True, 1, 1)] * 3, [(1, 1, None)] * 3])
def test_per_layer_alignment_values_must_be_numbers(bad):
    with pytest.raises(TheoryError, match="alignment of layer 1"):
        ABC(*MUP_ABC, 0, "adam", alignment=bad)


def test_rules_refuses_per_layer_alignment_by_name():
    with pytest.raises(TensorprogError, match="per-layer triples are for theory.ABC"):
        rules(MLP, (8, 16), example_inputs=(X,), alignment=[(1, 1, 1)] * 3)


# ----------------------------------------------------------------------------- depth

@pytest.mark.parametrize("depths, message", [
    ("248", "sequence of positive integers"),        # was traced at depths 2, 4, 8
    ((2, 2, 4), "repeated values"),                  # was merged silently
    ((2.5, 4), "must be an integer, got 2.5"),       # was truncated to 2
    ((True, 4), "bool"),                             # was depth 1
])
def test_depths_are_validated_like_widths(depths, message):
    with pytest.raises(TraceError, match=message):
        analyze_depth(resnet, depths, width=8, example_inputs=(X,))
    with pytest.raises(TraceError, match=message):
        check_depth(resnet, depths, width=8, example_inputs=(X,))


@pytest.mark.parametrize("kw, message", [
    ({"width": 0}, "width must be a positive integer"),
    ({"width": "8"}, "width must be an integer"),
    ({"base_depth": 0}, "base_depth must be a positive integer"),
    ({"base_depth": 2.5}, "base_depth must be an integer"),
    ({"widths": (8,)}, "at least 2 values"),
])
def test_analyze_depth_checks_its_sizes_before_tracing(kw, message):
    with pytest.raises(TraceError, match=message):
        analyze_depth(_never_called, (2, 4), example_inputs=(X,), **kw)


@pytest.mark.parametrize("kw, message", [({"steps": 0}, "steps must be a positive integer"),
                                         ({"seeds": 0}, "seeds must be a positive integer"),
                                         ({"lr": math.nan}, "lr must be a finite number")])
def test_check_depth_checks_steps_seeds_lr(kw, message):
    with pytest.raises(CheckError, match=message):
        check_depth(_never_called, (2, 4), width=8, example_inputs=(X,), **kw)


def test_depth_options_of_rules_and_apply_mup():
    with pytest.raises(TensorprogError, match="base_depth must be an integer"):
        apply_mup(resnet, 8, example_inputs=(X,), base_depth=2.5)
    with pytest.raises(TensorprogError, match="base_depth must be an integer, got str"):
        rules(MLP, (8, 16), example_inputs=(X,), base_depth="2")
    # a depth family without a base depth was ignored without a word
    with pytest.raises(TensorprogError, match="no effect without base_depth"):
        apply_mup(MLP, 8, example_inputs=(X,), depth_family="depth_mup")
    with pytest.raises(TensorprogError, match="unknown depth_family 'bogus'"):
        rules(MLP, (8, 16), example_inputs=(X,), depth_family="bogus")


# ----------------------------------------------------------------------------- sweep

@pytest.mark.parametrize("base, message", [
    ({"lr": -1.0}, r"base\['lr'\] must be positive and finite; got -1.0"),
    ({"lr": "1e-3"}, r"base\['lr'\] must be positive and finite; got '1e-3'"),
    ({"lr": 1e-2, "warmup": -3}, r"base\['warmup'\] must be a whole number of steps >= 0"),
    ({"lr": 1e-2, "weight_decay": -0.1}, r"base\['weight_decay'\] must be >= 0 and finite"),
    ({"lr": 1e-2, "schedule": "bogus"}, r"unknown schedule 'bogus'; choose one of"),
    ([("lr", 1e-2)], "base must be a dict"),
])
def test_sweep_checks_base_values_before_any_trial(base, message):
    with pytest.raises(TransferError, match=message):
        sweep(hparams={"init_scale": [0.5, 1.0]}, base=base, **SWEEP)


@pytest.mark.parametrize("kw, message", [
    ({"hparams": {"warmup": [1.5, 3]}, "base": {"lr": 1e-2}}, "warmup values must be a whole number"),
    ({"lrs": [1e-3, 1e-2], "warmup": 1.5}, "warmup must be an integer"),
    ({"lrs": [1e-3, 1e-2], "base": {"lr": 1e-2}}, "would be ignored"),
    ({"lrs": [1e-3, 1e-2], "width": 8}, "drop width= or pass along="),
    ({"lrs": [1e-3, 1e-2], "scales": {"init": "log"}}, r"scales names \['init'\]"),
])
def test_sweep_refuses_truncated_conflicting_or_ignored_options(kw, message):
    with pytest.raises(TransferError, match=message):
        sweep(**{**SWEEP, **kw})


# ----------------------------------------------------------------------------- tune

@pytest.mark.parametrize("space, base, message", [
    ({"lr": (1e-3,)}, {}, "nothing to search"),
    ({"lr": LogUniform("1e-3", "1e-1")}, {}, "needs finite numbers"),
    ({"warmup": IntUniform(1.5, 4)}, {"lr": 1e-2}, "whole-number bounds"),
    ({"schedule": Choice("abc")}, {"lr": 1e-2}, "Choice takes a list of options"),
    ({"schedule": ["cosine", "bogus"]}, {"lr": 1e-2}, r"unknown schedule 'bogus'; choose"),
    ({"lr": Uniform(-1.0, 1.0)}, {}, r"lr \(a bound of space\['lr'\].*must be positive"),
    ({"init_scale": [0.5, 1.0]}, {"lr": 0.0}, r"base\['lr'\]"),
])
def test_tune_checks_its_space_before_any_trial(space, base, message):
    with pytest.raises(TransferError, match=message):
        tune(**{**TUNE, "space": space, "base": base})


@pytest.mark.parametrize("kw, message", [({"final_seeds": [0.5]}, "must be an integer, got 0.5"),
                                         ({"seed": "a"}, "seed must be an integer")])
def test_tune_seeds_are_not_coerced(kw, message):
    with pytest.raises(TransferError, match=message):
        tune(**{**TUNE, **kw})


def test_tune_store_paths_are_checked_before_training(tmp_path):
    missing = tmp_path / "no" / "such" / "trials.jsonl"
    with pytest.raises(TransferError, match="does not exist; create it"):
        tune(**{**TUNE, "store": str(missing)})
    assert not (tmp_path / "no").exists()  # nothing created, nothing trained
    with pytest.raises(TransferError, match="is a directory"):
        tune(**{**TUNE, "store": str(tmp_path)})


def test_a_store_record_without_its_keys_is_named(tmp_path):
    store = tmp_path / "trials.jsonl"
    store.write_text('{"tensorprog_tune": 1, "signature": {}}\n{"phase": "proxy"}\n')
    with pytest.raises(TransferError, match="line 2 is not a tune trial record"):
        read_store(str(store))


TUNE_SCRIPT = """
import functools, sys
from tensorprog import zoo
from tensorprog.transfer import LogUniform, teacher_student_data, tune
if __name__ == "__main__":
    tune(functools.partial(zoo.MLP, param="mup", depth=2, d_in=8, d_out=3),
         {"lr": LogUniform(1e-4, 1e-1)}, proxy_width=16, target_width=32, budget=40,
         steps=int(sys.argv[2]), data=teacher_student_data(d_in=8, d_out=3, batch_size=16,
         teacher_width=32), backend="local", workers=2, store=sys.argv[1], direct=False,
         check_mup="off")
"""


def test_ctrl_c_during_tune_keeps_the_stored_trials_and_resume_uses_them(tmp_path):
    from test_interrupt import interrupt, start

    store = tmp_path / "trials.jsonl"
    # 40 trials of ~0.5 s on 2 workers: interrupted after the second is stored
    proc, seen = start(["-c", TUNE_SCRIPT, str(store), "150"], "] proxy 2 ")
    took, out, err = interrupt(proc, seen)
    assert took < 10
    assert f"finished trials are in {store}" in err and "resume" in err
    stored = [r for r in read_store(str(store)) if r["phase"] == "proxy"]
    assert 2 <= len(stored) < 40
    # resume with the stored prefix as the budget (the random sampler's n-th proposal depends on
    # n only): every proxy trial is read back, none is trained again; only the final one runs
    from tensorprog import zoo
    from tensorprog.transfer import teacher_student_data
    n = min(set(range(41)) - {r["index"] for r in stored})
    res = tune(functools.partial(zoo.MLP, param="mup", depth=2, d_in=8, d_out=3),
               {"lr": LogUniform(1e-4, 1e-1)}, proxy_width=16, target_width=32, budget=n,
               steps=150, data=teacher_student_data(d_in=8, d_out=3, batch_size=16,
                                                    teacher_width=32),
               backend="serial", store=str(store), direct=False, check_mup="off", progress=False)
    after = read_store(str(store))
    assert res.meta["resumed_trials"] == len(stored)
    assert [r for r in after if r["phase"] == "proxy"] == stored
    assert [r["phase"] for r in after[len(stored):]] == ["transfer"]


# ----------------------------------------------------------------------------- the rest

def test_nan_memory_limit_is_refused_not_ignored():
    # NaN compares false with everything: it used to refuse nothing
    with pytest.raises(CheckError, match="max_memory must be"):
        check_memory(None, 8, torch.float32, "adam", "cpu", float("nan"))


@pytest.mark.parametrize("kw, message", [({"widths": (8, 8, 16)}, "repeated values"),
                                         ({"widths": "816"}, "sequence of positive integers"),
                                         ({"seeds": [0.5]}, "must be an integer")])
def test_convergence_uses_the_shared_validation(kw, message):
    args = {"X": [[1.0, 0.0], [0.0, 1.0]], "widths": (8, 16), "depth": 1, "seeds": (0,), **kw}
    with pytest.raises(TheoryError, match=message):
        convergence(**args)


def test_an_optimizer_dict_key_matching_nothing_is_refused():
    with pytest.raises(TensorprogError, match=r"key\(s\) \['hiden'\] name no parameter"):
        rules(MLP, (8, 16), example_inputs=(X,),
              optimizer={"hiden": torch.optim.SGD, "default": torch.optim.SGD})


def test_eps_scaling_with_an_optimizer_without_eps_is_refused():
    with pytest.raises(TensorprogError, match="has no eps"):
        apply_mup(_never_called, 8, example_inputs=(X,), eps_scaling="mup",
                  optimizer_cls=torch.optim.SGD)


def test_cli_unknown_muon_adjust_lr_fn_is_one_clear_error():
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "tensorprog", "rules", "--example", "mlp",
                        "--optimizer", "muon:bogus"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "adjust_lr_fn='bogus'" in p.stderr and "match_rms_adamw" in p.stderr


@pytest.mark.parametrize("bad", ["bogus", [(1, 1, 1)] * 3])
def test_analyze_checks_its_alignment_before_tracing(bad):
    from tensorprog import analyze
    with pytest.raises(TraceError, match="unknown alignment"):
        analyze(_never_called, (8, 16), example_inputs=(X,), alignment=bad)


def test_per_layer_flag_must_be_a_bool():
    # per_layer="yes" was truthy: a tuple came back where a number was asked for, or vice versa
    with pytest.raises(TheoryError, match="per_layer must be True or False"):
        max_stable_lr_exponent(*MUP_ABC, "adam", per_layer="yes")


def test_cli_optimizer_key_given_twice_is_refused():
    from tensorprog.cli.rules import parse_optimizer
    with pytest.raises(TensorprogError, match="'hidden' is given twice"):
        parse_optimizer("hidden=muon,hidden=adamw,default=adamw")
