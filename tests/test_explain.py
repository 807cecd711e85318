"""tensorprog explain: the MLP theory derivation and the one-parameter explanation."""
from __future__ import annotations

import re
import textwrap

import pytest
import sympy as sp
import torch

from tensorprog.predict.analyze import analyze
from tensorprog.cli import main
from tensorprog.errors import TensorprogError
from tensorprog.text.explain import explain_abc, explain_parameter, explain_preset, find_parameter
from tensorprog.theory.abc import preset
from tensorprog.zoo import example

VERDICT = re.compile(r"=> ([a-z ]+?)\s+\(r = (\S+)\)")


def verdict(text):
    regime, r = VERDICT.search(text).groups()
    return regime, sp.Rational(r)


def flat(text):
    """Prose is wrapped for the terminal: compare with single spaces."""
    return " ".join(text.split())


def run_cli(capsys, *argv):
    rc = main(["explain", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- theory


# (preset, L, optimizer, c, r, regime): TP4's named parametrizations (§3) and TP4b Def 2.5.1.
SHEET = [
    ("SP", 2, "sgd", 0, "-1", "unstable"),
    ("SP", 3, "sgd", 0, "-1", "unstable"),
    ("SP", 2, "sgd", 1, "1/2", "kernel"),
    ("SP", 1, "sgd", 1, "3/2", "kernel"),
    ("NTK", 2, "sgd", None, "1/2", "kernel"),
    ("NTK", 3, "sgd", None, "1/2", "kernel"),
    ("muP", 2, "sgd", None, "0", "feature learning"),
    ("muP", 3, "sgd", None, "0", "feature learning"),
    ("MF", 1, "sgd", None, "0", "feature learning"),
    ("muP", 3, "adam", None, "0", "feature learning"),
]


@pytest.mark.parametrize("name, L, opt, c, r, regime", SHEET)
def test_derivation_gives_the_sheets_r(name, L, opt, c, r, regime):
    text = explain_preset(name, L, opt, c=c)
    assert verdict(text) == (regime, sp.Rational(r))
    assert re.search(rf"^\s*r   = .*= {re.escape(r)}$", text, re.M), text


def test_derivation_shows_symbols_then_numbers():
    text = explain_preset("SP", 2, "sgd", lr_exponent=0)
    symbolic = text.index("r_1 = 2 a_1 + c + min(a_3 + b_3, 2 a_3 + c)")
    numeric = text.index("readout term min(a_{L+1} + b_{L+1}, 2 a_{L+1} + c) = min(1/2, 0) = 0")
    assert symbolic < numeric
    assert "r_2 = 2 a_2 + c + min(a_3 + b_3, 2 a_3 + c) - 1" in text
    assert "r   = min(0, -1) = -1" in text


def test_derivation_lists_every_condition_with_value_and_source():
    p = preset("SP", 3)
    text = explain_abc(p)
    for cond in p.why():
        line = next(l for l in text.splitlines() if cond.expression_text in l and cond.name in l)
        assert str(cond.value) in line and cond.source in line
        assert ("yes" if cond.holds else "NO") in line
    assert "fails: r >= 0" in flat(text)
    assert "c* = 1" in flat(text)  # the largest stable learning rate of SP's init is n^-1


def test_adam_derivation_and_tp4b_remark():
    text = explain_preset(a=[0, 0, 0], b=[0, "1/2", "1/2"], c=[1], optimizer="adam")
    assert "r_1 = a_1 + c" in text and "r_2 = a_2 + c - 1" in text
    assert verdict(text) == ("unstable", 0)
    assert "a_{L+1} + b_{L+1} + r >= 1" in text and "TP4b Thm 2.8.12" in text


def test_symmetry_step_finds_the_canonical_form_and_the_name():
    text = explain_preset(a=["1/2", "1/2", "1/2"], b=["-1/2", 0, 0], c=[-1])
    assert "shift t = -1/2" in text
    assert "named parametrization: SP" in flat(text)


def test_per_layer_learning_rates():
    text = explain_preset("muP", 2, "adam")
    assert "c_l" in text and "r_2 = a_2 + c_2 - 1" in text
    assert verdict(text) == ("feature learning", 0)
    assert "Every layer updates maximally" in flat(text)


def test_markdown_output():
    text = explain_preset("NTK", 2, markdown=True)
    assert "### Step 3. r: how far the features move" in text
    assert "| l | layer | a_l | b_l | c_l |" in text
    assert "```text" in text


def test_cli_theory(capsys):
    rc, out, _ = run_cli(capsys, "mlp", "--preset", "SP", "--optimizer", "sgd", "--layers", "3",
                         "--lr-exponent", "0")
    assert rc == 0
    assert "r   = min(0, -1, -1) = -1" in out and verdict(out) == ("unstable", -1)
    rc, out, _ = run_cli(capsys, "mlp", "--preset", "SP", "--layers", "2", "--lr-exponent", "-1")
    assert rc == 0 and verdict(out) == ("kernel", sp.Rational(1, 2))


@pytest.mark.parametrize("argv", [
    ["mlp", "--a", "-1/2", "0", "1/2", "--b", "1/2", "1/2", "1/2", "--c", "0"],
    ["mlp", "--a=-1/2,0,1/2", "--b", "1/2,1/2,1/2", "--c", "0"],
    ["mlp", "--a", "-0.5", "0", "0.5", "--b", "0.5", "0.5", "0.5"],
])
def test_cli_abc_lists_accept_negative_rationals(capsys, argv):
    rc, out, _ = run_cli(capsys, *argv)
    assert rc == 0
    assert verdict(out) == ("feature learning", 0)
    assert "named parametrization: muP" in flat(out)


@pytest.mark.parametrize("argv, message", [
    (["mlp", "--preset", "XP"], "unknown preset 'XP'"),
    (["mlp", "--preset", "MF", "--layers", "2"], "L = 1 only"),
    (["mlp", "--preset", "SP", "--layers", "0"], "--layers must be an integer >= 1"),
    (["mlp", "--a", "0", "1/2", "--b", "0"], "a has 2 entries but b has 1"),
    (["mlp", "--a", "0", "x", "--b", "0", "0"], "'x' is not a rational number"),
    (["mlp", "--a", "0", "0", "0", "--b", "0", "0", "0", "--layers", "3"], "needs L + 1 = 4 values"),
    (["mlp", "--preset", "SP", "--c", "1", "--lr-exponent", "-1"], "not both"),
    (["mlp"], "give a preset"),
    (["mlp", "--preset", "SP", "--parameter", "w"], "no named parameters"),
    ([], "say what to explain"),
    (["--preset", "SP"], "name the target 'mlp'"),
    (["--example", "mlp"], "add --parameter NAME"),
    (["--example", "mlp", "--preset", "SP", "--parameter", "w"], "--preset is for the closed-form"),
    (["model.py", "--parameter", "w"], "unknown explain target 'model.py'"),
    (["--example", "nosuch", "--parameter", "w"], "unknown example 'nosuch'"),
])
def test_cli_bad_input_is_a_clear_error(capsys, argv, message):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, out
    assert err.startswith("tensorprog: error: ") and message in err, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- one parameter


@pytest.fixture(scope="module")
def mlp_sp_report():
    ex = example("mlp", param="sp", optimizer="adam")
    return analyze(ex.factory, ex.widths, example_inputs=ex.example_inputs,
                   make_optimizer=ex.make_optimizer)


def test_parameter_explanation_names_the_op_and_the_role(mlp_sp_report):
    text = explain_parameter(mlp_sp_report, "readout.weight")
    assert "op `linear`" in text and "(module `readout`)" in flat(text)
    assert "Role output: it maps an infinite dim to a finite one" in flat(text)
    assert "contracted over dim 1 (~ n)" in flat(text)
    assert "init RMS" in text and "b = 1/2" in text and "c = 0" in text
    assert re.search(r"muP\s+A >= 1\s+no", text)
    assert "A = 1/2, U = 0" in text  # the invariants, Adam: U = a + c
    assert "TP5 Table 8: multiplier on linear ∝ 1/fan_in" in flat(text)  # the fixes, from analyze
    assert "alternative 2 of 2" in flat(text) and "init std ∝ 1/fan_in" in flat(text)


def test_parameter_explanation_of_hidden_and_vector(mlp_sp_report):
    text = explain_parameter(mlp_sp_report, "hidden.*.weight")
    assert "Role hidden" in flat(text) and "2 parameters match" in flat(text)
    assert "Adam LR ∝ 1/fan_in" in flat(text)
    assert "r = -1" in text
    text = explain_parameter(mlp_sp_report, "input.bias")
    assert "Role vector: it is used elementwise" in flat(text)
    assert "No fix needed" in flat(text)


def test_explanation_agrees_with_the_report_on_every_parameter(mlp_sp_report):
    for name in mlp_sp_report.params:
        text = explain_parameter(mlp_sp_report, name)
        assert "recomputation differs" not in text, name
        classes = ", ".join(mlp_sp_report.params[name].classes) or "none"
        assert f"must match): {classes}." in flat(text)


def test_parameter_names_resolve_or_fail_clearly(mlp_sp_report):
    assert find_parameter(mlp_sp_report, "readout.weight") == ["readout.weight"]
    assert find_parameter(mlp_sp_report, "hidden.*.bias") == ["hidden.0.bias", "hidden.1.bias"]
    assert find_parameter(mlp_sp_report, "0.weight") == ["hidden.0.weight"]
    with pytest.raises(TensorprogError, match="Did you mean: readout.weight"):
        find_parameter(mlp_sp_report, "readout.weigth")
    with pytest.raises(TensorprogError, match="ambiguous"):
        find_parameter(mlp_sp_report, "weight")


def test_cli_parameter_of_a_file(capsys, tmp_path):
    path = tmp_path / "net.py"
    path.write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        def factory(width):
            return nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, width),
                                 nn.Tanh(), nn.Linear(width, 3))

        example_inputs = (torch.randn(4, 8),)
    """))
    rc, out, err = run_cli(capsys, f"{path}:factory", "--parameter", "2.weight",
                           "--optimizer", "sgd")
    assert rc == 0, err
    assert out.startswith("Parameter 2.weight of ")
    assert "op `linear`" in out and "Role hidden" in flat(out)
    assert "no optimizer given" in flat(out) and "sgd" in out
    rc, out, err = run_cli(capsys, f"{path}:factory", "--parameter", "9.weight")
    assert rc == 2 and "no parameter '9.weight'" in err


def test_cli_parameter_of_the_zoo_gpt_markdown(capsys):
    rc, out, err = run_cli(capsys, "--example", "gpt", "--param", "sp", "--parameter",
                           "blocks.0.attn.query.weight", "--markdown", "--widths", "32", "64", "128")
    assert rc == 0, err
    assert out.startswith("## Parameter blocks.0.attn.query.weight of gpt-sp")
    assert "### Step 2. How the graph uses it, and its role" in out
    assert "Role hidden" in flat(out) and "| class | init rule |" in out


# --------------------------------------------------------------------------- exact zero, one way

FORBIDDEN_ZERO = ("Theta(n^{0})", "n^-oo", "-inf", "Theta(0", "n^zero")


def test_zero_readout_init_is_printed_as_exactly_zero():
    """b_{L+1} = oo (TP5 App D.2's zero readout): the output at init is exactly 0, said once, in
    the printer's words, never as an exponent of n."""
    text = explain_preset(a=["-1/2", "0", "1/2"], b=["1/2", "1/2", sp.oo], c=0)
    assert "At init the output is exactly 0 (zero readout init)" in flat(text)
    for bad in FORBIDDEN_ZERO:
        assert bad not in text, bad


def test_zero_init_parameter_explanation_uses_the_exact_zero_printer():
    ex = example("mlp", param="mup", optimizer="adam", readout_zero_init=True)
    rep = analyze(ex.factory, ex.widths, example_inputs=ex.example_inputs,
                  make_optimizer=ex.make_optimizer)
    text = explain_parameter(rep, "readout.weight")
    assert "0 (exact)" in text and "b = inf (zero init)" in text
    for bad in FORBIDDEN_ZERO + ("~ zero", " zero ("):
        assert bad not in text, bad


def test_sp_and_ntk_global_lr_exponents_are_not_called_shared(mlp_sp_report):
    """SP's c0 and NTK's c0 are fitted separately (here 0 and -1/2 for an SP model): the text
    must not say that the two classes share one."""
    text = flat(explain_parameter(mlp_sp_report, "readout.weight"))
    assert "share one" not in text
    assert "not the same for SP as for NTK" in text
    assert "(c0 = 0)" in text and "(c0 = -1/2)" in text
