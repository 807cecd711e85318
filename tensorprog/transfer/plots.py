"""Figures: training loss against a hyperparameter, one curve per width (TP5 arXiv 2203.03466
Figures 1 and 3), and the tuning-compute comparison of ``tune`` (TP5 Figure 5).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from ..errors import TransferError

__all__ = ["plot_sweeps", "plot_one", "plot_hp_panels", "plot_tune"]


def _ylim(s) -> tuple[float, float]:
    """y range showing every minimum and the curves around them; very high losses are cut off."""
    finite = s.grid[np.isfinite(s.grid)]
    if not finite.size:
        return 0.0, 1.0
    lo, med, hi = float(finite.min()), float(np.median(finite)), float(finite.max())
    top = min(hi, lo + 3.0 * (med - lo)) if med > lo else hi
    pad = 0.05 * (top - lo) if top > lo else 0.1 * max(abs(lo), 1.0)
    return lo - pad, top + pad


def plot_one(s, ax, title: str | None, ylim: tuple[float, float] | None = None) -> None:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    g = s.grid
    x = s.coords
    ylim = ylim or _ylim(s)
    nw = len(s.widths)
    for i, w in enumerate(s.widths):
        color = cmap(0.9 * i / max(nw - 1, 1))
        ok = np.isfinite(g[i])
        ax.plot(x[ok], g[i, ok], "-", color=color, lw=1.6, label=f"{w}")
        j = s.best_index[i]
        if j >= 0:
            ax.plot([x[j]], [g[i, j]], "o", color=color, ms=6, mec="k", mew=0.6, zorder=3)
        if (~ok).any():
            ax.plot(x[~ok], np.full((~ok).sum(), ylim[1]), "x", color=color, ms=7, mew=1.5,
                    clip_on=False)
    ax.set_ylim(*ylim)
    ax.set_xlabel(s.axis_label)
    ax.set_ylabel("training loss")
    if s.scale == "categorical":
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in s.values], rotation=20, fontsize=8)
    drift = s.drift
    unit = "log2 units" if s.scale == "log" else s.hp
    sub = (f"drift {drift:+.2f} ± {s.drift_err:.2f} {unit} / {s.along} doubling"
           if math.isfinite(drift) else f"best: {s.verdict}")
    ax.set_title(f"{title or s.name or 'sweep'}\n{sub}", fontsize=10)
    ax.legend(title=s.along, fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)


def plot_sweeps(sweeps: Sequence, path: str | None = None, *,
                titles: Sequence[str] | None = None, sharey: bool = True):
    """Side-by-side ``Sweep.plot`` panels (e.g. SP | muP, as TP5 Figure 1); saves a PNG to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sweeps = list(sweeps)
    if not sweeps:
        raise TransferError("plot_sweeps needs at least one Sweep")
    fig = Figure(figsize=(5.0 * len(sweeps), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(sweeps), sharey=sharey, squeeze=False)[0]
    shared = None
    if sharey:
        lows, highs = zip(*(_ylim(s) for s in sweeps))
        shared = (min(lows), max(highs))
    for k, (s, ax) in enumerate(zip(sweeps, axes)):
        plot_one(s, ax, titles[k] if titles else None, shared)
    fig.tight_layout()
    if path is not None:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _save(fig, path):
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_hp_panels(rows: dict, path: str | None = None):
    """TP5 Figure 3: one row per parametrization (``rows`` = {"SP": HPSweeps, "muP": HPSweeps}),
    one column per hyperparameter, each panel loss vs that hyperparameter, one curve per width.
    Columns share the y range."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise TransferError("plot_hp_panels needs {label: HPSweeps}")
    names = list(next(iter(rows.values())))
    fig = Figure(figsize=(4.2 * len(names), 3.8 * len(rows)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(names), squeeze=False)
    for c, hp in enumerate(names):
        lows, highs = zip(*(_ylim(sw[hp]) for sw in rows.values()))
        shared = (min(lows), max(highs))
        for r, (label, sw) in enumerate(rows.items()):
            plot_one(sw[hp], axes[r, c], f"{label}: {hp}", shared)
    fig.tight_layout()
    return _save(fig, path)


def plot_tune(result, path: str | None = None, *, ax=None):
    """TP5 Figure 5: target loss against tuning compute (parameter-steps, log axis). Direct tuning:
    best loss so far over its trials (step curve) and its best setting's loss over seeds (error
    bar); muTransfer: the target loss of the proxy-tuned setting at its cost."""
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.6, 4.2))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
    else:
        fig = ax.figure
    curve = [(c, l) for c, l in result.curve("direct") if math.isfinite(l)]
    c = result.compute
    if curve:
        xs, ys = zip(*curve)
        ax.step(xs, ys, where="post", color="tab:gray", lw=1.5,
                label=f"direct tuning at width {result.target_width} (best so far)")
        md, ed = result.direct_loss
        ax.errorbar([c["direct_search"]], [md], yerr=[0 if math.isnan(ed) else ed], fmt="s",
                    color="tab:gray", ms=6, capsize=3)
    mt, et = result.transfer_loss
    cost = c["proxy_search"] + c["target_run"]
    ax.errorbar([cost], [mt], yerr=[0 if math.isnan(et) else et], fmt="o", color="tab:red", ms=7,
                capsize=3, label=f"muTransfer from width {result.proxy_width}")
    ax.set_xscale("log")
    ax.set_xlabel("tuning compute (parameter-steps)")
    ax.set_ylabel(f"training loss at width {result.target_width}")
    ratio = result.compute_ratio
    nb, pb = result.budget, result.budget_of("proxy")
    trials = f"{nb} trials each" if pb == nb else f"{pb} proxy trials, {nb} direct"
    ax.set_title(f"{result.name or 'tune'}: {trials}"
                 + (f"\ncompute ratio {ratio:.3f}" if math.isfinite(ratio) else ""), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
