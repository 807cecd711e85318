"""A Ray worker that dies mid-trial (issue 11, item 2): retried once, and a second death is a
``TransferError`` naming the trial, not a raw ``WorkerCrashedError``. Skipped without Ray."""
import functools
import os
import sys

import numpy as np
import pytest

from tensorprog import zoo
from tensorprog.transfer import TransferError, sweep, teacher_student_data

ray = pytest.importorskip("ray")

DATA = teacher_student_data(d_in=8, d_out=3, batch_size=16, teacher_width=32)


def crashing_mlp(width, marker=None, crash_width=32):
    """zoo.MLP, but at ``crash_width`` the process exits at once (os._exit: no exception, no
    cleanup, as a segfault or the kernel's OOM killer would) -- once if ``marker`` names a file
    to leave behind, every time if it is None."""
    if width == crash_width and (marker is None or not os.path.exists(marker)):
        if marker is not None:
            open(marker, "w").close()
        os._exit(1)
    return zoo.MLP(width, param="mup", depth=2, d_in=8, d_out=3)


@pytest.fixture(scope="module")
def local_ray():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def run(factory):
    return sweep(factory, (16, 32), (1e-3, 1e-2), steps=4, data=DATA, backend="ray",
                 progress=False)


def test_crashed_worker_is_retried_once(local_ray, tmp_path, capsys):
    marker = str(tmp_path / "crashed")
    s = run(functools.partial(crashing_mlp, marker=marker))
    assert os.path.exists(marker)  # it did crash once
    assert np.isfinite(s.losses).all()
    err = capsys.readouterr().err
    assert "width=32" in err and "crashed" in err and "retrying it once" in err


def test_worker_crashing_twice_is_an_error_naming_the_trial(local_ray):
    with pytest.raises(TransferError, match=r"trial width=32, lr=0\.0\d+, seed=0 failed: its Ray "
                                            r"worker process died twice"):
        run(crashing_mlp)
