"""Tests for tensorprog.limits: NNGP / NTK recursions and finite-width convergence.

Expected values come from closed forms worked out here by hand, from seeded Monte Carlo with
numpy, or from independent torch computations (autograd NTK); never from the code under test.
"""

import math

import numpy as np
import pytest
import torch

from tensorprog.theory.limits import (
    NONLINEARITIES,
    Convergence,
    convergence,
    empirical_kernel,
    ntk_kernel,
    nngp_kernel,
)

# two generic inputs in R^3 and a small batch of 8 in R^5
X2 = np.array([[1.0, 0.2, -0.5], [0.3, -1.0, 0.8]])
X8 = np.random.default_rng(1).standard_normal((8, 5))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # tiny matmuls: the thread pool costs more than it saves on a shared 2-core box
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _first_layer(X, sw, sb):
    X = np.asarray(X, dtype=float)
    return sw ** 2 * (X @ X.T) / X.shape[1] + sb ** 2


def _mc_pair(rng, K, size=1_000_000):
    """Samples (u, v) ~ N(0, K) for a 2x2 covariance K, via numpy."""
    uv = rng.multivariate_normal(np.zeros(2), K, size=size, method="eigh")
    return uv[:, 0], uv[:, 1]


def _mc_check(samples, expected, n_sigma=5.0):
    se = samples.std(ddof=1) / math.sqrt(len(samples))
    assert abs(samples.mean() - expected) < n_sigma * se, (samples.mean(), expected, se)


# ---------------------------------------------------------------------------------------------
# NNGP recursion: closed forms
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 2, 5, 10])
@pytest.mark.parametrize("sw,sb", [(math.sqrt(2.0), 0.0), (1.3, 0.4)])
def test_relu_diagonal_recursion(depth, sw, sb):
    kernels = nngp_kernel(X8, depth, "relu", sw, sb)
    assert len(kernels) == depth
    q = sw ** 2 * np.sum(X8 ** 2, axis=1) / X8.shape[1] + sb ** 2      # q^1
    for K in kernels:
        np.testing.assert_allclose(np.diag(K), q, rtol=1e-12)
        q = sw ** 2 * q / 2 + sb ** 2                                     # q^{l+1}


def test_relu_he_init_preserves_norm():
    # s_w^2 = 2, s_b = 0: q^{l+1} = q^l, so unit-norm-per-coordinate inputs stay at 1
    X = np.array([[1.0, -1.0], [math.sqrt(2.0), 0.0]])
    K = nngp_kernel(X, 6, "relu", math.sqrt(2.0), 0.0)[-1]
    np.testing.assert_allclose(np.diag(K), [2.0, 2.0], rtol=1e-12)


def test_relu_orthogonal_pair_by_hand():
    # x = sqrt(2) e1, x' = sqrt(2) e2 in d = 2, s_w = 1, s_b = 0: K^1 = I.
    X = math.sqrt(2.0) * np.eye(2)
    K1, K2, K3 = nngp_kernel(X, 3, "relu", 1.0, 0.0)
    np.testing.assert_allclose(K1, np.eye(2), atol=1e-15)
    # theta = pi/2: E = sqrt(1 * 1)/(2 pi) (1 + 0) = 1/(2 pi); diagonal 1/2
    np.testing.assert_allclose(K2, [[0.5, 1 / (2 * math.pi)], [1 / (2 * math.pi), 0.5]], atol=1e-15)
    # next layer: k11 = k22 = 1/2, cos th = (1/(2 pi)) / (1/2) = 1/pi
    th = math.acos(1 / math.pi)
    off = 0.5 / (2 * math.pi) * (math.sin(th) + (math.pi - th) / math.pi)
    np.testing.assert_allclose(K3, [[0.25, off], [off, 0.25]], atol=1e-15)


def test_relu_antiparallel_inputs_give_zero():
    # x' = -x: theta = pi, relu(u) relu(-u) = 0
    X = np.array([[1.0, 2.0], [-1.0, -2.0]])
    K2 = nngp_kernel(X, 2, "relu", 1.0, 0.0)[1]
    assert abs(K2[0, 1]) < 1e-15


def test_relu_offdiagonal_vs_monte_carlo():
    sw, sb = 1.3, 0.3
    K1 = _first_layer(X2, sw, sb)
    u, v = _mc_pair(np.random.default_rng(0), K1)
    K2 = nngp_kernel(X2, 2, "relu", sw, sb)[1]
    _mc_check(sw ** 2 * np.maximum(u, 0) * np.maximum(v, 0) + sb ** 2, K2[0, 1])
    _mc_check(sw ** 2 * np.maximum(u, 0) ** 2 + sb ** 2, K2[0, 0])


def test_erf_closed_form_vs_monte_carlo():
    sw, sb = 1.5, 0.2
    K1 = _first_layer(X2, sw, sb)
    u, v = _mc_pair(np.random.default_rng(1), K1)
    erf = np.vectorize(math.erf)
    eu, ev = erf(u[:200_000]), erf(v[:200_000])
    K2 = nngp_kernel(X2, 2, "erf", sw, sb)[1]
    _mc_check(sw ** 2 * eu * ev + sb ** 2, K2[0, 1])
    _mc_check(sw ** 2 * eu * eu + sb ** 2, K2[0, 0])


def test_tanh_quadrature_vs_monte_carlo():
    sw, sb = 1.2, 0.1
    K1 = _first_layer(X2, sw, sb)
    u, v = _mc_pair(np.random.default_rng(2), K1)
    K2 = nngp_kernel(X2, 2, "tanh", sw, sb)[1]
    _mc_check(sw ** 2 * np.tanh(u) * np.tanh(v) + sb ** 2, K2[0, 1])
    _mc_check(sw ** 2 * np.tanh(u) ** 2 + sb ** 2, K2[0, 0])


@pytest.mark.parametrize("name,fn", [
    ("gelu", lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
])
def test_other_named_nonlinearities_vs_monte_carlo(name, fn):
    sw, sb = 1.1, 0.2
    K1 = _first_layer(X2, sw, sb)
    u, v = _mc_pair(np.random.default_rng(3), K1, size=200_000)
    K2 = nngp_kernel(X2, 2, name, sw, sb)[1]
    _mc_check(sw ** 2 * fn(u) * fn(v) + sb ** 2, K2[0, 1])


# ---------------------------------------------------------------------------------------------
# quadrature path vs closed forms
# ---------------------------------------------------------------------------------------------

def _inputs_with_degeneracies():
    # generic rows, a repeated row (rank-1 pair), an antiparallel row and a zero row
    return np.vstack([X8[:4], X8[:1], -X8[1:2], np.zeros((1, 5))])


def test_relu_as_plain_callable_matches_arc_cosine():
    X = _inputs_with_degeneracies()
    closed = nngp_kernel(X, 4, "relu", 1.4, 0.0)
    quad = nngp_kernel(X, 4, lambda x: np.maximum(x, 0.0), 1.4, 0.0)
    for Kc, Kq in zip(closed, quad):
        np.testing.assert_allclose(Kq, Kc, rtol=1e-9, atol=1e-12)


def test_erf_as_plain_callable_matches_williams():
    erf = np.vectorize(math.erf)
    closed = nngp_kernel(X8, 3, "erf", 1.7, 0.3)
    quad = nngp_kernel(X8, 3, erf, 1.7, 0.3)
    for Kc, Kq in zip(closed, quad):
        np.testing.assert_allclose(Kq, Kc, rtol=1e-9, atol=1e-12)


def test_hermite_rule_agrees_on_smooth_and_converges_slowly_on_kinks():
    # tensor Gauss-Hermite: spectrally accurate for tanh, O(1/order) for the ReLU kink
    polar = nngp_kernel(X8, 3, "tanh", 1.2, 0.1)[-1]
    herm = nngp_kernel(X8, 3, "tanh", 1.2, 0.1, quadrature="hermite", order=128)[-1]
    np.testing.assert_allclose(herm, polar, rtol=1e-6)
    relu = lambda x: np.maximum(x, 0.0)
    closed = nngp_kernel(X8, 2, "relu", 1.4, 0.1)[-1]
    err = [np.abs(nngp_kernel(X8, 2, relu, 1.4, 0.1, quadrature="hermite", order=o)[-1] - closed).max()
           for o in (32, 128)]
    assert err[1] < 1e-2 and err[1] < err[0] / 2


def test_identity_kernel_is_linear():
    sw, sb = 1.3, 0.7
    for nl in ("identity", lambda x: x):
        kernels = nngp_kernel(X8, 5, nl, sw, sb)
        K = _first_layer(X8, sw, sb)
        for Kl in kernels:
            np.testing.assert_allclose(Kl, K, rtol=1e-10, atol=1e-12)
            K = sw ** 2 * K + sb ** 2


def test_readout_appends_one_more_layer():
    base = nngp_kernel(X8, 3, "relu", 1.2, 0.1)
    with_readout = nngp_kernel(X8, 3, "relu", 1.2, 0.1, readout=True)
    assert len(with_readout) == 4
    np.testing.assert_allclose(with_readout[-1], nngp_kernel(X8, 4, "relu", 1.2, 0.1)[-1])
    for a, b in zip(base, with_readout):
        np.testing.assert_array_equal(a, b)


def test_kernels_are_symmetric_psd():
    for nl in ("relu", "erf", "tanh", "gelu"):
        for K in nngp_kernel(X8, 3, nl, 1.3, 0.2):
            np.testing.assert_allclose(K, K.T, atol=1e-14)
            assert np.linalg.eigvalsh(K).min() > -1e-10


# ---------------------------------------------------------------------------------------------
# NTK
# ---------------------------------------------------------------------------------------------

def test_ntk_identity_by_hand():
    sw, sb = 1.2, 0.5
    K = theta = _first_layer(X8, sw, sb)
    for T in ntk_kernel(X8, 4, "identity", sw, sb):
        np.testing.assert_allclose(T, theta, rtol=1e-12)
        K = sw ** 2 * K + sb ** 2
        theta = K + sw ** 2 * theta           # Kdot = E[1 * 1] = 1


def test_ntk_relu_diagonal_by_hand():
    sw, sb = 1.4, 0.3
    q = theta = sw ** 2 * np.sum(X8 ** 2, axis=1) / 5 + sb ** 2
    for T in ntk_kernel(X8, 5, "relu", sw, sb):
        np.testing.assert_allclose(np.diag(T), theta, rtol=1e-12)
        q = sw ** 2 * q / 2 + sb ** 2
        theta = q + sw ** 2 * 0.5 * theta     # Kdot diagonal = P(u > 0) = 1/2


@pytest.mark.parametrize("name,fn,deriv", [
    ("relu", lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    ("erf", np.vectorize(math.erf), lambda x: 2 / math.sqrt(math.pi) * np.exp(-x ** 2)),
])
def test_ntk_quadrature_matches_closed_form(name, fn, deriv):
    X = _inputs_with_degeneracies()[:-1]
    closed = ntk_kernel(X, 3, name, 1.3, 0.2, readout=True)
    given = ntk_kernel(X, 3, fn, 1.3, 0.2, readout=True, derivative=deriv)
    numeric = ntk_kernel(X, 3, fn, 1.3, 0.2, readout=True)      # central differences
    for Tc, Tg, Tn in zip(closed, given, numeric):
        np.testing.assert_allclose(Tg, Tc, rtol=1e-9)
        np.testing.assert_allclose(Tn, Tc, rtol=1e-5)


def _autograd_ntk(X, n, depth, phi, sw, sb, seed):
    """Empirical NTK of a scalar-output MLP in NTK parametrization (standard-normal params,
    W = s_w/sqrt(fan_in) w, b = s_b beta), by autograd: J J^T."""
    g = torch.Generator().manual_seed(seed)
    h = torch.as_tensor(X, dtype=torch.float64)
    dims = [h.shape[1]] + [n] * depth + [1]
    params = [(torch.randn(fo, fi, generator=g, dtype=torch.float64).requires_grad_(),
               torch.randn(fo, generator=g, dtype=torch.float64).requires_grad_())
              for fi, fo in zip(dims[:-1], dims[1:])]
    for i, (w, b) in enumerate(params):
        h = (phi(h) if i else h) @ w.T * (sw / math.sqrt(w.shape[1])) + sb * b
    flat = [p for wb in params for p in wb]
    rows = [torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(f, flat, retain_graph=True)])
            for f in h[:, 0]]
    J = torch.stack(rows)
    return (J @ J.T).numpy()


@pytest.mark.parametrize("name,phi", [("relu", torch.relu), ("tanh", torch.tanh)])
def test_ntk_matches_autograd_at_large_width(name, phi):
    X = X8[:3, :3]
    theory = ntk_kernel(X, 2, name, 1.3, 0.2, readout=True)[-1]
    emp = np.mean([_autograd_ntk(X, 1024, 2, phi, 1.3, 0.2, s) for s in range(4)], axis=0)
    assert np.linalg.norm(emp - theory) / np.linalg.norm(theory) < 0.08
    # and the NTK is not just the NNGP kernel: the backward term matters
    nngp = nngp_kernel(X, 2, name, 1.3, 0.2, readout=True)[-1]
    assert np.linalg.norm(emp - nngp) / np.linalg.norm(theory) > 0.3


# ---------------------------------------------------------------------------------------------
# finite-width networks
# ---------------------------------------------------------------------------------------------

def test_empirical_kernel_shapes_and_determinism():
    a = empirical_kernel(X8, 32, 3, "tanh", 1.2, 0.1, seed=7)
    b = empirical_kernel(X8, 32, 3, "tanh", 1.2, 0.1, seed=7)
    c = empirical_kernel(X8, 32, 3, "tanh", 1.2, 0.1, seed=8)
    assert len(a) == 3 and all(K.shape == (8, 8) and K.dtype == np.float64 for K in a)
    for Ka, Kb in zip(a, b):
        np.testing.assert_array_equal(Ka, Kb)
    assert not np.allclose(a[-1], c[-1])
    # a numpy callable runs through the same torch network
    d = empirical_kernel(X8, 32, 3, np.tanh, 1.2, 0.1, seed=7)
    np.testing.assert_allclose(d[-1], a[-1], rtol=1e-12)


def test_empirical_first_layer_by_hand():
    # same draw order as documented: W^1 then b^1 from one seeded generator
    g = torch.Generator().manual_seed(3)
    W = torch.randn(16, 5, generator=g, dtype=torch.float64).numpy() * 1.5 / math.sqrt(5)
    b = torch.randn(16, generator=g, dtype=torch.float64).numpy() * 0.4
    H = X8 @ W.T + b
    K1 = empirical_kernel(X8, 16, 1, "relu", 1.5, 0.4, seed=3)[0]
    np.testing.assert_allclose(K1, H @ H.T / 16, rtol=1e-12)


def test_gaussian_layer_relative_variance_is_2_over_n():
    # orthonormal inputs (x.x'/d = delta): the coordinates h^1(x_i) are independent, so one
    # width-n network gives d independent chi^2_n samples of ||h||^2 / n
    n, d = 16, 64
    X = math.sqrt(d) * np.eye(d)
    s = np.concatenate([np.diag(empirical_kernel(X, n, 1, "relu", 1.3, 0.0, seed=k)[0]) for k in range(60)])
    np.testing.assert_allclose(s.mean(), 1.3 ** 2, rtol=0.02)
    np.testing.assert_allclose(s.var(ddof=1) / s.mean() ** 2, 2 / n, rtol=0.12)


def test_relu_output_relative_variance_is_5_over_n():
    # h ~ N(0, q I_n): E relu(h)^2 = q/2, E relu(h)^4 = 3q^2/2, so one coordinate has
    # variance 5q^2/4 = 5 (q/2)^2 and Var(||relu(h)||^2/n) / mean^2 = 5/n.
    n, q = 32, 1.7
    h = np.random.default_rng(4).normal(0.0, math.sqrt(q), size=(20_000, n))
    s = np.sum(np.maximum(h, 0) ** 2, axis=1) / n
    np.testing.assert_allclose(s.mean(), q / 2, rtol=0.01)
    np.testing.assert_allclose(s.var(ddof=1) / s.mean() ** 2, 5 / n, rtol=0.06)


def test_relu_network_second_layer_fluctuation():
    # K^2_emp(x, x) = s_w^2 A B with A = ||relu(h^1)||^2/n (rel. var 5/n) independent of
    # B = chi^2_n / n (rel. var 2/n), so Var/mean^2 = (1 + 5/n)(1 + 2/n) - 1 (s_b = 0).
    n = 32
    s = np.array([empirical_kernel(X2[:1], n, 2, "relu", 1.4, 0.0, seed=k)[1][0, 0] for k in range(1500)])
    predicted = (1 + 5 / n) * (1 + 2 / n) - 1
    np.testing.assert_allclose(s.var(ddof=1) / s.mean() ** 2, predicted, rtol=0.12)
    assert abs(s.var(ddof=1) / s.mean() ** 2 - ((1 + 2 / n) ** 2 - 1)) > 0.3 * predicted


def test_relu_diagonal_is_unbiased_at_narrow_width():
    # E[h.h/n] = q^l exactly at every width for ReLU (positive homogeneity): average many nets
    n, depth, sw, sb = 8, 3, 1.4, 0.2
    q = nngp_kernel(X2, depth, "relu", sw, sb)[-1].diagonal()
    diag = np.array([empirical_kernel(X2, n, depth, "relu", sw, sb, seed=k)[-1].diagonal()
                     for k in range(1500)])
    z = (diag.mean(axis=0) - q) / (diag.std(axis=0, ddof=1) / math.sqrt(len(diag)))
    assert np.all(np.abs(z) < 4), z


# ---------------------------------------------------------------------------------------------
# convergence
# ---------------------------------------------------------------------------------------------

WIDTHS = [64, 128, 256, 512, 1024, 2048]


@pytest.mark.parametrize("name,sw,sb,depth", [("relu", 1.4, 0.1, 3), ("erf", 1.5, 0.1, 2)])
def test_convergence_rate_is_half(name, sw, sb, depth, tmp_path):
    conv = convergence(X8, WIDTHS, depth, name, sw, sb, seeds=range(6))
    assert isinstance(conv, Convergence)
    assert conv.errors.shape == (len(WIDTHS), 6) and conv.layer == depth
    assert np.all(conv.errors > 0)
    assert conv.mean_error[-1] < conv.mean_error[0] / 3      # ~ sqrt(32) = 5.7 expected
    assert 0 < conv.slope_uncertainty < 0.1
    assert conv.consistent_with(-0.5, tol=0.15), (conv.slope, conv.slope_uncertainty)
    assert conv.consistent_with(-0.5)                       # 3 sigma of the fit
    assert not conv.consistent_with(-1.0, tol=0.15)
    assert not conv.consistent_with(0.0, tol=0.15)
    path = conv.plot(tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").stat().st_size > 1000 and path == tmp_path / f"{name}.png"


def test_convergence_max_abs_metric_and_layer():
    conv = convergence(X2, [32, 128, 512], 3, "tanh", 1.2, 0.0, seeds=[0, 1], layer=2, metric="max_abs")
    K = nngp_kernel(X2, 2, "tanh", 1.2, 0.0)[-1]
    assert conv.layer == 2 and conv.metric == "max_abs"
    assert np.all(conv.errors < np.abs(K).max())
    assert conv.slope < 0


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("X", [np.ones(3), np.ones((2, 3, 1)), np.ones((0, 3)), np.ones((2, 0)),
                               np.array([[1.0, np.nan]])])
def test_bad_X_shape(X):
    with pytest.raises(ValueError, match="X"):
        nngp_kernel(X, 2)
    with pytest.raises(ValueError, match="X"):
        empirical_kernel(X, 8, 2)


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        nngp_kernel(X2, depth)
    with pytest.raises(ValueError, match="depth"):
        ntk_kernel(X2, depth)


def test_unknown_nonlinearity_and_other_bad_arguments():
    with pytest.raises(ValueError, match="unknown nonlinearity 'swishy'.*relu"):
        nngp_kernel(X2, 2, "swishy")
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        empirical_kernel(X2, 8, 2, "swishy")
    with pytest.raises(ValueError, match="sigma_w"):
        nngp_kernel(X2, 2, sigma_w=-1.0)
    with pytest.raises(ValueError, match="width"):
        empirical_kernel(X2, 0, 2)
    with pytest.raises(ValueError, match="quadrature"):
        nngp_kernel(X2, 2, "tanh", quadrature="simpson")
    with pytest.raises(ValueError, match="repeated values"):
        convergence(X2, [64, 64], 2)
    with pytest.raises(ValueError, match="metric"):
        convergence(X2, [8, 16], 2, metric="l1")
    assert {"relu", "erf", "tanh", "gelu", "identity", "sigmoid"} <= set(NONLINEARITIES)
