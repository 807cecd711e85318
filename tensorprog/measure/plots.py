"""The coordinate-check figure of a ``CheckReport`` (see ``CheckReport.plot``)."""
from __future__ import annotations

import re

import numpy as np

from .judge import NEG, Record

__all__ = ["plot_check", "series_styles", "depth_figure", "plot_depth_check"]


def _group_key(r: Record) -> str:
    mod = re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", r.module or "")
    return f"{mod or 'top'}:{r.op}"


def series_styles(count: int) -> list[tuple]:
    """(colour, marker) for ``count`` series, no two alike: tab10 up to 10 series, then tab20
    (dark shades first, then light), with the marker changing every 10 series."""
    import matplotlib

    if count <= 10:
        palette = [f"C{i}" for i in range(10)]
    else:
        tab20 = matplotlib.colormaps["tab20"]
        palette = [tab20(i) for i in list(range(0, 20, 2)) + list(range(1, 20, 2))]
    markers = ("o", "s", "^", "v", "D")
    return [(palette[k % len(palette)], markers[k // 10 % len(markers)]) for k in range(count)]


def log_log_axis(ax, xs, label: str, fontsize: float = 7) -> None:
    """Log-log axes with a tick at each measured x (a width or a depth), labelled as integers."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(xs)
    ax.set_xticklabels([str(int(x)) for x in xs], fontsize=fontsize)
    ax.set_xlabel(label)


def plot_check(rep, path: str, max_groups: int = 16) -> str:
    """Write the figure of a CheckReport to ``path`` (PNG); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = [r for r in rep.records if r.focus]
    groups: dict[str, list[Record]] = {}
    for r in recs:
        groups.setdefault(_group_key(r), []).append(r)
    keys = list(groups)[:max_groups]
    T = rep.steps
    fig = Figure(figsize=(4 * (T + 1), 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, T + 1, squeeze=False)
    styles = series_styles(len(keys))
    ws = np.asarray(rep.widths, dtype=float)
    for row, kind in enumerate(("size", "change")):
        for t in range(T + 1):
            ax = axes[row][t]
            if kind == "change" and t == 0:
                ax.axis("off")
                continue
            for (color, marker), key in zip(styles, keys):
                members = [r for r in groups[key] if r.kind == kind and r.step == t]
                if not members:
                    continue
                curves = np.array([[r.mean_values[w] for w in rep.widths] for r in members])
                with np.errstate(invalid="ignore", divide="ignore"):
                    y = np.exp(np.nanmean(np.log(np.where(curves > 0, curves, np.nan)), axis=0))
                ok = np.isfinite(y)
                if ok.sum() == 0:
                    continue
                blown = any(r.blowup for r in members)
                ax.plot(ws[ok], y[ok], "-", marker=marker, color=color, ms=3, lw=1.2,
                        label=key + (" (blow-up)" if blown else ""))
                i0 = int(np.argmax(ok))
                for pred in dict.fromkeys(r.predicted for r in members):  # one per distinct exponent
                    if pred is not None and pred != NEG:
                        ax.plot(ws, y[i0] * (ws / ws[i0]) ** float(pred), "--", color=color, lw=0.8)
            log_log_axis(ax, ws, "width", fontsize=7)
            ax.set_title(f"{'mean |x_t|' if kind == 'size' else 'mean |x_t - x_0|'}, step {t}",
                         fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[1][0].legend(handles, labels, loc="center", fontsize=7, frameon=False)
    fig.suptitle(f"tensorprog check: {rep.verdict} ({rep.optimizer}; dashed: predicted slopes)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def depth_figure(rep):
    """The figure of a ``DepthCheck`` (``measure.depth``): two log-log panels against the depth L,
    the size at init (mean |x_0|) and the change after the last step (mean |x_T - x_0|), one
    series per measured quantity (the stream and each branch kind, same colour and marker in
    both panels), solid with markers: measured (geometric mean over seeds); dashed: the
    predicted slope L^e through the first measured point; dash-dotted: the second term of a
    prediction that has two (``Record.predicted_also``: a block's change is its own update plus
    its input's change). Returns a matplotlib ``Figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nodes = list(dict.fromkeys(r.node for r in rep.records))
    styles = dict(zip(nodes, series_styles(len(nodes))))
    ds = np.asarray(rep.depths, dtype=float)
    fig = Figure(figsize=(10, 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    titles = {"size": "mean |x|, at init", "change": f"mean |x_T - x_0|, T = {rep.steps}"}
    for ax, kind in zip(axes, ("size", "change")):
        for r in (r for r in rep.records if r.kind == kind):
            color, marker = styles[r.node]
            y = np.array([r.mean_values.get(d, np.nan) for d in rep.depths], dtype=float)
            ok = np.isfinite(y) & (y > 0)
            if not ok.any():
                continue
            slope = "?" if r.slope is None else f"{r.slope:+.2f}"
            also = getattr(r, "predicted_also", None)
            pred = (f"L^{r.predicted} predicted" if also is None else
                    f"L^{r.predicted} (own update, --) to L^{also} (input's change, -.) predicted")
            ax.plot(ds[ok], y[ok], "-", marker=marker, color=color, ms=4, lw=1.3,
                    label=f"{r.node}: L^{slope} measured, {pred} ({r.status})")
            i0 = int(np.argmax(ok))
            for e, style in ((r.predicted, "--"), (also, "-.")):
                if e is not None and e != NEG:
                    ax.plot(ds, y[i0] * (ds / ds[i0]) ** float(e), style, color=color, lw=0.9)
        log_log_axis(ax, ds, "depth L (number of residual blocks)", fontsize=8)
        ax.set_title(titles[kind], fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, loc="best", frameon=False)
    two = any(getattr(r, "predicted_also", None) is not None for r in rep.records)
    fig.suptitle(f"tensorprog depth check at width {rep.width}: {rep.verdict} (solid: measured; "
                 f"dashed{', dash-dotted' if two else ''}: predicted slopes)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_depth_check(rep, path: str) -> str:
    """Write ``depth_figure(rep)`` to ``path`` (PNG); returns the path."""
    depth_figure(rep).savefig(path, dpi=110)
    return path
