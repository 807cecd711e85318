"""tensorprog.theory against the papers (TP4 arXiv 2011.14522, TP4b arXiv 2308.01814, TP5 arXiv 2203.03466).

Expected values are the papers' numbers (TP4 §3, TP4b Def 2.5.1, TP5 Table 3), written out here by hand; the code under
test only supplies the values being checked.
"""
from fractions import Fraction

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorprog.errors import TensorprogError
from tensorprog.theory.abc import (
    ABC, OPTIMIZER_CLASSES, Condition, TheoryError, max_stable_lr_exponent, optimizer_class,
    preset, uniform,
)

H = sp.Rational(1, 2)
FAST = settings(max_examples=60, deadline=None)


def layers(inp, hidden, out, L):
    return (inp,) + (hidden,) * (L - 1) + (out,)


# ----------------------------------------------------------------------------- SGD table (TP4)

@pytest.mark.parametrize("L", [2, 3, 5])
def test_sp_lr_theta1_unstable(L):
    p = preset("SP", L)  # default LR exponent c = 0
    assert (p.a, p.b, p.c) == ((0,) * (L + 1), layers(0, H, H, L), 0)
    assert p.r == -1
    assert p.stable is False
    assert p.regime == "unstable"
    failing = [c.expression_text for c in p.why() if c.holds is False and c.name == "stable"]
    assert "r >= 0" in failing


@pytest.mark.parametrize("L, r", [(1, sp.Rational(3, 2)), (2, H), (3, H), (4, H)])
def test_sp_lr_one_over_n_stable_kernel(L, r):
    p = preset("SP", L, c=1)
    assert p.r == r
    assert p.stable is True and p.nontrivial is True
    assert p.kernel_regime is True and p.feature_learning is False
    assert p.regime == "kernel"


@pytest.mark.parametrize("L", [1, 2, 3])
def test_ntk(L):
    p = preset("NTK", L)
    assert (p.a, p.b, p.c) == (layers(0, H, H, L), (0,) * (L + 1), 0)
    assert p.r == H
    assert (p.stable, p.nontrivial, p.kernel_regime) == (True, True, True)
    assert p.feature_learning is False
    assert p.regime == "kernel"


@pytest.mark.parametrize("L", [1, 2, 3, 6])
def test_mup(L):
    p = preset("muP", L)
    assert (p.a, p.b, p.c) == (layers(-H, 0, H, L), (H,) * (L + 1), 0)
    assert p.r == 0
    assert p.r_layers == (0,) * L  # every layer updates maximally (TP4 Thm 5.6)
    assert (p.stable, p.nontrivial, p.feature_learning) == (True, True, True)
    assert p.kernel_regime is False
    assert p.regime == "feature learning"
    assert max_stable_lr_exponent(p.a, p.b) == 0


def test_mean_field_is_mup_shifted_by_half():
    mf, mup = preset("MF", 1), preset("muP", 1)
    assert (mf.a, mf.b, mf.c) == ((0, 1), (0, 0), -1)
    assert mf.r == 0 and mf.regime == "feature learning"
    shifted = mup.shift(H)
    assert (shifted.a, shifted.b, shifted.c) == ((0, 1), (0, 0), -1)
    assert mf.equivalent(mup) and mup.equivalent(mf)
    assert not mf.equivalent(preset("NTK", 1))


def test_sp_and_ntk_are_not_equivalent_under_global_c():
    # NTK = SP with LR 1/n on some layers only: a per-layer difference, not a global shift.
    assert not preset("SP", 2, c=1).equivalent(preset("NTK", 2))
    assert not preset("muP", 2).equivalent(preset("NTK", 2))


def test_per_layer_r_sgd_prop_5_3():
    # SP with LR 1/n, L = 3: r_l = min(1/2, 1) + 1 - 1 + 2*0 + I(l = 1) = (3/2, 1/2, 1/2).
    assert preset("SP", 3, c=1).r_layers == (sp.Rational(3, 2), H, H)
    # NTK: min(1/2, 1) + 0 - 1 + (1, 1, 1) = 1/2 in every layer (uniform).
    assert preset("NTK", 3).r_layers == (H, H, H)


def test_trivial_parametrization():
    # muP init with LR n^{-1}: a+b+r = 1 + 1 > 1 and 2a+c = 2 > 1: stable, f never moves.
    p = preset("muP", 2, c=1)
    assert p.r == 1
    assert p.stable is True and p.nontrivial is False
    assert p.regime == "trivial"
    assert p.kernel_regime is False and p.feature_learning is False


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_readout_too_large_at_init_is_unstable_for_any_lr(optimizer):
    # a_{L+1} + b_{L+1} = 1/4 < 1/2: f_0 ~ n^{1/4} blows up at init (TP4 Thm 3.3), even with a
    # tiny learning rate n^{-3}, where every training condition holds.
    p = ABC((0, 0), (0, sp.Rational(1, 4)), 3, optimizer)
    assert p.stable is False
    failing = [c.expression_text for c in p.why() if c.holds is False]
    assert "a_{L+1} + b_{L+1} >= 1/2" in failing
    with pytest.raises(TheoryError, match="initialisation"):
        max_stable_lr_exponent(p.a, p.b, optimizer)


def test_per_layer_sgd_c_equal_entries_match_global():
    g, per = preset("SP", 3, c=1), ABC((0,) * 4, layers(0, H, H, 3), (1, 1, 1, 1))
    assert per.r == g.r and per.r_layers == g.r_layers
    assert per.stable == g.stable and per.nontrivial == g.nontrivial
    assert per.equivalent(g)


def test_per_layer_sgd_ntk_equals_sp_with_layerwise_lr():
    # SP init with LR Theta(1) on the input layer and 1/n elsewhere has NTK's r_l (1/2 each).
    p = ABC((0, 0, 0), (0, H, H), (0, 1, 1))
    assert p.r_layers == (H, H)
    assert p.regime == "kernel"


# ----------------------------------------------------------------------------- Adam (TP4b)

@pytest.mark.parametrize("L", [1, 2, 4])
def test_adam_mup_def_2_5_1(L):
    p = preset("muP", L, "adam")
    assert p.a == (0,) * L + (1,)
    assert p.b == (0,) + (H,) * (L - 1) + (0,)
    assert p.c_layers == layers(0, 1, 0, L)
    assert p.r == 0
    assert (p.stable, p.nontrivial, p.feature_learning) == (True, True, True)
    assert p.regime == "feature learning"
    # Adam layers decouple, and muP's LRs are exactly the largest stable ones.
    assert max_stable_lr_exponent(p.a, p.b, "adam", per_layer=True) == layers(0, 1, 0, L)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_adam_sp_lr_theta1_unstable(L):
    p = preset("SP", L, "adam")
    assert p.c == 0
    assert p.stable is False and p.regime == "unstable"


@pytest.mark.parametrize("L", [2, 3])
def test_adam_sp_all_c_one_unstable_remark_2_2_7(L):
    # TP4b Remark 2.2.7 calls SP + Adam with every c = 1 stable and feature learning, but its
    # own Thm 2.8.12 fails: a_{L+1} + b_{L+1} + r = 1/2 + 0 < 1 (logits grow like n^{1/2}).
    # We follow the theorem, as the sheet says.
    p = preset("SP", L, "adam", c=1)
    assert p.r == 0
    assert p.stable is False
    assert p.feature_learning is False
    assert p.regime == "unstable"
    failing = [c for c in p.why() if c.holds is False and c.name == "stable"]
    assert [c.expression_text for c in failing] == ["a_{L+1} + b_{L+1} + r >= 1"]
    assert failing[0].value == H and failing[0].source == "TP4b Thm 2.8.12"


def test_adam_sp_needs_n_to_minus_3_2_on_hidden_layers():
    # TP4b stability by hand for SP init: input c_1 >= 1/2 (A + r_1 >= 1, A = 1/2),
    # hidden c_l >= 3/2, readout c_{L+1} >= max(1 - 0, 1/2) = 1.
    assert max_stable_lr_exponent((0, 0, 0), (0, H, H), "adam", per_layer=True) == (
        H, sp.Rational(3, 2), 1)
    assert max_stable_lr_exponent((0, 0, 0), (0, H, H), "adam") == sp.Rational(3, 2)
    assert ABC((0, 0, 0), (0, H, H), (H, sp.Rational(3, 2), 1), "adam").stable is True


@pytest.mark.parametrize("L", [1, 2, 3])
def test_adam_ntk_choice(L):
    p = preset("NTK", L, "adam")
    assert (p.a, p.b) == (layers(0, H, H, L), (0,) * (L + 1))
    assert p.r == H and p.r_layers == (H,) * L
    assert p.regime == "kernel"


def test_adam_mf_is_adam_mup():
    mf = preset("MF", 1, "adam")
    assert (mf.a, mf.b) == ((0, 1), (0, 0))
    assert mf.equivalent(preset("muP", 1, "adam")) and mf.regime == "feature learning"


# ----------------------------------------------------------------------------- symmetry

rationals = st.fractions(min_value=-3, max_value=3, max_denominator=6)


@st.composite
def abcs(draw, optimizer, per_layer_c, init_ok):
    L = draw(st.integers(1, 4))
    a = draw(st.lists(rationals, min_size=L + 1, max_size=L + 1))
    if init_ok:  # satisfy the initialisation conditions so stability is not trivially False
        b = [-a[0]] + [Fraction(1, 2) - x for x in a[1:-1]]
        b.append(Fraction(1, 2) - a[-1] + draw(st.fractions(0, 1, max_denominator=4)))
    else:
        b = draw(st.lists(rationals, min_size=L + 1, max_size=L + 1))
    c = draw(st.lists(rationals, min_size=L + 1, max_size=L + 1) if per_layer_c else rationals)
    return ABC(a, b, c, optimizer)


def _invariants(p):
    return (p.r, p.r_layers, p.stable, p.nontrivial, p.feature_learning, p.kernel_regime, p.regime)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("per_layer_c", [False, True])
@FAST
@given(data=st.data(), t=rationals)
def test_symmetry_invariance(optimizer, per_layer_c, data, t):
    p = data.draw(abcs(optimizer, per_layer_c, data.draw(st.booleans())))
    q = p.shift(t)
    assert _invariants(q) == _invariants(p)
    assert q.canonical() == p.canonical()
    assert q.equivalent(p) and p.equivalent(q)
    assert p.canonical().a[0] == 0  # the gauge: input multiplier exponent zero
    # the shift rule itself (TP4 Eq. 5 / TP4b Prop 2.2.3)
    k = 2 if optimizer == "sgd" else 1
    assert q.a[0] == p.a[0] + t and q.b[-1] == p.b[-1] - t
    assert q.c_layers[0] == p.c_layers[0] - k * sp.Rational(t.numerator, t.denominator)


@FAST
@given(data=st.data())
def test_dichotomy_and_readout_nonzero_init(data):
    p = data.draw(abcs(data.draw(st.sampled_from(["sgd", "adam"])), data.draw(st.booleans()), True))
    if p.stable and p.nontrivial:  # TP4 Cor 3.9: exactly one of the two regimes
        assert p.feature_learning != p.kernel_regime
    if p.feature_learning and p.optimizer == "sgd":
        assert p.a[-1] + p.b[-1] >= 1  # TP4 Cor 3.10: f_0 -> 0


def test_sgd_and_adam_shift_differ():
    p = preset("muP", 2)
    assert p.shift(1).c == -2
    assert preset("muP", 2, "adam").shift(1).c_layers == (-1, 0, -1)


# ----------------------------------------------------------------------------- UP_r (TP4 App G)

@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("r", [0, sp.Rational(1, 8), sp.Rational(1, 4), sp.Rational(3, 8), H])
@pytest.mark.parametrize("L", [1, 2, 3])
def test_uniform_r(optimizer, r, L):
    p = uniform(r, L, optimizer)
    assert p.r == r and p.r_layers == (r,) * L
    assert p.stable is True and p.nontrivial is True
    assert p.regime == ("feature learning" if r == 0 else "kernel")


@pytest.mark.parametrize("L", [1, 2, 4])
def test_uniform_endpoints(L):
    assert uniform(0, L).equivalent(preset("muP", L))
    assert uniform(H, L).equivalent(preset("NTK", L))
    assert uniform("1/2", L).equivalent(preset("NTK", L))
    assert not uniform(sp.Rational(1, 4), L).equivalent(preset("NTK", L))
    assert uniform(0, L, "adam").equivalent(preset("muP", L, "adam"))
    assert uniform(H, L, "adam").equivalent(preset("NTK", L, "adam"))


# ----------------------------------------------------------------------------- max stable LR

@pytest.mark.parametrize("L", [2, 3, 5])
def test_max_stable_lr_sp_sgd_is_one_over_n(L):
    assert max_stable_lr_exponent((0,) * (L + 1), layers(0, H, H, L)) == 1
    assert max_stable_lr_exponent((0,) * (L + 1), layers(0, H, H, L), "SGD") == 1


@pytest.mark.parametrize("L", [1, 2, 3])
def test_max_stable_lr_mup_ntk_zero(L):
    assert max_stable_lr_exponent(layers(-H, 0, H, L), (H,) * (L + 1)) == 0
    assert max_stable_lr_exponent(layers(0, H, H, L), (0,) * (L + 1)) == 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@FAST
@given(data=st.data())
def test_max_stable_lr_is_the_threshold(optimizer, data):
    p = data.draw(abcs(optimizer, False, True))
    c_star = max_stable_lr_exponent(p.a, p.b, optimizer)
    assert ABC(p.a, p.b, c_star, optimizer).stable is True
    assert ABC(p.a, p.b, c_star + 1, optimizer).stable is True
    assert ABC(p.a, p.b, c_star - sp.Rational(1, 100), optimizer).stable is False


def test_max_stable_lr_errors():
    with pytest.raises(TheoryError, match="initialisation"):
        max_stable_lr_exponent((0, 0, 0), (0, 0, 0))  # hidden a + b = 0, not 1/2
    with pytest.raises(TheoryError, match="alignment"):
        max_stable_lr_exponent((0, 0, 0), (0, H, H), "sgd", alignment="sideways")


# ----------------------------------------------------------------------------- symbolic

def test_symbolic_c():
    c = sp.Symbol("c")
    p = ABC((0, 0, 0), (0, "1/2", "1/2"), c)
    assert isinstance(p.r, sp.Expr) and c in p.r.free_symbols
    assert p.r.subs(c, 0) == -1 and p.r.subs(c, 1) == H
    assert isinstance(p.stable, sp.logic.boolalg.Boolean) and not isinstance(p.stable, bool)
    assert p.stable.subs(c, 1) == sp.true and p.stable.subs(c, 0) == sp.false
    assert p.regime == "undetermined"
    assert "undetermined" in str(p)


def test_symbolic_positive_lr_exponent_and_shift():
    t, c = sp.Symbol("t"), sp.Symbol("c", positive=True)
    p = preset("muP", 2, c=c)
    assert p.r == c  # min(1, 1 + c) + c - 1 + 0 with c > 0
    assert p.shift(t).r == p.r
    assert p.shift(t).canonical() == p.canonical()
    a1 = sp.Symbol("a1")
    q = ABC((a1, 0, H), (H, H, H), 0)
    assert q.canonical().a[0] == 0 and isinstance(q.r, sp.Expr)


def test_max_stable_lr_symbolic():
    s = sp.Symbol("s")  # readout init exponent above 1/2
    c_star = max_stable_lr_exponent((0, 0, 0), (0, H, H + s))
    assert c_star.subs(s, 0) == 1
    assert c_star.subs(s, H) == 1  # muP-like readout init with SP multipliers: c >= 1 still


# ----------------------------------------------------------------------------- why / str

def test_why_records():
    recs = preset("muP", 2).why()
    assert all(isinstance(r, Condition) for r in recs)
    assert all(r.holds is True for r in recs if r.name.startswith("stable"))
    texts = [r.expression_text for r in recs]
    for expected in ["a_1 + b_1 = 0", "a_2 + b_2 = 1/2", "a_{L+1} + b_{L+1} >= 1/2", "r >= 0",
                     "2 a_{L+1} + c >= 1", "a_{L+1} + b_{L+1} + r >= 1", "r = 0", "r > 0"]:
        assert expected in texts
    assert {r.source for r in recs} >= {"TP4 Thm 3.3", "TP4 Thm 3.4", "TP4 Thm 3.6", "TP4 Thm 3.8"}
    adam = {r.expression_text for r in preset("muP", 2, "adam").why()}
    assert "c_{L+1} - b_{L+1} >= 0" in adam and "a_{L+1} + c_{L+1} = 1" in adam


def test_str_is_a_derivation():
    text = str(preset("SP", 2))
    assert "r = min_l r_l = -1" in text and "FAIL" in text and text.rstrip().endswith("unstable")
    assert str(preset("muP", 2)).rstrip().endswith("feature learning")


# ----------------------------------------------------------------------------- inputs / errors

def test_conversions():
    p = ABC([0.0, "0", Fraction(1, 2)], [0, 0.5, "1/2"], "0.5")
    assert p.a == (0, 0, H) and p.b == (0, H, H) and p.c == H
    assert all(isinstance(x, sp.Rational) for x in p.a + p.b)
    assert ABC((0, 0), (0, 0.1), 0).b[1] == sp.Rational(1, 10)
    assert hash(p) == hash(ABC((0, 0, H), (0, H, H), H))


@pytest.mark.parametrize("kwargs, match", [
    (dict(a=(0, 0, 0), b=(0, 0), c=0), "entries"),
    (dict(a=(0,), b=(0,), c=0), "L >= 1"),
    (dict(a=(0, 0, 0), b=(0, 0, 0), c=(0, 0)), "per-layer c"),
    (dict(a=(0, "x+", 0), b=(0, 0, 0), c=0), "a_2"),
    (dict(a=(0, sp.I, 0), b=(0, 0, 0), c=0), "real"),
    (dict(a=(0, 0, 0), b=(0, 0, 0), c=0, optimizer="newton"), "supported"),
])
def test_bad_abc(kwargs, match):
    with pytest.raises(TheoryError, match=match):
        ABC(**kwargs)


def test_bad_presets():
    with pytest.raises(TheoryError, match="unknown preset"):
        preset("XYZ")
    with pytest.raises(TheoryError, match="L = 1"):
        preset("MF", L=2)
    with pytest.raises(TheoryError, match="L must be"):
        preset("muP", L=0)
    with pytest.raises(TheoryError, match="1/2"):
        uniform(1, 2)
    with pytest.raises(ValueError):  # TheoryError is a ValueError and a TensorprogError
        preset("muP", optimizer="shampoo")
    assert issubclass(TheoryError, TensorprogError)


def test_preset_names_case_insensitive():
    assert preset("mup", 2) == preset("muP", 2) == preset("MUP", 2)
    assert preset("sp", 3, c=1) == preset("SP", 3, c=1)


# ----------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("name, cls", [
    ("SGD", "sgd"), ("sgd", "sgd"), ("SGD with momentum", "sgd"), ("Nesterov", "sgd"),
    ("Adam", "adam"), ("AdamW", "adam"), ("adamw", "adam"), ("RMSprop", "adam"),
    ("Adagrad", "adam"), ("signSGD", "adam"), ("Lion", "adam"), ("Adafactor", "adam"),
])
def test_optimizer_names(name, cls):
    assert optimizer_class(name) == cls


def test_optimizer_torch():
    w = [torch.nn.Parameter(torch.zeros(2))]
    assert optimizer_class(torch.optim.SGD) == "sgd"
    assert optimizer_class(torch.optim.SGD(w, lr=0.1, momentum=0.9, nesterov=True)) == "sgd"
    assert optimizer_class(torch.optim.AdamW) == "adam"
    assert optimizer_class(torch.optim.Adam(w)) == "adam"
    assert optimizer_class(torch.optim.RMSprop) == "adam"

    class MyAdam(torch.optim.Adam):
        pass

    assert optimizer_class(MyAdam) == "adam"
    class Unknown(torch.optim.Optimizer):
        pass

    with pytest.raises(TheoryError, match="register_optimizer"):
        optimizer_class(Unknown)
    assert ABC((0, 0), (0, 0), 0, torch.optim.AdamW).optimizer == "adam"


def test_optimizer_table():
    assert set(OPTIMIZER_CLASSES.values()) == {"sgd", "adam"}
    for name in ["SGD", "Nesterov", "Adam", "AdamW", "RMSprop", "Adagrad", "SignSGD", "Lion",
                 "Adafactor"]:
        assert name in OPTIMIZER_CLASSES


# ----------------------------------------------------------------------------- zero init


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_zero_initialised_readout_keeps_mup(optimizer):
    """TP5 App. D.2: muP with the readout initialised at zero is still muP (stable, feature
    learning): the output starts at 0 and moves by Theta(1) through the readout's update."""
    from tensorprog.theory.abc import ABC, preset

    m = preset("muP", L=2, optimizer=optimizer)
    for zero in ("zero", sp.oo):
        z = ABC(m.a, m.b[:-1] + (zero,), m.c, optimizer)
        assert z.b[-1] == sp.oo
        assert z.stable is True and z.nontrivial is True and z.feature_learning is True
        assert z.r == m.r
    with pytest.raises(Exception, match="not a real exponent"):
        ABC(m.a, m.b, m.c[:-1] + (sp.oo,) if isinstance(m.c, tuple) else sp.oo, optimizer)
