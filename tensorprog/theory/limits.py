"""Infinite-width limits of MLPs at initialisation, and the check that finite networks reach them.

Network (Lee et al. 2018, arXiv 1711.00165, Eq. 4-5), for inputs x in R^d and width n:

    h^1 = W^1 x + b^1,             Var W^1_ij = s_w^2 / d,   Var b_i = s_b^2,
    h^{l+1} = W^{l+1} phi(h^l) + b^{l+1},   Var W^{l+1}_ij = s_w^2 / n.

As n -> infinity, h^l(x) . h^l(x') / n -> K^l(x, x') with

    K^1 = s_w^2 x.x'/d + s_b^2,    K^{l+1} = s_w^2 E[phi(u) phi(v)] + s_b^2,
    (u, v) ~ N(0, K^l restricted to {x, x'}).

The Gaussian expectation is in closed form for ReLU (arc-cosine kernel, Cho & Saul 2009),
erf (Williams 1997) and the identity; any other phi is integrated numerically
(see ``_gaussian_expectation``). Finite-width fluctuations of the empirical kernel shrink like
n^{-1/2}; ``convergence`` measures that rate on real torch networks.

Conventions: ``depth`` is the number of hidden layers L, and kernel lists are ``[K^1, ..., K^L]``
(index l-1 holds K^l). ``readout=True`` appends K^{L+1}, the covariance of a scalar readout
f = W^{L+1} phi(h^L) + b^{L+1} initialised like the hidden layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch

from ..errors import TheoryError
from ..validate import as_int, check_widths

ArrayFn = Callable[[np.ndarray], np.ndarray]
Nonlinearity = Union[str, ArrayFn]

__all__ = [
    "nngp_kernel",
    "ntk_kernel",
    "empirical_kernel",
    "convergence",
    "Convergence",
    "NONLINEARITIES",
]


# --------------------------------------------------------------------------------------------
# nonlinearities
# --------------------------------------------------------------------------------------------

def _np_erf(x: np.ndarray) -> np.ndarray:
    """erf on numpy arrays (numpy has none; torch's is vectorised and exact to rounding)."""
    x = np.asarray(x, dtype=np.float64)
    return torch.special.erf(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _np_normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _np_erf(np.asarray(x) / math.sqrt(2.0)))


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


@dataclass(frozen=True)
class _Activation:
    name: str
    fn: ArrayFn                      # numpy, elementwise
    deriv: ArrayFn                   # numpy, elementwise
    torch_fn: Callable[[torch.Tensor], torch.Tensor] | None
    closed_form: str | None = None   # "relu", "erf" or "identity": exact Gaussian moments


# name -> (phi, phi', torch phi, closed form)
_NAMED: dict[str, tuple] = {
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (np.asarray(x) > 0).astype(np.float64),
             torch.relu, "relu"),
    "erf": (_np_erf, lambda x: (2.0 / math.sqrt(math.pi)) * np.exp(-np.square(x)),
            torch.special.erf, "erf"),
    "identity": (lambda x: np.asarray(x, dtype=np.float64), lambda x: np.ones_like(x, dtype=np.float64),
                 lambda t: t, "identity"),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, torch.tanh, None),
    "sigmoid": (_np_sigmoid, lambda x: _np_sigmoid(x) * (1.0 - _np_sigmoid(x)), torch.sigmoid, None),
    # exact (erf-based) GELU, x * Phi(x), as torch.nn.functional.gelu's default
    "gelu": (lambda x: x * _np_normal_cdf(x),
             lambda x: _np_normal_cdf(x) + x * np.exp(-0.5 * np.square(x)) / math.sqrt(2.0 * math.pi),
             torch.nn.functional.gelu, None),
    "softplus": (lambda x: np.logaddexp(0.0, x), _np_sigmoid, torch.nn.functional.softplus, None),
}
_ALIASES = {"linear": "identity", "none": "identity"}
NONLINEARITIES: tuple[str, ...] = tuple(sorted(set(_NAMED) | set(_ALIASES)))


def _numeric_derivative(fn: ArrayFn) -> ArrayFn:
    """Central difference, step ~ eps^(1/3) relative to |x| (error O(h^2) for smooth fn)."""
    def deriv(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        h = 6e-6 * np.maximum(1.0, np.abs(x))
        return (np.asarray(fn(x + h)) - np.asarray(fn(x - h))) / (2.0 * h)
    return deriv


def _resolve(nonlinearity: Nonlinearity, derivative: ArrayFn | None = None) -> _Activation:
    if isinstance(nonlinearity, str):
        key = _ALIASES.get(nonlinearity.lower(), nonlinearity.lower())
        if key not in _NAMED:
            raise TheoryError(
                f"unknown nonlinearity {nonlinearity!r}; known names: {', '.join(NONLINEARITIES)} "
                "(or pass a callable acting elementwise on numpy arrays)")
        fn, deriv, tfn, closed = _NAMED[key]
        return _Activation(key, fn, derivative or deriv, tfn, closed)
    if callable(nonlinearity):
        name = getattr(nonlinearity, "__name__", "callable")
        return _Activation(name, nonlinearity, derivative or _numeric_derivative(nonlinearity), None, None)
    raise TheoryError(f"nonlinearity must be a name or a callable, got {type(nonlinearity).__name__}")


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------

def _check_X(X) -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise TheoryError(f"X must be a 2-D array of shape (m, d) with m, d >= 1; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TheoryError("X contains non-finite entries")
    return arr


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TheoryError(f"{name} must be an integer >= 1; got {value!r}")
    return int(value)


def _check_sigma(value, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise TheoryError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Gaussian moments E[f(u) g(v)], (u, v) ~ N(0, [[k11, k12], [k12, k22]])
# --------------------------------------------------------------------------------------------

def _relu_moments(k11, k12, k22):
    """Arc-cosine kernel of degree 1 and 0 (Cho & Saul 2009):
    E[relu(u) relu(v)] = sqrt(k11 k22)/(2 pi) (sin th + (pi - th) cos th),
    E[step(u) step(v)] = (pi - th)/(2 pi),   th = arccos(k12 / sqrt(k11 k22))."""
    s = np.sqrt(k11 * k22)
    cos = np.clip(np.divide(k12, s, out=np.zeros_like(s), where=s > 0), -1.0, 1.0)
    th = np.arccos(cos)
    e = s / (2 * np.pi) * (np.sin(th) + (np.pi - th) * cos)
    edot = np.where(s > 0, (np.pi - th) / (2 * np.pi), 0.0)  # relu'(0) := 0, as torch
    return e, edot


def _erf_moments(k11, k12, k22):
    """Williams 1997: E[erf(u) erf(v)] = (2/pi) arcsin(2 k12 / sqrt((1 + 2 k11)(1 + 2 k22)));
    with erf'(x) = 2/sqrt(pi) exp(-x^2): E[erf'(u) erf'(v)] = (4/pi) / sqrt(det(I + 2K))."""
    prod = (1 + 2 * k11) * (1 + 2 * k22)
    e = (2 / np.pi) * np.arcsin(np.clip(2 * k12 / np.sqrt(prod), -1.0, 1.0))
    edot = (4 / np.pi) / np.sqrt(np.maximum(prod - 4 * k12 ** 2, 1e-300))
    return e, edot


def _cholesky_2x2(k11, k12, k22):
    """u = a z1, v = b z1 + c z2 with z ~ N(0, I_2); valid for rank-1 and zero covariances."""
    a = np.sqrt(np.maximum(k11, 0.0))
    b = np.divide(k12, a, out=np.zeros_like(a), where=a > 0)
    # c^2 = det(K) / k11, formed from the determinant so that it is exactly 0 when x = x'
    det = np.maximum(k11 * k22 - k12 * k12, 0.0)
    c2 = np.divide(det, k11, out=np.maximum(k22, 0.0), where=a > 0)
    return a, b, np.sqrt(c2)


def _hermite_expectation(f, g, k11, k12, k22, order):
    """Tensor-product Gauss-Hermite rule (numpy.polynomial.hermite.hermgauss) in z = (z1, z2).
    Spectrally accurate for smooth f, g; only O(1/order) for kinks (ReLU)."""
    x, w = np.polynomial.hermite.hermgauss(order)
    z, w = math.sqrt(2.0) * x, w / math.sqrt(math.pi)             # rule for N(0, 1)
    a, b, c = (t[:, None, None] for t in _cholesky_2x2(k11, k12, k22))
    u = a * z[:, None]                                              # (P, Q, 1)
    v = b * z[:, None] + c * z[None, :]                             # (P, Q, Q)
    return np.einsum("pij,i,j->p", f(u) * g(v), w, w)


# radial cut-off: P(|z| > 10) = exp(-50) ~ 2e-22 for z ~ N(0, I_2)
_R_MAX = 10.0


def _polar_expectation(f, g, k11, k12, k22, order):
    """Gaussian rule in polar coordinates z = r (cos t, sin t), density r e^{-r^2/2} dr dt/(2 pi).

    The angular range is split at the rays where u = 0 or v = 0, so a phi that is smooth
    except at 0 (relu, its step derivative, leaky relu, abs) is smooth on every piece:
    Gauss-Legendre on each arc (order//2 nodes) and on r in [0, 10] (order nodes) is then
    exact to rounding for ReLU and spectrally accurate for smooth phi.
    """
    a, b, c = _cholesky_2x2(k11, k12, k22)
    # u = 0 at t = pi/2, 3pi/2; v = 0 where b cos t + c sin t = 0
    t0 = np.arctan2(-b, c)
    cuts = np.stack([np.full_like(a, np.pi / 2), np.full_like(a, 3 * np.pi / 2),
                     np.mod(t0, 2 * np.pi), np.mod(t0 + np.pi, 2 * np.pi)], axis=1)
    cuts = np.sort(cuts, axis=1)                                    # (P, 4)
    ends = np.concatenate([cuts[:, 1:], cuts[:, :1] + 2 * np.pi], axis=1)
    half, mid = (ends - cuts) / 2, (ends + cuts) / 2                # (P, 4) arcs

    xa, wa = np.polynomial.legendre.leggauss(max(order // 2, 2))
    t = mid[:, :, None] + half[:, :, None] * xa                     # (P, 4, Na)
    wt = half[:, :, None] * wa / (2 * np.pi)
    xr, wr = np.polynomial.legendre.leggauss(order)
    r = _R_MAX / 2 * (xr + 1)
    wr = _R_MAX / 2 * wr * r * np.exp(-r ** 2 / 2)                  # (Nr,)

    cos, sin = np.cos(t)[..., None], np.sin(t)[..., None]
    u = a[:, None, None, None] * r * cos                            # (P, 4, Na, Nr)
    v = (b[:, None, None, None] * cos + c[:, None, None, None] * sin) * r
    return np.einsum("pkar,pka,r->p", f(u) * g(v), wt, wr)


_QUADRATURES = {"polar": _polar_expectation, "hermite": _hermite_expectation}


def _gaussian_expectation(f, g, k11, k12, k22, quadrature="polar", order=64, chunk=64):
    """E[f(u) g(v)] for flat arrays of 2x2 covariances, numerically, in chunks of pairs."""
    rule = _QUADRATURES[quadrature]
    out = np.empty(len(k11))
    for s in range(0, len(k11), chunk):
        sl = slice(s, s + chunk)
        out[sl] = rule(f, g, k11[sl], k12[sl], k22[sl], order)
    return out


def _moments(act: _Activation, K: np.ndarray, with_derivative: bool, quadrature: str, order: int):
    """(E[phi(u) phi(v)], E[phi'(u) phi'(v)] or None) for all pairs of K, as m x m matrices."""
    diag = np.diag(K)
    if act.closed_form is not None:
        k11, k22 = diag[:, None], diag[None, :]
        if act.closed_form == "relu":
            e, edot = _relu_moments(k11, K, k22)
        elif act.closed_form == "erf":
            e, edot = _erf_moments(k11, K, k22)
        else:  # identity
            e, edot = K.copy(), np.ones_like(K)
        return e, (edot if with_derivative else None)

    m = K.shape[0]
    iu, ju = np.triu_indices(m)
    args = (diag[iu], K[iu, ju], diag[ju])

    def to_matrix(vals):
        M = np.empty((m, m))
        M[iu, ju] = vals
        M[ju, iu] = vals
        return M

    e = to_matrix(_gaussian_expectation(act.fn, act.fn, *args, quadrature=quadrature, order=order))
    edot = None
    if with_derivative:
        edot = to_matrix(_gaussian_expectation(act.deriv, act.deriv, *args,
                                               quadrature=quadrature, order=order))
    return e, edot


# --------------------------------------------------------------------------------------------
# NNGP and NTK recursions
# --------------------------------------------------------------------------------------------

def _check_common(X, depth, sigma_w, sigma_b, quadrature, order):
    X = _check_X(X)
    depth = _check_positive_int(depth, "depth")
    sw, sb = _check_sigma(sigma_w, "sigma_w"), _check_sigma(sigma_b, "sigma_b")
    if quadrature not in _QUADRATURES:
        raise TheoryError(f"quadrature must be one of {sorted(_QUADRATURES)}; got {quadrature!r}")
    order = _check_positive_int(order, "order")
    return X, depth, sw ** 2, sb ** 2, order


def nngp_kernel(
    X,
    depth: int,
    nonlinearity: Nonlinearity = "relu",
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    readout: bool = False,
    *,
    quadrature: str = "polar",
    order: int = 64,
) -> list[np.ndarray]:
    """NNGP kernels [K^1, ..., K^depth] (plus K^{depth+1} if ``readout``), each m x m.

    K^1 = s_w^2 X X^T / d + s_b^2;  K^{l+1} = s_w^2 E[phi(u) phi(v)] + s_b^2 with
    (u, v) ~ N(0, K^l on {x, x'}) (Lee et al. 2018, arXiv 1711.00165). Closed forms for "relu"
    (arc-cosine, Cho & Saul 2009), "erf" (Williams 1997) and "identity"; any other name or a
    callable phi (elementwise on numpy arrays) uses a 2-D Gaussian quadrature:
    ``quadrature="polar"`` (default; kink-aware, see ``_polar_expectation``) or ``"hermite"``
    (tensor Gauss-Hermite via ``hermgauss``), with ``order`` nodes per dimension.
    """
    X, depth, sw2, sb2, order = _check_common(X, depth, sigma_w, sigma_b, quadrature, order)
    act = _resolve(nonlinearity)
    K = sw2 * (X @ X.T) / X.shape[1] + sb2
    kernels = [K]
    for _ in range(depth - 1 + int(bool(readout))):
        e, _ = _moments(act, K, False, quadrature, order)
        K = sw2 * e + sb2
        kernels.append(K)
    return kernels


def ntk_kernel(
    X,
    depth: int,
    nonlinearity: Nonlinearity = "relu",
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    readout: bool = False,
    *,
    derivative: ArrayFn | None = None,
    quadrature: str = "polar",
    order: int = 64,
) -> list[np.ndarray]:
    """Infinite-width NTKs [Theta^1, ..., Theta^depth] (plus Theta^{depth+1} if ``readout``).

    Convention (NTK parametrization, Jacot et al. 2018, arXiv 1806.07572): every parameter is a
    standard normal w, used as W^l = (s_w / sqrt(fan_in)) w^l and b^l = s_b beta^l, and
    Theta^l(x, x') is the limit of sum_theta dh^l_i(x)/dtheta dh^l_i(x')/dtheta over all
    parameters of layers 1..l (the same for every coordinate i). Hence Theta^1 = K^1 and

        Theta^{l+1} = K^{l+1} + s_w^2 Kdot^l Theta^l,   Kdot^l = E[phi'(u) phi'(v)], (u, v) ~ K^l.

    Kdot is closed form for relu ((pi - th)/(2 pi)), erf ((4/pi)/sqrt(det(I + 2K))) and the
    identity (1); otherwise quadrature of ``derivative`` (default: the named phi's derivative,
    or a central difference of a callable).
    """
    X, depth, sw2, sb2, order = _check_common(X, depth, sigma_w, sigma_b, quadrature, order)
    act = _resolve(nonlinearity, derivative)
    K = sw2 * (X @ X.T) / X.shape[1] + sb2
    theta = K
    thetas = [theta]
    for _ in range(depth - 1 + int(bool(readout))):
        e, edot = _moments(act, K, True, quadrature, order)
        K = sw2 * e + sb2
        theta = K + sw2 * edot * theta
        thetas.append(theta)
    return thetas


# --------------------------------------------------------------------------------------------
# finite-width networks
# --------------------------------------------------------------------------------------------

def _torch_activation(act: _Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    if act.torch_fn is not None:
        return act.torch_fn
    # a user callable acts on numpy arrays: round-trip through numpy
    return lambda h: torch.as_tensor(np.asarray(act.fn(h.detach().cpu().numpy()), dtype=np.float64),
                                     device=h.device)


def empirical_kernel(
    X,
    width: int,
    depth: int,
    nonlinearity: Nonlinearity = "relu",
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Finite-width kernels [h^l(X) h^l(X)^T / width for l = 1..depth] of one random torch MLP.

    The MLP is ``depth`` float64 ``nn.Linear`` layers (d -> n -> ... -> n) with phi between
    them, W ~ N(0, s_w^2 / fan_in), b ~ N(0, s_b^2), drawn layer by layer (W, then b) from one
    torch.Generator seeded with ``seed`` on ``device``. Entry-for-entry this is what ``nngp_kernel`` predicts as n -> inf.
    """
    X = _check_X(X)
    width = _check_positive_int(width, "width")
    depth = _check_positive_int(depth, "depth")
    sw, sb = _check_sigma(sigma_w, "sigma_w"), _check_sigma(sigma_b, "sigma_b")
    phi = _torch_activation(_resolve(nonlinearity))

    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    dims = [X.shape[1]] + [width] * depth
    layers = torch.nn.ModuleList(
        torch.nn.utils.skip_init(torch.nn.Linear, fan_in, fan_out, dtype=torch.float64, device=device)
        for fan_in, fan_out in zip(dims[:-1], dims[1:]))
    with torch.no_grad():
        for layer in layers:
            std_w = sw / math.sqrt(layer.in_features)
            layer.weight.copy_(std_w * torch.randn(layer.weight.shape, generator=gen,
                                                   dtype=torch.float64, device=device))
            layer.bias.copy_(sb * torch.randn(layer.bias.shape, generator=gen,
                                              dtype=torch.float64, device=device))

        h = layers[0](torch.as_tensor(X, dtype=torch.float64, device=device))
        kernels = [h @ h.T / width]
        for layer in layers[1:]:
            h = layer(phi(h))
            kernels.append(h @ h.T / width)
    return [k.cpu().numpy() for k in kernels]


# --------------------------------------------------------------------------------------------
# convergence of finite networks to the limit
# --------------------------------------------------------------------------------------------

def _kernel_error(K_emp: np.ndarray, K_inf: np.ndarray, metric: str) -> float:
    diff = K_emp - K_inf
    if metric == "rel_fro":
        return float(np.linalg.norm(diff) / np.linalg.norm(K_inf))
    return float(np.max(np.abs(diff)))


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line y = slope x + intercept; slope standard error (nan for < 3 points)."""
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean()) / sxx)
    intercept = float(y.mean() - slope * x.mean())
    if len(x) < 3:
        return slope, intercept, float("nan")
    resid = y - (slope * x + intercept)
    return slope, intercept, math.sqrt(float(resid @ resid) / (len(x) - 2) / sxx)


@dataclass(frozen=True)
class Convergence:
    """Errors ||K_emp - K_inf|| of finite MLPs against the NNGP limit, over widths and seeds.

    ``errors[i, s]`` is the error at ``widths[i]`` for seed ``s``; ``metric`` is ``"rel_fro"``
    (||K_emp - K_inf||_F / ||K_inf||_F) or ``"max_abs"`` (max_ij |K_emp - K_inf|), on kernel
    ``layer`` (1-based; the last hidden layer by default). ``slope`` is the least-squares slope
    of log(mean error over seeds) against log(width), ``slope_stderr`` its standard error from
    the fit residuals, and ``seed_slopes`` the same fit done seed by seed.
    """

    widths: np.ndarray
    errors: np.ndarray
    metric: str
    layer: int
    slope: float
    intercept: float
    slope_stderr: float
    seed_slopes: np.ndarray

    @property
    def mean_error(self) -> np.ndarray:
        return self.errors.mean(axis=1)

    @property
    def slope_uncertainty(self) -> float:
        """max(fit standard error, standard error of the mean of the per-seed slopes)."""
        s = len(self.seed_slopes)
        seed_sem = float(np.std(self.seed_slopes, ddof=1) / math.sqrt(s)) if s > 1 else float("nan")
        return float(np.nanmax([self.slope_stderr, seed_sem]))

    def consistent_with(self, rate: float = -0.5, tol: float | None = None, n_sigma: float = 3.0) -> bool:
        """|slope - rate| <= tol; by default tol = n_sigma * slope_uncertainty."""
        if tol is None:
            if not math.isfinite(self.slope_uncertainty):
                raise TheoryError("no slope uncertainty (need >= 3 widths or >= 2 seeds); pass tol")
            tol = n_sigma * self.slope_uncertainty
        return abs(self.slope - rate) <= tol

    def plot(self, path, title: str | None = None):
        """Log-log plot of the error vs width (mean +- std over seeds), the fitted line and a
        reference n^{-1/2} line through the first point; saved to ``path`` (Agg canvas)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        w, mean = self.widths, self.mean_error
        std = self.errors.std(axis=1, ddof=1) if self.errors.shape[1] > 1 else None
        ax.errorbar(w, mean, yerr=std, fmt="o", capsize=3, label="empirical (mean over seeds)")
        ax.plot(w, np.exp(self.intercept) * w ** self.slope, "-",
                label=f"fit: slope {self.slope:.3f} ± {self.slope_uncertainty:.3f}")
        ax.plot(w, mean[0] * (w / w[0]) ** -0.5, "k--", label=r"$n^{-1/2}$ reference")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("width n")
        ax.set_ylabel(f"error ({self.metric}), layer {self.layer}")
        ax.set_title(title or "finite-width kernel vs NNGP limit")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        return path


def convergence(
    X,
    widths: Sequence[int],
    depth: int,
    nonlinearity: Nonlinearity = "relu",
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    seeds: Sequence[int] = (0, 1, 2, 3),
    *,
    layer: int | None = None,
    metric: str = "rel_fro",
    device: str | torch.device = "cpu",
) -> Convergence:
    """Error of ``empirical_kernel`` against ``nngp_kernel`` at each width and seed, with the
    log-log slope (an average over n independent units fluctuates like n^{-1/2}: central limit). Each (seed, width) network uses
    its own generator seed, derived from both, so widths are statistically independent."""
    X = _check_X(X)
    depth = _check_positive_int(depth, "depth")
    widths = np.array(check_widths(widths, error=TheoryError, why="to fit a slope"), dtype=np.int64)
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise TheoryError(f"seeds must be a sequence of ints, e.g. (0, 1, 2, 3); got {seeds!r}")
    seeds = [as_int(s, "each of seeds", TheoryError) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise TheoryError(f"seeds must be distinct and non-empty (one network per seed and width), "
                          f"got {seeds!r}")
    if metric not in ("rel_fro", "max_abs"):
        raise TheoryError(f"metric must be 'rel_fro' or 'max_abs'; got {metric!r}")
    layer = depth if layer is None else _check_positive_int(layer, "layer")
    if layer > depth:
        raise TheoryError(f"layer must be in 1..depth={depth}; got {layer}")

    K_inf = nngp_kernel(X, layer, nonlinearity, sigma_w, sigma_b)[-1]
    errors = np.empty((len(widths), len(seeds)))
    for i, n in enumerate(widths):
        for j, s in enumerate(seeds):
            net_seed = int(np.random.SeedSequence([s, int(n)]).generate_state(1)[0])
            K_emp = empirical_kernel(X, int(n), layer, nonlinearity, sigma_w, sigma_b, net_seed, device)[-1]
            errors[i, j] = _kernel_error(K_emp, K_inf, metric)

    logw = np.log(widths.astype(np.float64))
    slope, intercept, stderr = _ols(logw, np.log(errors.mean(axis=1)))
    seed_slopes = np.array([_ols(logw, np.log(errors[:, j]))[0] for j in range(len(seeds))])
    return Convergence(widths, errors, metric, layer, slope, intercept, stderr, seed_slopes)
