"""The command line on user errors (issue 11, item 3): one clear line on stderr, a non-zero exit,
never a traceback; output paths and --device checked before the run starts.

Each case runs ``python -m tensorprog`` in a subprocess (this checkout on PYTHONPATH)."""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD_SHAPE = """
import torch, torch.nn as nn
def factory(w):
    return nn.Sequential(nn.Linear(8, w), nn.ReLU(), nn.Linear(w, 3))
def example_inputs(w):
    return (torch.randn(4, 5),)  # 5 features for a Linear(8, w)
"""


def tensorprog(*argv, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "tensorprog", *argv], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr, time.time() - t0


def assert_one_clear_line(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [x for x in err.strip().splitlines() if not x.startswith("[tensorprog]")]  # progress
    assert len(lines) == 1 and lines[0].startswith("tensorprog: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("argv, words", [
    (["analyze", "--example", "mlp", "--device", "nonsense"], ["--device 'nonsense'", "cpu"]),
    (["explain", "foo"], ["unknown explain target 'foo'", "mlp", "FILE.py:factory"]),
    (["check", "--example", "mlp", "--max-memory", "lots"], ["--max-memory 'lots'", "8GiB"]),
])
def test_bad_arguments_are_one_line(argv, words):
    rc, out, err, _ = tensorprog(*argv)
    assert_one_clear_line(rc, err, *words)


@pytest.mark.parametrize("command, flag, where", [
    ("analyze", "--json", "missing"), ("trace", "--dot", "folder"), ("check", "--plot", "folder"),
])
def test_output_paths_are_checked_before_the_run(tmp_path, command, flag, where):
    path = str(tmp_path / "no" / "such" / "out") if where == "missing" else str(tmp_path)
    rc, out, err, _ = tensorprog(command, "--example", "mlp", flag, path)
    assert_one_clear_line(rc, err, flag, "does not exist" if where == "missing" else "is a directory")
    assert "[tensorprog]" not in err  # refused before any tracing started


def test_every_output_flag_is_checked(tmp_path):
    """In-process, every command x output flag (the subprocess cases above sample them)."""
    from tensorprog.cli import build_parser
    from tensorprog.cli.load import check_outputs
    from tensorprog.errors import TensorprogError

    flags = {"analyze": ["--json"], "trace": ["--json", "--dot"], "rules": ["--json", "--pytorch"],
             "check": ["--json", "--plot"]}
    parser = build_parser()
    for command, fs in flags.items():
        for flag in fs:
            for path, why in [(str(tmp_path / "none" / "x"), "does not exist"),
                              (str(tmp_path), "is a directory")]:
                args = parser.parse_args([command, "--example", "mlp", flag, path])
                with pytest.raises(TensorprogError, match=f"{flag} .*{why}"):
                    check_outputs(args)
            args = parser.parse_args([command, "--example", "mlp", flag, str(tmp_path / "ok")])
            check_outputs(args)  # a fresh file in a writable folder is fine


def test_device_is_checked():
    """In-process: what --device accepts (check also takes "auto")."""
    import torch
    from tensorprog.cli.load import check_device
    from tensorprog.errors import TensorprogError

    for bad, auto in [("nonsense", False), ("nonsense", True), ("auto", False), ("cuda:x", True)]:
        with pytest.raises(TensorprogError, match="--device"):
            check_device(bad, allow_auto=auto)
    check_device("cpu")
    check_device("auto", allow_auto=True)
    if not torch.cuda.is_available():
        with pytest.raises(TensorprogError, match="CUDA is not available"):
            check_device("cuda")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, out, err, _ = tensorprog("analyze", "--example", "mlp", "--json", str(ro / "x.json"))
    finally:
        ro.chmod(0o700)
    assert_one_clear_line(rc, err, "not writable")


def test_wrong_shape_inputs_give_one_message_without_torch_logs(tmp_path):
    (tmp_path / "bad.py").write_text(BAD_SHAPE)
    rc, out, err, _ = tensorprog("analyze", "bad.py:factory", "--widths", "16", "32", cwd=tmp_path)
    assert_one_clear_line(rc, err, "width 16", "[4, 5]")
    assert "site-packages/torch" not in err  # torch's own log records of the failure


def test_check_refuses_a_width_that_does_not_fit():
    rc, out, err, _ = tensorprog("check", "--example", "mlp", "--device", "cpu", "--widths", "32",
                                 "64", "128", "--steps", "1", "--seeds", "1", "--max-memory", "1KB")
    assert_one_clear_line(rc, err, "width 128 needs an estimated", "given as max_memory",
                          "--max-memory none")
