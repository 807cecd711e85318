"""Tests for tensorprog.transfer: learning-rate sweeps across widths (muTransfer, measured).

Expected values are built by hand (grids with known minima, least-squares slopes written out) or
read from the grid the sweep returned, never from the properties under test.
"""
import functools
import math
import os

import numpy as np
import pytest
import torch

from tensorprog import TensorprogError, zoo
from tensorprog.transfer import (
    DEFAULT_CHARSET, LogUniform, Sweep, TransferError, drift_of, plot_sweeps, stdlib_text_data,
    sweep, teacher_student_data, tune, zoo_optimizer,
)

MLP = functools.partial(zoo.MLP, param="mup", depth=2, d_in=8, d_out=3)
DATA = teacher_student_data(d_in=8, d_out=3, batch_size=16, teacher_width=32)
FAST = dict(steps=12, data=DATA, progress=False)


def tiny_sweep(**kw):
    args = dict(FAST, backend="serial")
    args.update(kw)
    return sweep(args.pop("factory", MLP), args.pop("widths", (16, 32)),
                 args.pop("lrs", (1e-3, 1e-2, 1e-1)), **args)


# ------------------------------------------------------------------- a real sweep, serial

def test_sweep_grid_shapes_and_best_lr_is_argmin():
    lrs = (3e-1, 1e-3, 1e-2, 3e-2)                   # unsorted on purpose: the sweep sorts them
    s = tiny_sweep(widths=(32, 16), lrs=lrs, seeds=(0, 1))
    assert s.widths == (16, 32) and s.lrs == tuple(sorted(lrs)) and s.seeds == (0, 1)
    assert s.losses.shape == (2, 4, 2)
    assert s.grid.shape == (2, 4) and s.histories.shape == (2, 4, 2, 12) and s.times.shape == (2, 4, 2)
    assert np.isfinite(s.losses).all()
    # final loss = mean of the last max(1, 12 // 10) = 1 recorded training loss
    np.testing.assert_array_equal(s.losses, s.histories[..., -1])
    np.testing.assert_allclose(s.grid, s.losses.mean(axis=2))
    for i in range(2):
        j = int(np.argmin(s.losses[i].mean(axis=1)))
        assert s.best_index[i] == j
        assert s.best_lr[i] == sorted(lrs)[j]
        assert s.best_loss[i] == pytest.approx(s.losses[i, j].mean())
    # training does something: the best run ends well below where it started
    assert (s.histories[0, s.best_index[0], :, -1] < 0.8 * s.histories[0, s.best_index[0], :, 0]).all()


def test_seeds_change_init_and_data_but_repeat_exactly():
    a = tiny_sweep(seeds=(0, 1))
    b = tiny_sweep(seeds=(1,))
    np.testing.assert_array_equal(a.losses[:, :, 1], b.losses[:, :, 0])
    assert not np.array_equal(a.losses[:, :, 0], a.losses[:, :, 1])


# ------------------------------------------------------------------- drift on hand-made grids

W4 = (64, 128, 256, 512)
LRS8 = tuple(2.0 ** k for k in range(-12, -4))       # log2 lr = -12 .. -5


def parabola_grid(centres):
    """(W, L) losses (log2 lr - centre_w)^2 + 1: exact parabolas with known minimisers."""
    x = np.log2(LRS8)
    return np.array([(x - c) ** 2 + 1.0 for c in centres])


def test_drift_minus_one_when_best_lr_halves_per_doubling():
    # minima on the grid at log2 lr = -6, -7, -8, -9 for widths 64 .. 512
    s = Sweep(widths=W4, lrs=LRS8, losses=parabola_grid([-6, -7, -8, -9]))
    assert s.best_lr == (2.0 ** -6, 2.0 ** -7, 2.0 ** -8, 2.0 ** -9)
    assert s.drift == pytest.approx(-1.0)
    # grid resolution: x = log2 width = 6..9, sum|x - 7.5| = 4, Sxx = 5, half step 1/2 -> 0.4
    assert s.drift_err == pytest.approx(0.4)
    assert s.drift_refined == pytest.approx(-1.0) and s.drift_refined_err == pytest.approx(0, abs=1e-9)


def test_drift_zero_when_best_lr_stays_put():
    s = Sweep(widths=W4, lrs=LRS8, losses=parabola_grid([-8, -8, -8, -8]))
    assert s.drift == pytest.approx(0.0) and set(s.best_lr) == {2.0 ** -8}


def test_parabola_refines_off_grid_minima():
    centres = [-6.3, -6.8, -7.45, -7.8]              # between grid points
    s = Sweep(widths=W4, lrs=LRS8, losses=parabola_grid(centres))
    np.testing.assert_allclose(np.log2(s.refined_best_lr), centres, atol=1e-9)
    x = np.log2(W4)
    dx = x - x.mean()
    expected = float(dx @ (np.array(centres) - np.mean(centres)) / (dx @ dx))
    assert s.drift_refined == pytest.approx(expected)
    # grid argmins are the nearest grid points
    assert [math.log2(v) for v in s.best_lr] == [-6, -7, -7, -8]
    resid = np.array(centres) - np.mean(centres) - expected * dx
    assert s.drift_refined_err == pytest.approx(math.sqrt(resid @ resid / 2 / (dx @ dx)))


def test_refinement_keeps_grid_point_at_edge_or_next_to_divergence():
    g = parabola_grid([-5.2, -8.4, -8.4, -8.4])      # width 64: minimum at the top edge
    g[1, 5] = np.inf                                  # width 128: right neighbour of -8 diverged
    s = Sweep(widths=W4, lrs=LRS8, losses=g)
    assert s.at_edge == (True, False, False, False)
    assert math.log2(s.refined_best_lr[0]) == -5 and math.log2(s.refined_best_lr[1]) == -8
    assert math.log2(s.refined_best_lr[2]) == pytest.approx(-8.4)


def test_width_where_everything_diverged_is_left_out_of_the_drift():
    g = parabola_grid([-6, -7, -8, -9])
    g[3, :] = np.inf
    s = Sweep(widths=W4, lrs=LRS8, losses=g)
    assert s.best_index[3] == -1 and math.isnan(s.best_lr[3])
    assert s.drift == pytest.approx(-1.0)             # the other three still halve per doubling
    assert "every learning rate diverged" in str(s)


def test_drift_of_matches_polyfit():
    widths, best = (32, 64, 128, 1024), (0.1, 0.07, 0.03, 0.004)
    slope, err = drift_of(widths, best)
    assert slope == pytest.approx(np.polyfit(np.log2(widths), np.log2(best), 1)[0])
    assert err > 0
    assert all(math.isnan(v) for v in drift_of((64,), (0.1,)))


def test_nan_and_minus_inf_losses_count_as_diverged():
    s = Sweep(widths=(8, 16), lrs=(1e-3, 1e-2), losses=[[np.nan, 1.0], [-np.inf, 2.0]])
    assert np.isinf(s.grid[:, 0]).all() and s.diverged[:, 0, 0].all()


def test_multiseed_cell_diverged_if_any_seed_diverged():
    losses = np.ones((2, 3, 2))
    losses[0, 2, 1] = np.inf
    losses[0, 1, :] = 0.5
    s = Sweep(widths=(8, 16), lrs=(1e-3, 1e-2, 1e-1), seeds=(0, 1), losses=losses)
    assert np.isinf(s.grid[0, 2]) and s.best_index[0] == 1


# ------------------------------------------------------------------- divergence is data, not a crash

def test_diverged_runs_are_recorded_as_inf():
    relu = functools.partial(zoo.MLP, param="sp", depth=2, d_in=8, d_out=3, nonlinearity="relu")
    s = tiny_sweep(factory=relu, lrs=(1e-2, 1e3), steps=20, make_optimizer=zoo_optimizer("sgd"))
    assert np.isinf(s.losses[:, 1]).all() and np.isfinite(s.losses[:, 0]).all()
    assert s.diverged[:, 1].all() and s.best_lr == (1e-2, 1e-2)
    h = s.histories[0, 1, 0]
    k = int(np.argmax(~np.isfinite(h)))               # first non-finite step is recorded as inf ...
    assert np.isinf(h[k]) and np.isnan(h[k + 1:]).all()  # ... and training stopped there
    d = s.to_dict()
    assert d["losses"][0][1] == [math.inf] and d["diverged"][0][1] == [True]
    assert eval_json(s.to_json())["losses"][0][1] == [{"nonfinite": "inf"}]
    back = Sweep.from_dict(eval_json(s.to_json()))
    np.testing.assert_array_equal(back.losses, s.losses)
    assert back.best_lr == s.best_lr and back.widths == s.widths


def eval_json(text):
    import json
    return json.loads(text)


def test_failing_trial_is_an_error_naming_the_trial():
    bad = functools.partial(zoo.GPT, param="sp", n_head=4)   # width 18 is not a multiple of 4
    with pytest.raises(TransferError, match=r"width=18.*\n.*multiple"):
        sweep(bad, (16, 18), (1e-3, 1e-2), steps=2, data=stdlib_text_data(16, 2), backend="serial",
              progress=False)


# ------------------------------------------------------------------- processes

def test_parallel_equals_serial():
    kw = dict(widths=(16, 32), lrs=(1e-3, 3e-2), seeds=(0, 1))
    serial = tiny_sweep(**kw)
    parallel = tiny_sweep(backend="local", workers=2, **kw)
    np.testing.assert_array_equal(parallel.losses, serial.losses)
    np.testing.assert_array_equal(parallel.histories, serial.histories)
    assert parallel.meta["backend"] == "local" and parallel.meta["workers"] == 2


def test_worker_that_dies_is_a_clear_error():
    # os._exit(width) kills the worker process outright: no exception to send back
    with pytest.raises(TransferError, match="worker process died"):
        tiny_sweep(factory=os._exit, backend="local", workers=2)


def _closure_factory():
    def factory(width):
        return zoo.MLP(width, d_in=8, d_out=3)
    return factory


def test_unpicklable_pieces_are_named():
    with pytest.raises(TransferError, match=r"factory .*module-level"):
        tiny_sweep(factory=lambda w: zoo.MLP(w, d_in=8, d_out=3), backend="local")
    with pytest.raises(TransferError, match=r"factory .*module-level"):
        tiny_sweep(factory=_closure_factory(), backend="local")
    with pytest.raises(TransferError, match=r"make_optimizer .*module-level"):
        tiny_sweep(make_optimizer=lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr), backend="local")
    # the same closure is fine in-process
    s = tiny_sweep(factory=_closure_factory(), steps=2)
    assert np.isfinite(s.losses).all()


def test_ray_backend_matches_serial():
    ray = pytest.importorskip("ray")
    kw = dict(widths=(16, 32), lrs=(1e-3, 3e-2))
    serial = tiny_sweep(**kw)
    # tune's trials go through the same backend: one Ray start for both (it dominates the time)
    tkw = dict(proxy_width=16, target_width=32, budget=2, steps=6, data=DATA, direct=False,
               check_mup="off", progress=False, make_optimizer=zoo_optimizer("adam"))
    space = {"lr": LogUniform(1e-3, 1e-1), "init_scale": LogUniform(0.5, 2.0)}
    serial_tune = tune(MLP, space, backend="serial", **tkw)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        remote = tiny_sweep(backend="ray", **kw)
        remote_tune = tune(MLP, space, backend="ray", workers=2, **tkw)
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(remote.losses, serial.losses)
    key = lambda t: (t["phase"], t["index"], t["seed"])  # noqa: E731
    assert [t["loss"] for t in sorted(remote_tune.trials, key=key)] == \
        [t["loss"] for t in sorted(serial_tune.trials, key=key)]


def test_ray_missing_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(TransferError, match=r"pip install 'tensorprog\[ray\]'"):
        tiny_sweep(backend="ray")


# ------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("kw, pattern", [
    (dict(widths=(64,)), "widths needs at least 2"),
    (dict(widths=(64, 64)), "repeated"),
    (dict(widths=(0, 64)), "positive"),
    (dict(lrs=()), "lrs needs at least 2"),
    (dict(lrs=(1e-3, -1e-3)), "positive and finite"),
    (dict(lrs=(1e-3, float("nan"))), "positive and finite"),
    (dict(seeds=()), "seeds needs at least 1"),
    (dict(steps=0), "steps must be a positive int"),
    (dict(backend="slurm"), "unknown backend"),
    (dict(data=None), "sweep needs data"),
    (dict(data=torch.zeros(3)), "single tensor"),
    (dict(data=iter([1, 2])), "one-shot iterator"),
    (dict(data=[]), "empty list"),
    (dict(data=[(torch.zeros(4, 8), torch.zeros(4, 3))]), "no loss given"),
    (dict(average_last=50), "average_last"),
    (dict(widths=(16.5, 32)), "whole numbers"),
    (dict(workers=0), "workers must be a positive int"),
])
def test_bad_inputs_are_clear_errors(kw, pattern):
    with pytest.raises(TransferError, match=pattern) as info:
        tiny_sweep(**kw)
    assert isinstance(info.value, TensorprogError)


def test_short_data_is_an_error():
    def two_batches(width, seed):
        return [(torch.randn(4, 8), torch.randn(4, 3))] * 2
    with pytest.raises(TransferError, match="yielded only 2 batches"):
        tiny_sweep(data=two_batches, loss=DATA.loss, steps=5)


def test_fixed_batch_list_is_cycled_full_batch():
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    y = torch.randn(32, 3, generator=torch.Generator().manual_seed(4))
    s = tiny_sweep(data=[(x, y)], loss=DATA.loss, lrs=(1e-2, 1e-1), steps=30)
    h = s.histories[0, 1, 0]
    assert h[-1] < h[0]                               # full-batch training on one batch decreases


# ------------------------------------------------------------------- data

def test_stdlib_text_is_deterministic_and_in_vocab():
    data = stdlib_text_data(block_size=24, batch_size=5)
    assert data.vocab_size == 64 == len(DEFAULT_CHARSET) + 1
    a = [b for _, b in zip(range(3), data(64, 0))]
    b = [b for _, b in zip(range(3), data(512, 0))]   # same text for every width
    c = next(iter(data(64, 1)))
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0])
    assert not torch.equal(a[0][0], c[0])
    idx = a[0][0]
    assert idx.shape == (5, 24) and idx.dtype == torch.int64
    tokens = data.tokens()
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 64
    # a fresh object reads the same corpus, and "other" (id 0) is rare in Python source
    assert torch.equal(stdlib_text_data(24, 5).tokens(), tokens)
    assert (tokens == 0).float().mean() < 0.01
    assert "os.py" in data.files_read()


def test_stdlib_text_maps_characters_as_documented():
    raw = stdlib_text_data(block_size=8, batch_size=1, vocab=256).tokens()
    text = bytes(raw[:20000].to(torch.uint8).tolist()).decode("utf-8", errors="replace")
    assert "def " in text and "import" in text
    folded = stdlib_text_data(block_size=8, batch_size=1).tokens()[:20000]
    expected = [DEFAULT_CHARSET.index(ch.lower()) + 1 if ch.lower() in DEFAULT_CHARSET else 0
                for ch in bytes(raw[:20000].to(torch.uint8).tolist()).decode("latin-1")]
    assert folded.tolist() == expected
    custom = stdlib_text_data(block_size=8, batch_size=1, vocab="abc").tokens()
    assert int(custom.max()) == 3
    with pytest.raises(TransferError, match="vocab"):
        stdlib_text_data(vocab=100)


def test_stdlib_text_trains_the_zoo_gpt():
    data = stdlib_text_data(block_size=16, batch_size=4)
    gpt = functools.partial(zoo.GPT, param="sp", block_size=16)
    s = sweep(gpt, (16, 32), (1e-3, 1e-2), steps=8, data=data, backend="serial", progress=False)
    assert np.isfinite(s.losses).all()
    assert (s.histories[..., 0] == pytest.approx(math.log(64), abs=0.6))  # ~uniform at init


def test_teacher_student_is_deterministic_with_unit_scale_targets():
    data = teacher_student_data(batch_size=512)
    x1, y1 = next(iter(data(16, 0)))
    x2, y2 = next(iter(data(1024, 0)))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (512, 32) and y1.shape == (512, 10)
    assert 0.7 < float(y1.std()) < 1.3
    x3, _ = next(iter(data(16, 1)))
    assert not torch.equal(x1, x3)


# ------------------------------------------------------------------- output

def test_plot_writes_png(tmp_path):
    s = Sweep(widths=W4, lrs=LRS8, losses=parabola_grid([-6, -7, -8, -9]), name="fake SP")
    g = parabola_grid([-8, -8, -8, -8])
    g[:, -1] = np.inf
    m = Sweep(widths=W4, lrs=LRS8, losses=g, name="fake muP")
    for path, fn in [(tmp_path / "one.png", lambda p: s.plot(str(p))),
                     (tmp_path / "sub" / "two.png", lambda p: plot_sweeps([s, m], str(p)))]:
        fn(path)
        blob = path.read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000


def test_str_and_json():
    s = Sweep(widths=W4, lrs=LRS8, losses=parabola_grid([-6, -7, -8, -9]), name="fake")
    text = str(s)
    assert "fake" in text and "-1.00 +- 0.40" in text and "2^-9.00" in text
    d = eval_json(s.to_json())
    assert d["drift"] == pytest.approx(-1.0) and d["best_lr"][3] == 2.0 ** -9
    with pytest.raises(TransferError, match="shape"):
        Sweep(widths=W4, lrs=LRS8, losses=np.zeros((3, 8)))


def test_at_widths_drops_a_pre_asymptotic_width():
    """Minima at log2 lr -5 (width 64) then -8 at 128..512: over all widths the optimum drifts,
    without the narrowest it stays put (drift 0, and the grid argmin -8 at each kept width)."""
    s = Sweep(widths=W4, lrs=LRS8, losses=parabola_grid([-5, -8, -8, -8]), seeds=(3,))
    assert s.drift < -0.5
    t = s.at_widths([128, 256, 512])
    assert t.widths == (128, 256, 512) and t.seeds == (3,)
    assert t.best_lr == (2.0 ** -8,) * 3 and t.drift == pytest.approx(0.0)
    np.testing.assert_array_equal(t.losses, s.losses[1:])
    with pytest.raises(TransferError, match="two or more"):
        s.at_widths([128])
    with pytest.raises(TransferError, match="two or more"):
        s.at_widths([128, 1000])
