"""Figures of sweeps: training loss against log2(lr), one curve per width (TP5 Figure 1).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from ..errors import TransferError

__all__ = ["plot_sweeps", "plot_one"]


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
    x = s.log2_lrs
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
    ax.set_xlabel("log2 learning rate")
    ax.set_ylabel("training loss")
    drift = s.drift
    sub = (f"drift {drift:+.2f} ± {s.drift_err:.2f} per width doubling" if math.isfinite(drift)
           else "drift undefined")
    ax.set_title(f"{title or s.name or 'sweep'}\n{sub}", fontsize=10)
    ax.legend(title="width", fontsize=8, title_fontsize=8)
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
