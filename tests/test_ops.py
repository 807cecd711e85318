"""The op table's rules against Monte Carlo, on hand-built inputs (no torch.export).

Each test builds the input a rule sees (``Sizes`` and dims), samples tensors of that size at
growing widths, measures mean |output| and fits its log-log slope. The expected value is the
measurement, an independent computation: the rule's exponent must match it within 0.1 (central
limit and law of large numbers, TP5 Table 14: a sum of n independent mean-zero terms grows like
sqrt(n), of n correlated terms like n).
"""
import math

import numpy as np
import pytest
import sympy as sp
import torch

from tensorprog.ops import SPECS, Op, Sizes, Undetermined, lookup
from tensorprog.ops.core import OpSpec
from tensorprog.ops.registry import register
from tensorprog.predict.engine import _unlisted

R = sp.Rational
WIDTHS = (256, 1024, 4096)
G = torch.Generator().manual_seed(0)


def measured_slope(sample) -> float:
    """Slope of log mean|sample(n)| against log n."""
    ys = [float(sample(n).abs().mean()) for n in WIDTHS]
    return float(np.polyfit(np.log(WIDTHS), np.log(ys), 1)[0])


def normal(*shape, std=1.0):
    return torch.randn(*shape, generator=G, dtype=torch.float64) * std


def run(name, ins, in_dims, out_dims, args=(), scalars=None, weight=None, pos=None, readout=False):
    attrs = {"op": name, "args": list(args), "kwargs": {}, "dims": out_dims, "scalars": scalars or {},
             "tags": ()}
    op = Op(name=name, attrs=attrs, ins=ins, in_names=[f"in{i}" for i in range(len(ins))],
            pos=pos or [str(i) for i in range(len(ins))], in_dims=in_dims, weight=weight,
            readout=readout)
    return lookup(attrs).forward(op)


def agrees(rule_exp, sample, tol=0.1):
    slope = measured_slope(sample)
    assert abs(slope - float(rule_exp)) < tol, (rule_exp, slope)


ONE, N = sp.Integer(0), sp.Integer(1)  # dim exponents: finite, width


# ----------------------------------------------------------------------------- contractions


def test_linear_with_an_iid_weight_is_clt():
    x, _, _ = run("linear", [Sizes(x=0, src=frozenset({"z"})), Sizes(x=-R(1, 2), src=frozenset({"W"}))],
                  [(ONE, N), (N, N)], (ONE, N), weight="1")
    agrees(x, lambda n: normal(64, n) @ normal(n, n, std=n ** -0.5).T)


def test_einsum_reads_the_contracted_letters():
    x, _, _ = run("einsum", [Sizes(x=0, src=frozenset({"z"})), Sizes(x=-R(1, 2), src=frozenset({"W"}))],
                  [(ONE, ONE, N), (ONE, N)], (ONE, ONE, N), args=("bti,oi->bto", ["%z", "%W"]),
                  weight="1.1", pos=["1.0", "1.1"])
    assert x == 0
    agrees(x, lambda n: torch.einsum("bti,oi->bto", normal(2, 3, n), normal(8, n, std=n ** -0.5)))


@pytest.mark.parametrize("same", [False, True])
def test_two_activations_contract_clt_when_independent_lln_when_not(same):
    q = Sizes(x=0, src=frozenset({"q"}))
    k = q if same else Sizes(x=0, src=frozenset({"k"}))
    x, _, _ = run("matmul", [q, k], [(ONE, N), (N, ONE)], (ONE, ONE))
    assert x == (1 if same else R(1, 2))

    def sample(n):  # one q.k per row
        a = normal(64, n)
        return (a * (a if same else normal(64, n))).sum(-1)
    agrees(x, sample)


def test_outer_product_sizes_multiply():
    x, _, _ = run("outer", [Sizes(x=R(1, 2)), Sizes(x=0)], [(N,), (ONE,)], (N, ONE))
    agrees(x, lambda n: torch.outer(normal(n, std=n ** 0.5), normal(256)))


# ----------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("centered", [True, False])
def test_sum_over_the_width_is_clt_for_centered_terms_lln_otherwise(centered):
    x, _, _ = run("sum", [Sizes(x=0, centered=centered)], [(ONE, N)], (ONE,), args=("%z", [-1]))
    assert x == (R(1, 2) if centered else 1)
    agrees(x, lambda n: (normal(64, n) if centered else normal(64, n).abs()).sum(-1))


@pytest.mark.parametrize("centered", [True, False])
def test_mean_over_the_width(centered):
    x, _, _ = run("mean", [Sizes(x=0, centered=centered)], [(ONE, N)], (ONE,), args=("%z", [-1]))
    assert x == (-R(1, 2) if centered else 0)
    agrees(x, lambda n: (normal(64, n) if centered else torch.relu(normal(64, n))).mean(-1))


def test_multiply_then_sum_readout_is_clt_at_init():
    """(z * v).sum(-1) with v an independent mean-zero weight: the product is centered."""
    z, v = Sizes(x=0, src=frozenset({"z"})), Sizes(x=-R(1, 2), src=frozenset({"v"}), centered=True)
    px, pdx, extra = run("mul", [z, v], [(ONE, N), (N,)], (ONE, N))
    x, _, _ = run("sum", [Sizes(x=px, dx=pdx, centered=extra["centered"])], [(ONE, N)], (ONE,),
                  args=("%p", [-1]))
    assert x == 0
    agrees(x, lambda n: (torch.relu(normal(64, n)) * normal(64, n, std=n ** -0.5)).sum(-1))


def test_l2_norm_and_variance():
    x, _, _ = run("linalg_vector_norm", [Sizes(x=0)], [(ONE, N)], (ONE,), args=("%z", 2, [-1]))
    agrees(x, lambda n: torch.linalg.vector_norm(normal(64, n), dim=-1))
    x, _, _ = run("var", [Sizes(x=R(1, 2))], [(ONE, N)], (ONE,), args=("%z", [-1]))
    agrees(x, lambda n: normal(64, n, std=n ** 0.5).var(-1))


def test_softmax_over_the_width_spreads_its_mass():
    x, _, _ = run("softmax", [Sizes(x=0)], [(ONE, N)], (ONE, N), args=("%z", -1))
    assert x == -1
    agrees(x, lambda n: torch.softmax(normal(64, n), -1))


def test_layer_norm_is_order_one_whatever_its_input():
    x, _, _ = run("layer_norm", [Sizes(x=R(1, 2))], [(ONE, N)], (ONE, N), args=("%z", [0]))
    agrees(x, lambda n: torch.nn.functional.layer_norm(normal(64, n, std=n ** 0.5), (n,)))


# ----------------------------------------------------------------------------- pointwise


def test_multiplier_in_place_is_a_multiplier():
    s = {1: {"values": [1 / 16, 1 / 32], "exp": -R(1, 2)}}
    for name in ("mul", "mul_"):
        x, _, _ = run(name, [Sizes(x=0)], [(ONE, N)], (ONE, N), scalars=s)
        assert x == -R(1, 2)
        assert SPECS[name].multiplier
    assert SPECS["div_"].multiplier and SPECS["div_"].sign == -1


def test_bounded_maps_saturate():
    x, _, _ = run("tanh", [Sizes(x=R(1, 2))], [(ONE, N)], (ONE, N))
    agrees(x, lambda n: torch.tanh(normal(64, n, std=n ** 0.5)))


def test_exp_of_a_growing_decay_is_bounded_and_of_a_growth_undetermined():
    x, _, _ = run("exp", [Sizes(x=R(1, 2), sign=-1)], [(ONE, N)], (ONE, N))
    assert x == 0
    slope = measured_slope(lambda n: torch.exp(-normal(64, n, std=n ** 0.5).abs()))
    assert slope < float(x) + 0.1  # bounded: an upper bound (it may vanish)
    with pytest.raises(Undetermined, match="blows up"):
        run("exp", [Sizes(x=R(1, 2))], [(ONE, N)], (ONE, N))


def test_scalar_base_power_is_exp_like():
    """RoPE / sinusoidal frequencies: base ** (arange(n) / n) is Theta(1)."""
    x, _, _ = run("pow", [Sizes(x=0, sign=1)], [(N,)], (N,), args=(10000.0, "%f"))
    agrees(x, lambda n: 10000.0 ** (torch.arange(n, dtype=torch.float64) / n))


def test_power_of_a_change_that_outgrows_the_init_value():
    """(z_0 + dz)^p - z_0^p: first order (p - 1) x + dx while dz is at most z_0; once dz
    outgrows z_0 (a Theta(1) update of a vanishing tensor, a bias trained from zero) the new
    value's power takes over: dz^2 for a square (not 2 z_0 dz), and z_0^p for rsqrt (a grown
    tensor's rsqrt falls from z_0^-1/2 to the smaller dz^-1/2)."""
    def change(op, p, z0, dz):
        def sample(n):
            a = z0(n)
            return op(a + dz(n)) - op(a)
        return sample
    _, dx, _ = run("pow", [Sizes(x=-R(1, 2), dx=0)], [(ONE, N)], (ONE, N), args=("%z", 2))
    assert dx == 0
    agrees(dx, change(torch.square, 2, lambda n: normal(64, n, std=n ** -0.5),
                      lambda n: normal(64, n, std=0.5)))
    _, dx, _ = run("rsqrt", [Sizes(x=-1, dx=0, sign=1)], [(ONE, N)], (ONE, N))
    assert dx == R(1, 2)
    agrees(dx, change(torch.rsqrt, -0.5, lambda n: normal(64, n).abs() / n,
                      lambda n: 1 + normal(64, n).abs()))
    _, dx, _ = run("pow", [Sizes(x=0, dx=-1)], [(ONE, N)], (ONE, N), args=("%z", 2))
    assert dx == -1  # a small change: first order
    agrees(dx, change(torch.square, 2, lambda n: normal(64, n), lambda n: normal(64, n, std=1 / n)))


def test_division_by_a_tensor():
    x, _, _ = run("div", [Sizes(x=0), Sizes(x=R(1, 2))], [(ONE, N), (ONE, N)], (ONE, N))
    assert x == -R(1, 2)


def test_attention_logits_of_independent_q_and_k_with_the_default_scale():
    q, k = Sizes(x=0, src=frozenset({"q"})), Sizes(x=0, src=frozenset({"k"}))
    v = Sizes(x=0, src=frozenset({"v"}))
    _, _, extra = run("scaled_dot_product_attention", [q, k, v], [(ONE, ONE, N)] * 3, (ONE, ONE, N))
    assert extra["logits"][0] == 0
    agrees(extra["logits"][0], lambda n: normal(64, n) @ normal(64, n).T / math.sqrt(n))


# ----------------------------------------------------------------------------- the table itself


def test_an_op_without_an_entry_is_undetermined_where_a_width_dim_enters():
    attrs = {"op": "cumprod", "args": [], "kwargs": {}, "dims": (ONE, N), "scalars": {}, "tags": ()}
    assert lookup(attrs) is None
    op = Op("cumprod", attrs, [Sizes(x=0)], ["z"], ["0"], [(ONE, N)])
    with pytest.raises(Undetermined, match="no entry"):
        _unlisted(None, op)
    finite = Op("cumprod", {**attrs, "dims": (ONE, ONE)}, [Sizes(x=0)], ["z"], ["0"], [(ONE, ONE)])
    assert _unlisted(None, finite)[0] == 0  # a finite function of Theta(1) inputs


def test_pointwise_tag_is_the_nonlin_rule_for_order_one_inputs_only():
    attrs = {"op": "special_i0e", "args": [], "kwargs": {}, "dims": (ONE, N), "scalars": {},
             "tags": ("pointwise",)}
    spec = lookup(attrs)
    assert spec is not None and spec.names == ("<pointwise>",)
    assert spec.forward(Op("i0e", attrs, [Sizes(x=0)], ["z"], ["0"], [(ONE, N)]))[0] == 0
    with pytest.raises(Undetermined, match="Nonlin"):
        spec.forward(Op("i0e", attrs, [Sizes(x=R(1, 2))], ["z"], ["0"], [(ONE, N)]))


def test_an_op_has_one_entry():
    with pytest.raises(ValueError, match="two entries"):
        register(OpSpec(("linear",), lambda op: None, lambda op, g: None))


# ----------------------------------------------------------------------------- more families


def test_grouped_mm_contracts_each_experts_matrix():
    """MoE experts: input (S, n) against weight (E, n, n) with E finite: CLT over n."""
    x, _, _ = run("grouped_mm_fallback", [Sizes(x=0, src=frozenset({"z"})),
                                          Sizes(x=-R(1, 2), src=frozenset({"W"})), Sizes()],
                  [(ONE, N), (ONE, N, N), (ONE,)], (ONE, N), weight="1")
    assert x == 0

    def sample(n):
        w = normal(2, n, n, std=n ** -0.5)
        z = normal(64, n)
        return torch.cat([z[:32] @ w[0], z[32:] @ w[1]])
    agrees(x, sample)


def test_baddbmm_logits_carry_their_alpha():
    """bloom: baddbmm(alibi, q, k^T, alpha=1/sqrt(d)): independent q, k over d -> Theta(1)."""
    s = {"alpha": {"values": [1 / 8, 1 / 16], "exp": -R(1, 2)}}
    q, k = Sizes(x=0, src=frozenset({"q"})), Sizes(x=0, src=frozenset({"k"}))
    x, _, _ = run("baddbmm", [Sizes(x=0), q, k], [(ONE, ONE, ONE), (ONE, ONE, N), (ONE, N, ONE)],
                  (ONE, ONE, ONE), scalars=s)
    assert x == 0
    agrees(x, lambda n: torch.baddbmm(torch.zeros(8, 4, 4, dtype=torch.float64), normal(8, 4, n),
                                      normal(8, n, 4), alpha=n ** -0.5))


def test_conv_contracts_channels_and_kernel():
    x, _, _ = run("conv1d", [Sizes(x=0, src=frozenset({"z"})), Sizes(x=-R(1, 2), src=frozenset({"W"}))],
                  [(ONE, N, ONE), (N, N, ONE)], (ONE, N, ONE), weight="1")
    assert x == 0
    agrees(x, lambda n: torch.nn.functional.conv1d(normal(4, n, 16), normal(n, n, 3, std=(3 * n) ** -0.5)))


def test_cumsum_over_a_width_dim():
    x, _, _ = run("cumsum", [Sizes(x=0, centered=True)], [(ONE, N)], (ONE, N), args=("%z", -1))
    assert x == R(1, 2)  # the last partial sums dominate: sqrt(n)
    agrees(x, lambda n: torch.cumsum(normal(64, n), -1), tol=0.15)


def test_log_of_order_one_positive_input():
    x, _, _ = run("log", [Sizes(x=0, sign=1)], [(ONE, N)], (ONE, N))
    agrees(x, lambda n: torch.log(normal(64, n).abs() + 0.5))


def test_masked_fill_keeps_a_decays_sign_for_exp():
    z = Sizes(x=R(1, 2), sign=-1)
    _, _, extra = run("masked_fill", [z, Sizes()], [(ONE, N), (ONE, N)], (ONE, N),
                      args=("%z", "%m", float("-inf")))
    assert extra["sign"] == -1
    x, _, _ = run("exp", [Sizes(x=R(1, 2), sign=extra["sign"])], [(ONE, N)], (ONE, N))
    assert x == 0


def test_an_epsilon_added_to_a_vanishing_tensor_is_taken_in_the_eps_to_zero_limit():
    """rsqrt(mean(x^2) + 1e-6): while the tensor is well above the epsilon (here ~ 1/n, widths
    to 4096) the tensor sets the size; the eps -> 0 limit is the choice (it stops holding only
    once C n^e falls near eps)."""
    eps = {1: {"values": [1e-6, 1e-6], "exp": sp.Integer(0)}}
    x, _, _ = run("add", [Sizes(x=-1)], [(ONE, ONE)], (ONE, ONE), scalars=eps)
    assert x == -1
    agrees(x, lambda n: normal(256, 1, std=1 / n).abs() + 1e-6, tol=0.15)
    one = {1: {"values": [1.0, 1.0], "exp": sp.Integer(0)}}
    assert run("add", [Sizes(x=-1)], [(ONE, ONE)], (ONE, ONE), scalars=one)[0] == 0  # x + 1
    zero = Sizes(x=-sp.oo)
    assert run("add", [zero], [(ONE, ONE)], (ONE, ONE), scalars=eps)[0] == 0  # eps is all there is


def test_a_softmax_by_hand_is_a_decay():
    """exp(z - logsumexp(z)) and exp(z - max(z)): the argument is never positive, so exp of a
    growing z stays bounded (it is a softmax)."""
    z = Sizes(x=R(1, 2), ident="z")
    for reducer in ("logsumexp", "amax"):
        _, _, extra = run(reducer, [z], [(ONE, N)], (ONE, ONE), args=("%z", [-1]))
        lse = Sizes(x=R(1, 2), upper_of=frozenset(extra["upper_of"]))
        _, _, diff = run("sub", [z, lse], [(ONE, N), (ONE, ONE)], (ONE, N))
        assert diff["sign"] == -1
        x, _, _ = run("exp", [Sizes(x=R(1, 2), sign=diff["sign"])], [(ONE, N)], (ONE, N))
        def largest(n):  # the largest entry of exp(z - logsumexp(z)) for z ~ n^1/2: <= 1
            zz = normal(64, n, std=n ** 0.5)
            return (zz - zz.logsumexp(-1, keepdim=True)).exp().amax(-1)
        assert x == 0 and measured_slope(largest) < 0.1  # bounded, though z grows
    assert run("sub", [z, Sizes(x=R(1, 2))], [(ONE, N), (ONE, N)], (ONE, N))[2]["sign"] == 0


def test_min_with_an_epsilon_bound_is_nonpositive():
    """xIELU: expm1(min(x, eps)) with eps a tiny buffer: bounded whatever x's size."""
    _, _, extra = run("min", [Sizes(x=R(1, 2)), Sizes(x=0, value=-1e-6, sign=-1)],
                      [(ONE, N), ()], (ONE, N))
    assert extra["sign"] == -1
    _, _, extra = run("minimum", [Sizes(x=R(1, 2)), Sizes(x=0, value=1e-6, sign=1)], [(ONE, N), ()],
                      (ONE, N))
    assert extra["sign"] == -1
    agrees(0, lambda n: torch.expm1(torch.clamp_max(normal(64, n, std=n ** 0.5), 1e-6)) - 0.5, tol=0.15)
