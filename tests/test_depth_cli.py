"""Depth on the command line (``analyze`` / ``check`` with ``--depths``) and the depth check's
figure. Expected exponents come from the papers: branch multiplier L^-alpha with alpha = 1 for
CompleteP (arXiv 2505.01618, Table 1) and 1/2 for Depth-muP (TP6, arXiv 2310.02244); the plot is
fed closed-form power laws, so the drawn slopes can be compared with the exponents put in.

The CLI runs in a subprocess (``python -m tensorprog``, this checkout on PYTHONPATH)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

from tensorprog.measure.depth import DepthCheck
from tensorprog.measure.judge import Record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEPTH_FILE = """
import torch, torch.nn as nn
class Net(nn.Module):
    # pre-LN residual MLP with TP6's Depth-muP multiplier L^-1/2, no optimizer given
    def __init__(self, width, depth):
        super().__init__()
        self.inp = nn.Linear(16, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
                                    for _ in range(depth))
        self.out = nn.Linear(width, 4)
        self.m = depth ** -0.5
    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + self.m * b(h)
        return self.out(h)
def factory(width, depth):
    return Net(width, depth)
def width_only(width):
    return nn.Sequential(nn.Linear(16, width), nn.Linear(width, 4))
def example_inputs(width):
    return (torch.randn(8, 16, generator=torch.Generator().manual_seed(0)),)
"""


def tensorprog(*argv, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "tensorprog", *argv], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def assert_one_clear_line(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [x for x in err.strip().splitlines() if not x.startswith("[tensorprog]")]
    assert len(lines) == 1 and lines[0].startswith("tensorprog: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ----------------------------------------------------------------------------- the figure

DEPTHS = (2, 4, 8, 16)
#: node -> (size exponent, change exponent, prefactor): closed-form power laws
LAWS = {"stream": (0, sp.Rational(1, 2), 1.3), "blocks.*.attn": (sp.Rational(-1, 2), -1, 0.2),
        "blocks.*.mlp": (sp.Rational(-1, 2), -1, 0.15)}


def _record(node, kind, exp, c):
    values = {L: [c * L ** float(exp) * f for f in (0.98, 1.02)] for L in DEPTHS}
    return Record(node=node, module=node, op="add", kind=kind, step=0 if kind == "size" else 1,
                  slope=float(exp), stderr=0.01, predicted=exp, status="confirmed", focus=True,
                  values=values)


def _check():
    records = [_record(n, kind, e, c) for n, (es, ec, c) in LAWS.items()
               for kind, e in (("size", es), ("change", ec))]
    return DepthCheck(records=records, depths=DEPTHS, width=16, steps=1, seeds=2)


def test_depth_plot_has_one_series_per_measured_quantity(tmp_path):
    from matplotlib.colors import to_rgba

    from tensorprog.measure.plots import depth_figure

    fig = depth_figure(_check())
    axes = fig.axes
    assert len(axes) == 2
    colours = {}
    for ax, kind in zip(axes, ("size", "change")):
        assert ax.get_xscale() == ax.get_yscale() == "log" and "depth" in ax.get_xlabel()
        measured = [ln for ln in ax.get_lines() if ln.get_marker() not in (None, "None", "")]
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(measured) == len(LAWS) and len(dashed) == len(LAWS)
        labels = [ln.get_label() for ln in measured]
        assert [lab.split(":")[0] for lab in labels] == list(LAWS)
        assert len({to_rgba(ln.get_color()) for ln in measured}) == len(LAWS)  # all distinct
        for ln in measured:  # a quantity keeps its colour in both panels
            colours.setdefault(ln.get_label().split(":")[0], set()).add(to_rgba(ln.get_color()))
        for ln, node in zip(dashed, LAWS):  # each dashed line has the slope put in
            x, y = (np.asarray(a, dtype=float) for a in ln.get_data())
            slope = np.polyfit(np.log(x), np.log(y), 1)[0]
            want = float(LAWS[node][0 if kind == "size" else 1])
            assert slope == pytest.approx(want, abs=1e-9)
        # the measured series pass through the geometric means of the two seeds: c L^e
        for ln, node in zip(measured, LAWS):
            x, y = (np.asarray(a, dtype=float) for a in ln.get_data())
            es, ec, c = LAWS[node]
            e = float(es if kind == "size" else ec)
            assert y == pytest.approx(c * x ** e * np.sqrt(0.98 * 1.02), rel=1e-9)
    assert all(len(v) == 1 for v in colours.values())
    path = _check().plot(str(tmp_path / "depth.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_depth_plot_draws_both_terms_of_a_two_term_prediction():
    """A block whose change is predicted as its own update L^-1 plus its input's change L^-1/2
    (TP6 Depth-muP with Adam): both slopes are drawn through the first point, in the series'
    colour, and the legend names both; the second term survives the JSON round trip."""
    from tensorprog.measure.plots import depth_figure

    two = _record("blocks.*.mlp", "change", sp.Rational(-3, 4), 0.15)
    two.predicted, two.predicted_also = sp.Integer(-1), sp.Rational(-1, 2)
    two = Record.from_dict(json.loads(json.dumps(two.to_dict())))
    assert two.predicted_also == sp.Rational(-1, 2)
    rep = DepthCheck(records=[_record("stream", "change", sp.Rational(1, 2), 1.3), two],
                     depths=DEPTHS, width=16, steps=1, seeds=2)
    ax = depth_figure(rep).axes[1]
    measured = {ln.get_label().split(":")[0]: ln for ln in ax.get_lines()
                if ln.get_marker() not in (None, "None", "")}
    drawn = {}
    for ln in ax.get_lines():
        if ln.get_linestyle() in ("--", "-."):
            x, y = (np.asarray(a, dtype=float) for a in ln.get_data())
            drawn.setdefault(ln.get_color(), []).append(
                (ln.get_linestyle(), round(float(np.polyfit(np.log(x), np.log(y), 1)[0]), 9),
                 float(y[0])))
    mlp = measured["blocks.*.mlp"]
    first = float(mlp.get_ydata()[0])
    assert sorted(drawn[mlp.get_color()]) == [("--", -1.0, pytest.approx(first)),
                                              ("-.", -0.5, pytest.approx(first))]
    assert [s for s, _, _ in drawn[measured["stream"].get_color()]] == ["--"]  # one term
    assert "L^-1 (own update" in mlp.get_label() and "L^-1/2 (input's change" in mlp.get_label()


# ----------------------------------------------------------------------------- the CLI

def test_cli_analyze_depth_names_the_family_and_writes_json(tmp_path):
    out = tmp_path / "d.json"
    rc, stdout, err = tensorprog("analyze", "--example", "resmlp", "--depth-form", "completep",
                                 "--depths", "2", "4", "--width", "16", "--json", str(out))
    assert rc == 0, err
    assert "CompleteP" in stdout and "Traceback" not in err
    d = json.loads(out.read_text())
    assert d["family"] == "completep" and d["depths"] == [2, 4]
    assert {k["alpha"] for k in d["kinds"].values()} == {"1"}  # CompleteP: alpha = 1


def test_cli_check_depth_writes_plot_and_json(tmp_path):
    """resmlp in Depth-muP at depths 2..8: the stream is Theta(1) at init (TP6 §2), the
    branch outputs L^-1/2. ~15 s on one core."""
    png, js = tmp_path / "d.png", tmp_path / "d.json"
    rc, stdout, err = tensorprog("check", "--example", "resmlp", "--depth-form", "depth_mup",
                                 "--depths", "2", "4", "8", "--width", "16", "--steps", "1",
                                 "--seeds", "1", "--plot", str(png), "--json", str(js))
    assert rc in (0, 1), err  # 1: refuted, still a report
    assert "Traceback" not in err and "depth check at width 16" in stdout
    d = json.loads(js.read_text())
    assert d["depths"] == [2, 4, 8]
    sizes = {r["node"]: r["predicted"] for r in d["records"] if r["kind"] == "size"}
    assert sizes == {"stream": "0", "blocks.*.linear": "-1/2"}
    # the block's change has two terms (Adam: gamma = 1/2): its own update L^(-alpha-gamma) =
    # L^-1, and its input's change, the stream's change relative to its size, L^0 x L^-alpha
    block = next(r for r in d["records"] if r["kind"] == "change" and r["node"] != "stream")
    assert (block["predicted"], block["predicted_also"]) == ("-1", "-1/2")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rc == (1 if d["verdict"] == "refuted" else 0)


@pytest.fixture
def cli(capsys, monkeypatch):
    """``tensorprog.cli.main`` in-process: (exit code, stdout, stderr); main's
    ``logging.disable`` is undone afterwards."""
    import logging

    from tensorprog.cli import main

    def run(*argv, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err
    yield run
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("argv, words", [
    (["analyze", "--example", "mlp", "--depths", "2", "4"], ["mlp has no depth form", "resmlp"]),
    (["check", "--example", "resmlp"], ["resmlp is a depth example", "--depths"]),
    (["analyze", "--example", "resmlp", "--width", "16"], ["--width is for a depth run"]),
    (["analyze", "--example", "resmlp", "--depths", "4"], ["two or more distinct"]),
    (["analyze", "--example", "resmlp", "--depths", "2", "x"], ["--depths must be integers"]),
    (["check", "--example", "resmlp", "--depths", "2", "4", "--widths", "32", "64"],
     ["--width N, not --widths"]),
    (["check", "--example", "resmlp", "--depths", "2", "4", "--steps", "0"], ["at least 1"]),
])
def test_cli_depth_bad_arguments_are_one_line(cli, argv, words):
    rc, out, err = cli(*argv)
    assert_one_clear_line(rc, err, *words)
    assert "[tensorprog]" not in err  # refused before anything ran


def test_cli_depth_output_paths_checked_before_the_run(tmp_path):
    rc, out, err = tensorprog("check", "--example", "resmlp", "--depths", "2", "4", "--plot",
                              str(tmp_path / "no" / "such.png"))
    assert_one_clear_line(rc, err, "--plot", "does not exist")
    assert "[tensorprog]" not in err


def test_cli_analyze_depth_of_a_file_factory(cli, tmp_path):
    (tmp_path / "net.py").write_text(DEPTH_FILE)
    rc, out, err = cli("analyze", "net.py:factory", "--depths", "2", "4", "--width", "16",
                       cwd=tmp_path)
    assert rc == 0, err
    assert "Depth-muP multiplier" in out  # alpha = 1/2 read from the graph
    assert "undetermined" in out  # no make_optimizer: the training conditions are open
    rc, out, err = cli("analyze", "net.py:width_only", "--depths", "2", "4", cwd=tmp_path)
    assert_one_clear_line(rc, err, "factory taking (width, depth)")
    rc, out, err = cli("analyze", "net.py:factory", "--depth-form", "completep", "--depths", "2",
                       "4", cwd=tmp_path)
    assert_one_clear_line(rc, err, "--depth-form chooses a zoo depth example")


# ----------------------------------------------------------------------------- rules --base-depth

def test_cli_rules_base_depth_gives_the_depth_factors(tmp_path):
    """Depth-muP (TP6, arXiv 2310.02244): alpha = 1/2, branch multiplier (L/L0)^-1/2, Adam LR
    (L/L0)^(alpha - 1) = (L/L0)^-1/2 (alpha + gamma = 1) and eps (L/L0)^-alpha: at L = 4 L0 each
    factor is 1/2."""
    from tensorprog.transform.rules import Rules

    js, py = tmp_path / "r.json", tmp_path / "r.py"
    rc, stdout, err = tensorprog("rules", "--example", "mlp", "--param", "sp", "--widths", "64",
                                 "128", "--base-depth", "4", "--family", "depth_mup",
                                 "--json", str(js), "--pytorch", str(py))
    assert rc == 0, err
    assert "Depth-muP (base depth 4)" in stdout
    d = json.loads(js.read_text())["depth"]
    assert d == {"family": "depth_mup", "base_depth": 4, "optimizer": "adam"}
    factors = Rules.from_json(str(js)).depth.at(16)
    assert factors == pytest.approx({"branch_multiplier": 0.5, "lr": 0.5, "eps": 0.5})
    assert "Depth-muP (base depth 4)" in py.read_text()  # the code says what it leaves out


@pytest.mark.parametrize("argv, words", [
    (["--family", "depth_mup"], ["--family", "add --base-depth"]),
    (["--base-depth", "0"], ["--base-depth must be a positive integer"]),
    (["--base-depth", "2", "--family", "bogus"], None),  # argparse: exit 2, its own usage line
])
def test_cli_rules_bad_depth_options(cli, argv, words):
    if words is None:
        with pytest.raises(SystemExit) as e:
            cli("rules", "--example", "mlp", *argv)
        assert e.value.code == 2
        return
    rc, out, err = cli("rules", "--example", "mlp", *argv)
    assert_one_clear_line(rc, err, *words)
    assert not out  # refused before the trace
