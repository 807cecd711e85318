"""Tests for sweeping any hyperparameter (tensorprog.transfer.hparams and sweep(hparams=...)).

Expected values come from closed forms written out here (schedules, least-squares slopes of
known optima) or from independent runs (an unscaled model rescaled by hand, an lr-only sweep).
"""
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from tensorprog import zoo
from tensorprog.transfer import (HPSweeps, Sweep, TransferError, schedule_factor, sweep,
                                 teacher_student_data, zoo_optimizer)
from tensorprog.transfer.hparams import (HPFactory, HPOptimizer, TrialPoint, default_scale,
                                         route_hparams)

MLP = functools.partial(zoo.MLP, param="mup", depth=2, d_in=8, d_out=3)
DATA = teacher_student_data(d_in=8, d_out=3, batch_size=16, teacher_width=32)
FAST = dict(steps=10, data=DATA, progress=False, backend="serial")


# ------------------------------------------------------------------- schedules, closed forms

def test_schedules_match_closed_forms():
    T = 8
    assert [schedule_factor("constant", t, T) for t in range(T)] == [1.0] * T
    assert [schedule_factor("linear", t, T) for t in range(T)] == pytest.approx(
        [1 - t / 8 for t in range(T)])
    assert [schedule_factor("cosine", t, T) for t in (0, 2, 4, 6)] == pytest.approx(
        [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2])
    # step: x0.1 from half-way (t = 4), x0.01 from three quarters (t = 6)
    assert [schedule_factor("step", t, T) for t in range(T)] == pytest.approx(
        [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    # inverse sqrt without warmup: 1 / sqrt(t + 1)
    assert [schedule_factor("inverse_sqrt", t, T) for t in range(4)] == pytest.approx(
        [1, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5])


def test_warmup_ramps_then_the_schedule_runs_over_the_rest():
    T, w = 10, 4
    assert [schedule_factor("constant", t, T, w) for t in range(5)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0])
    # linear decay over the 6 post-warmup steps: 1 - (t - 4) / 6
    assert [schedule_factor("linear", t, T, w) for t in range(4, 10)] == pytest.approx(
        [1 - k / 6 for k in range(6)])
    # inverse sqrt: flat at 1 until step w, then sqrt(w / (t + 1))
    assert schedule_factor("inverse_sqrt", 3, T, w) == pytest.approx(1.0)
    assert schedule_factor("inverse_sqrt", 8, T, w) == pytest.approx(math.sqrt(4 / 9))
    with pytest.raises(TransferError, match="unknown schedule 'exp'"):
        schedule_factor("exp", 0, 5)


def test_optimizer_wrapper_steps_the_schedule_and_sets_weight_decay():
    model = nn.Linear(3, 2)
    routes = {"lr": "builtin", "schedule": "builtin", "weight_decay": "builtin"}
    make = HPOptimizer(lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr), routes, steps=4)
    opt = make(model, {"lr": 0.2, "schedule": "cosine", "weight_decay": 0.05})
    assert opt.param_groups[0]["weight_decay"] == 0.05
    seen = []
    for _ in range(4):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.2 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)])


# ------------------------------------------------------------------- built-in model hps

def test_init_scale_multiplies_matrices_only_and_output_mult_the_output():
    routes = {"init_scale": "builtin", "output_mult": "builtin"}
    torch.manual_seed(0)
    plain = MLP(16)
    torch.manual_seed(0)
    scaled = HPFactory(MLP, routes)(TrialPoint(16, {"init_scale": 3.0, "output_mult": 0.5}))
    for (n, p), q in zip(plain.named_parameters(), scaled.parameters()):
        torch.testing.assert_close(q, 3.0 * p if p.ndim >= 2 else p, msg=n)
    x = torch.randn(5, 8)
    with torch.no_grad():
        for p in plain.parameters():
            if p.ndim >= 2:
                p.mul_(3.0)
        torch.testing.assert_close(scaled(x), 0.5 * plain(x))


# ------------------------------------------------------------------- routing

def _factory_with_depth(width, depth=2):
    return zoo.MLP(width, depth=depth, d_in=8, d_out=3)


def _opt_with_beta(model, lr, beta2=0.999):
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, beta2))


def _opt_kwargs(model, lr, **kw):
    return torch.optim.Adam(model.parameters(), lr=lr, **kw)


class _DataWithBatch:
    def __call__(self, width, seed, batch_size=16):
        return iter(DATA(width, seed))


def test_routing_by_signature():
    r = route_hparams(["lr", "depth", "beta2", "batch_size", "init_scale"], _factory_with_depth,
                      _opt_with_beta, _DataWithBatch())
    assert r == {"lr": "builtin", "depth": "factory", "beta2": "make_optimizer",
                 "batch_size": "data", "init_scale": "builtin"}
    # **kwargs takes a name nobody names; a built-in named by the user goes to the user
    assert route_hparams(["eps"], _factory_with_depth, _opt_kwargs, DATA)["eps"] == "make_optimizer"

    def own_scale(width, init_scale=1.0):
        return zoo.MLP(width)
    assert route_hparams(["init_scale"], own_scale, _opt_kwargs, DATA)["init_scale"] == "factory"


def test_hyperparameter_with_nowhere_to_go_is_a_clear_error():
    with pytest.raises(TransferError, match=r"'dropout' has nowhere to go.*none of them"):
        sweep(MLP, (16, 32), hparams={"dropout": [0.0, 0.1]}, base={"lr": 1e-2}, **FAST)
    with pytest.raises(TransferError, match="both factory and make_optimizer"):
        route_hparams(["beta2"], lambda w, beta2=1: None, _opt_with_beta, DATA)
    for grid in ({"init_scale": [0.5, 1.0]}, {"lr": [1e-3, 1e-2], "init_scale": [0.5, 1.0]}):
        with pytest.raises(TransferError, match=r"base=\{'lr'"):
            sweep(MLP, (16, 32), hparams=grid, **FAST)
    with pytest.raises(TransferError, match="either lrs"):
        sweep(MLP, (16, 32), (1e-3, 1e-2), hparams={"init_scale": [0.5, 1.0]}, **FAST)
    with pytest.raises(TransferError, match="init_scale values must be positive"):
        sweep(MLP, (16, 32), hparams={"init_scale": [0.0, 1.0]}, base={"lr": 1e-2}, **FAST)


def test_default_scales():
    assert default_scale("lr", [1e-3, 1e-2]) == "log"
    assert default_scale("warmup", [0, 10]) == "linear"
    assert default_scale("weight_decay", [0.0, 0.1]) == "linear"
    assert default_scale("schedule", ["cosine", "linear"]) == "categorical"


# ------------------------------------------------------------------- real sweeps

def test_hparam_sweep_cells_equal_independent_runs():
    base = {"lr": 1e-2}
    res = sweep(MLP, (16, 32), hparams={"init_scale": [0.5, 1.0, 2.0],
                                        "schedule": ["constant", "cosine"],
                                        "depth": [1, 2]},
                base=base, make_optimizer=zoo_optimizer("adam"), **FAST)
    assert isinstance(res, HPSweeps) and list(res) == ["init_scale", "schedule", "depth"]
    lr_only = sweep(MLP, (16, 32), (1e-2, 2e-2), make_optimizer=zoo_optimizer("adam"), **FAST)
    # init_scale = 1, constant schedule: exactly the lr-only run at lr = 1e-2
    np.testing.assert_array_equal(res["init_scale"].losses[:, 1], lr_only.losses[:, 0])
    np.testing.assert_array_equal(res["schedule"].losses[:, 0], lr_only.losses[:, 0])
    # depth 2 is the factory's own depth: the same run again; depth 1 a different model
    np.testing.assert_array_equal(res["depth"].losses[:, 1], lr_only.losses[:, 0])
    assert not np.array_equal(res["depth"].losses[:, 0], lr_only.losses[:, 0])
    # init scale 2: an independent run of a model rescaled by hand
    scaled = functools.partial(_scaled_mlp, scale=2.0)
    by_hand = sweep(scaled, (16, 32), (1e-2, 2e-2), make_optimizer=zoo_optimizer("adam"), **FAST)
    np.testing.assert_allclose(res["init_scale"].losses[:, 2], by_hand.losses[:, 0], rtol=1e-6)
    assert res["schedule"].scale == "categorical" and res["schedule"].values == ("constant", "cosine")
    assert res["init_scale"].meta["base"] == base
    text = str(res)
    assert "sweep of init_scale" in text and "best schedule per width" in text


def _scaled_mlp(width, scale):
    model = MLP(width)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(scale)
    return model


# ------------------------------------------------------------------- drift on synthetic losses

W4 = (64, 128, 256, 512)


def test_log_drift_of_a_known_optimum_shift():
    # optimum log2(init_scale*) = -1 + 0.5 * log2(width / 64): drift +0.5 per doubling
    values = tuple(2.0 ** k for k in np.arange(-3, 3.01, 0.5))
    centres = [-1 + 0.5 * i for i in range(4)]
    x = np.log2(values)
    s = Sweep(widths=W4, lrs=values, losses=[(x - c) ** 2 for c in centres], hp="init_scale")
    assert s.drift == pytest.approx(0.5) and s.drift_refined == pytest.approx(0.5)
    # grid step 0.5: half-steps 0.25; sum|dx| = 4, Sxx = 5 -> 0.2
    assert s.drift_err == pytest.approx(0.2)
    assert s.verdict == "drifts"


def test_linear_drift_in_the_hyperparameters_own_units():
    # best warmup = 10 + 4 * log2(width / 64) steps, between grid points of spacing 4
    values = tuple(range(0, 41, 4))
    centres = np.array([10.0, 14.0, 18.0, 22.0]) + 1.0
    s = Sweep(widths=W4, lrs=values, losses=[(np.array(values) - c) ** 2 for c in centres],
              hp="warmup", scale="linear")
    np.testing.assert_allclose(s.refined_best_value, centres)
    assert s.drift_refined == pytest.approx(4.0)
    assert s.drift_err == pytest.approx(4 * 2 / 5)        # half-step 2, sum|dx| 4, Sxx 5
    flat = Sweep(widths=W4, lrs=values, losses=[(np.array(values) - 13.0) ** 2] * 4,
                 hp="warmup", scale="linear")
    assert flat.drift == 0 and flat.verdict == "transfers"


def test_categorical_verdict_and_json_round_trip():
    g = np.array([[1.0, 0.5], [1.0, 0.6], [0.9, 0.7]])
    s = Sweep(widths=(16, 32, 64), lrs=("constant", "cosine"), losses=g, hp="schedule",
              scale="categorical")
    assert s.best_value == ("cosine",) * 3 and s.verdict == "transfers" and math.isnan(s.drift)
    g[2] = [0.5, 0.7]
    moved = Sweep(widths=(16, 32, 64), lrs=("constant", "cosine"), losses=g, hp="schedule",
                  scale="categorical")
    assert moved.verdict == "drifts"
    back = Sweep.from_json(moved.to_json())
    assert back.best_value == moved.best_value and back.scale == "categorical"
    with pytest.raises(TransferError, match="scale='log' needs positive"):
        Sweep(widths=(16, 32), lrs=(0.0, 1.0), losses=np.ones((2, 2)), hp="weight_decay")


# ------------------------------------------------------------------- other scale dimensions

def test_sweep_along_depth_steps_and_batch_size_equals_independent_runs():
    lrs = (1e-2, 3e-2)
    kw = dict(FAST, make_optimizer=zoo_optimizer("adam"))
    by_width = sweep(MLP, (16, 32), lrs, **kw)                       # depth 2, 10 steps, batch 16
    short = sweep(MLP, (16, 32), lrs, **{**kw, "steps": 5})
    depth = sweep(MLP, (1, 2), hparams={"lr": lrs}, along="depth", width=16, **kw)["lr"]
    np.testing.assert_array_equal(depth.losses[1], by_width.losses[0])
    assert not np.array_equal(depth.losses[0], by_width.losses[0])
    assert depth.along == "depth" and "per depth doubling" in depth.summary()
    steps = sweep(MLP, (5, 10), hparams={"lr": lrs}, along="steps", width=16, **kw)["lr"]
    np.testing.assert_array_equal(steps.losses[0], short.losses[0])
    np.testing.assert_array_equal(steps.losses[1], by_width.losses[0])
    batch = sweep(MLP, (8, 16), hparams={"lr": lrs}, along="batch_size", width=16, **kw)["lr"]
    np.testing.assert_array_equal(batch.losses[1], by_width.losses[0])
    assert not np.array_equal(batch.losses[0], by_width.losses[0])
    with pytest.raises(TransferError, match="pass width="):
        sweep(MLP, (1, 2), hparams={"lr": lrs}, along="depth", **kw)
    with pytest.raises(TransferError, match="'seq_len' has nowhere to go"):
        sweep(MLP, (4, 8), hparams={"lr": lrs}, along="seq_len", width=16, **FAST)
