"""Ctrl-C: a real sweep and a real check in a subprocess, interrupted once they have started,
must end within 10 s with no process of theirs left behind (issue 11, item 2).

SIGINT goes to the child's whole process group, as a terminal's Ctrl-C does; the group is the
child's own session (``start_new_session``), so every process it started is found by its pgid.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWEEP = """
import functools, sys
from tensorprog import zoo
from tensorprog.transfer import sweep, teacher_student_data
s = sweep(functools.partial(zoo.MLP, param="mup", depth=2, d_in=8, d_out=3), (16, 32),
          [2.0 ** -k for k in range(4, 14)], steps=int(sys.argv[2]),
          data=teacher_student_data(d_in=8, d_out=3, batch_size=16, teacher_width=32),
          backend="local", workers=2)
s.to_json(sys.argv[1])
print("saved", s.partial, flush=True)
"""

def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def group_members(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes in process group ``pgid``, read from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d))
    return out


def start(args, marker: str):
    """Start ``python args`` in its own session; return it once ``marker`` is on stderr."""
    proc = subprocess.Popen([sys.executable, *args], env=env(), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 120
    for line in proc.stderr:
        seen.append(line)
        if marker in line or time.time() > deadline:
            break
    if marker not in "".join(seen):
        proc.kill()
        pytest.fail("the run never started: " + "".join(seen)[-2000:])
    return proc, seen


def interrupt(proc, seen) -> tuple[float, str, str]:
    """SIGINT to the process group; (seconds to exit, stdout, stderr); fails after 10 s."""
    pgid = proc.pid
    t0 = time.time()
    os.killpg(pgid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("still running 10 s after Ctrl-C")
    took = time.time() - t0
    assert_group_gone(pgid, "Ctrl-C")
    return took, out, "".join(seen) + err


def assert_group_gone(pgid: int, after: str) -> None:
    """No process of group ``pgid`` within 5 s (helpers such as the forkserver and the resource
    tracker leave as soon as their parent is gone); kills what is left and fails."""
    deadline = time.time() + 5
    while group_members(pgid) and time.time() < deadline:
        time.sleep(0.1)
    left = group_members(pgid)
    if left:
        os.killpg(pgid, signal.SIGKILL)
    assert not left, f"processes left after {after}: {left}"


def test_ctrl_c_stops_a_local_sweep_and_keeps_the_finished_trials(tmp_path):
    path = tmp_path / "partial.json"
    # 20 trials of ~1-2 s on 2 workers: interrupted after the first finishes, most are not run
    proc, seen = start(["-c", SWEEP, str(path), "3000"], " 1/20 ")
    took, out, err = interrupt(proc, seen)
    assert proc.returncode == 0, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    assert "saved True" in out
    d = json.loads(path.read_text())
    pending = [p for row in d["pending"] for cell in row for p in cell]
    assert d["meta"]["partial"].startswith("interrupted after")
    assert 1 <= pending.count(False) < 20 and pending.count(True) >= 1
    assert took < 10


def test_ctrl_c_stops_the_check_command_with_one_line():
    # check trains in-process: Ctrl-C must end it (the CLI: exit 130 and one line, no traceback)
    proc, seen = start(["-m", "tensorprog", "check", "--example", "mlp", "--device", "cpu",
                        "--widths", "32", "64", "128", "256", "--steps", "400", "--seeds", "50"],
                       "seed 1/50")
    took, out, err = interrupt(proc, seen)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "tensorprog: interrupted"


def test_ctrl_c_during_a_local_check_saves_the_finished_widths(tmp_path):
    # the (width, seed) runs in a process pool; Ctrl-C once the first width is done: the workers
    # are killed, the partial report (judged on the finished widths) is printed and saved, and
    # nothing is left behind (no process, no "leaked semaphore" warning: the last line is ours)
    path = tmp_path / "partial.json"
    proc, seen = start(["-m", "tensorprog", "check", "--example", "mlp", "--device", "cpu",
                        "--widths", "16", "512", "1024", "2048", "--steps", "30", "--seeds", "2",
                        "--backend", "local", "--workers", "2", "--json", str(path)],
                       "width 16 done")
    took, out, err = interrupt(proc, seen)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "tensorprog: interrupted"
    assert "PARTIAL: interrupted after" in out and f"wrote {path}" in out
    d = json.loads(path.read_text())
    assert d["partial"].startswith("interrupted after")
    assert 16 in d["widths"] and 2048 not in d["widths"]
    missing = {tuple(m) for m in d["missing"]}
    assert (2048, 0) in missing and (2048, 1) in missing and not any(w == 16 for w, _ in missing)
    assert all(set(r["values"]) == {str(w) for w in d["widths"]} for r in d["records"])
    from tensorprog.measure.check import CheckReport
    rep = CheckReport.from_json(str(path))
    assert rep == CheckReport.from_json(rep.to_json()) and rep.missing
    assert took < 10


def test_sigterm_to_a_local_sweep_leaves_no_worker_behind(tmp_path):
    # a scheduler's stop (SIGTERM to the main process only, not the group): the sweep exits and
    # its pool workers go with it (by default SIGTERM ends the parent and orphans the workers)
    proc, seen = start(["-c", SWEEP, str(tmp_path / "unused.json"), "3000"], " 1/20 ")
    pgid = proc.pid
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("still running 10 s after SIGTERM")
    assert_group_gone(pgid, "SIGTERM")
    assert proc.returncode != 0
