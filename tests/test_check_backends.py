"""``check`` spread over the sweep backends (issue 13, item 5) and its partial report on Ctrl-C
(issue 11, item 2).

Backends: the same check run in this process (serial), in a process pool (local) and on Ray must
measure the same numbers. On the CPU with the same seeds and one torch thread everywhere (pool
workers run one thread; the fixture below sets one here) every float operation runs in the same
order, so the measurements are compared bit for bit: any difference in what a worker builds,
seeds, exports or feeds shows up as a changed value. The expected values are this process's own
measurement (an independent run), not numbers written down.

Partial reports: a run interrupted by a KeyboardInterrupt at the third width must be judged on
the two widths that finished exactly as a check of those two widths alone is (an independent
run), and must round-trip through JSON.
"""
import functools
import math

import numpy as np
import pytest
import torch

from tensorprog.errors import CheckError
from tensorprog.measure.check import CheckReport, check
from tensorprog.zoo import MLP, example

EX = example("mlp", param="mup", d_in=8, d_out=3)
# a list of batches: one new batch per step (the frozen-initial-parameters path), and a
# data source / example inputs that must pickle
BATCHES = [(torch.randn(8, 8, generator=torch.Generator().manual_seed(k)),) for k in range(3)]
KW = dict(make_optimizer=EX.make_optimizer, loss=EX.loss, data=BATCHES, steps=2, seeds=2,
          device="cpu", progress=False)


def values(rep):
    """{(node, kind, step): (W, S) array} of a report's measurements."""
    return {(r.node, r.kind, r.step): np.array([r.values[w] for w in rep.widths])
            for r in rep.records}


def assert_same_measurements(a, b):
    va, vb = values(a), values(b)
    assert va.keys() == vb.keys() and len(va) > 10
    for k in va:
        assert np.array_equal(va[k], vb[k], equal_nan=True), k
    assert [(r.node, r.kind, r.step, r.status) for r in a.records] == \
        [(r.node, r.kind, r.step, r.status) for r in b.records]
    assert a.to_dict()["loss_grad"] == b.to_dict()["loss_grad"]


@pytest.fixture(scope="module")
def serial():
    return check(EX.factory, (16, 32), **KW)


def test_local_backend_measures_exactly_what_serial_does(serial):
    local = check(EX.factory, (16, 32), backend="local", workers=2, **KW)
    assert_same_measurements(serial, local)


def test_ray_backend_measures_exactly_what_serial_does(serial):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        distributed = check(EX.factory, (16, 32), backend="ray", **KW)
    finally:
        ray.shutdown()
    assert_same_measurements(serial, distributed)


def test_unpicklable_pieces_and_bad_backends_are_clear_errors():
    with pytest.raises(CheckError, match=r"factory .*cannot be sent to worker processes.*"
                                         r"module-level function"):
        check(lambda w: MLP(w, param="mup", d_in=8, d_out=3), (16, 32), backend="local", **KW)
    with pytest.raises(CheckError, match="unknown backend 'gpu'"):
        check(EX.factory, (16, 32), backend="gpu", **KW)
    with pytest.raises(CheckError, match="workers must be a positive int"):
        check(EX.factory, (16, 32), backend="local", workers=0, **KW)


def interrupted_at(stop_width, width, **kw):
    """zoo.MLP, but building it at ``stop_width`` is a Ctrl-C (KeyboardInterrupt)."""
    if width == stop_width:
        raise KeyboardInterrupt
    return MLP(width, param="mup", d_in=8, d_out=3)


def test_ctrl_c_keeps_the_finished_widths_judged_as_a_check_of_them_alone(tmp_path):
    full = check(EX.factory, (16, 32), trace_widths=(16, 32), **KW)
    part = check(functools.partial(interrupted_at, 64), (16, 32, 64), trace_widths=(16, 32), **KW)
    assert part.partial.startswith("interrupted after 4 of 6 runs")
    assert part.widths == (16, 32) and part.missing == [(64, 0), (64, 1)]
    assert_same_measurements(full, part)
    assert part.verdict == full.verdict
    assert "PARTIAL" in str(part) and "width 64 seed 0" in str(part)
    path = tmp_path / "partial.json"
    part.to_json(str(path))
    back = CheckReport.from_json(str(path))
    assert back == part and back.partial == part.partial and back.missing == part.missing


def test_ctrl_c_with_one_width_finished_leaves_every_prediction_undetermined():
    part = check(functools.partial(interrupted_at, 32), (16, 32, 64), trace_widths=(16, 64), **KW)
    assert part.widths == (16,) and len(part.missing) == 4
    assert part.records and all(r.status == "inconclusive" and r.note.startswith("undetermined")
                                for r in part.records)
    assert part.verdict == "inconclusive"
    # the finished width's measurements are kept
    assert all(len(r.values[16]) == 2 and all(math.isfinite(v) for v in r.values[16])
               for r in part.records)
    assert CheckReport.from_json(part.to_json()) == part


def failing_at_32(width):
    if width == 32:
        raise ValueError("no width 32 here")
    return MLP(width, param="mup", d_in=8, d_out=3)


def test_a_failing_run_in_a_worker_is_an_error_naming_its_width_and_seed():
    with pytest.raises(CheckError, match=r"width 32, seed 0: factory\(32\) raised ValueError: "
                                         r"no width 32 here"):
        check(failing_at_32, (16, 32), trace_widths=(16, 64), backend="local", workers=1, **KW)
