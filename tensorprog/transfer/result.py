"""The result of a sweep: ``Sweep`` (loss grid, best learning rate per width, drift) and ``drift_of``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import TransferError
from ..jsonio import JSONMixin, dumps, from_jsonable, jsonable, read_json

__all__ = ["Sweep", "drift_of"]


def drift_of(widths: Sequence[float], best_lrs: Sequence[float],
             half_steps: Sequence[float] | None = None) -> tuple[float, float]:
    """(slope, uncertainty) of log2(best_lrs) against log2(widths), ignoring ``nan`` entries.

    ``half_steps`` given: the uncertainty is the worst-case slope change when each log2(best lr)
    moves by up to ``half_steps[i]`` (grid resolution). Otherwise: the least-squares standard
    error of the slope from the residuals (``nan`` with fewer than three points). ``nan`` slope
    with fewer than two usable points.
    """
    x = np.log2(np.asarray(widths, dtype=float))
    y = np.log2(np.asarray(best_lrs, dtype=float))
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan, math.nan
    dx = x - x.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ (y - y.mean()) / sxx)
    if half_steps is not None:
        h = np.asarray(half_steps, dtype=float)[ok]
        return slope, float(np.abs(dx) @ h / sxx)
    if len(x) < 3:
        return slope, math.nan
    resid = y - y.mean() - slope * dx
    return slope, float(math.sqrt(float(resid @ resid) / (len(x) - 2) / sxx))


def _refine(xs: np.ndarray, ys: np.ndarray, i: int) -> float:
    """Vertex of the parabola through points i-1, i, i+1 (x = log2 lr); xs[i] if not possible."""
    if i <= 0 or i >= len(xs) - 1:
        return float(xs[i])
    x3, y3 = xs[i - 1:i + 2], ys[i - 1:i + 2]
    if not np.all(np.isfinite(y3)):
        return float(xs[i])
    a, b, _ = np.polyfit(x3, y3, 2)
    if not a > 0:
        return float(xs[i])
    return float(np.clip(-b / (2 * a), x3[0], x3[2]))


def from_nested(v, fill=math.inf) -> np.ndarray:
    """Nested lists of numbers -> float array; ``None`` (files written before the
    ``{"nonfinite": ...}`` encoding) -> ``fill``."""
    def conv(x):
        if isinstance(x, list):
            return [conv(e) for e in x]
        return fill if x is None else float(x)
    return np.asarray(conv(v), dtype=float)


@dataclass(eq=False)
class Sweep(JSONMixin):
    """Result of ``sweep``: final training losses on a (width, lr, seed) grid and what follows.

    ``losses[i, j, k]``: final training loss at ``widths[i]``, ``lrs[j]``, ``seeds[k]`` (``inf`` =
    diverged). Build one by hand from a known (W, L) or (W, L, S) grid to analyse external runs:
    ``Sweep(widths=(64, 128), lrs=(1e-3, 2e-3), losses=[[1.0, 2.0], [2.0, 1.0]])``.
    ``histories`` (W, L, S, steps): every training loss (``nan`` after a divergence);
    ``times`` (W, L, S): seconds per trial; ``meta``: how the sweep was run.
    ``pending`` (W, L, S) bool, only for a sweep stopped early (Ctrl-C): the trials not run, whose
    losses are ``nan`` (not diverged) and which no minimum is taken over; ``partial`` is then true.
    """

    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    losses: Any
    seeds: tuple[int, ...] = (0,)
    histories: Any = None
    times: Any = None
    name: str = ""
    meta: dict = field(default_factory=dict)
    pending: Any = None

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.lrs = tuple(float(lr) for lr in self.lrs)
        self.seeds = tuple(int(s) for s in self.seeds)
        losses = np.asarray(self.losses, dtype=float)
        if losses.ndim == 2:
            losses = losses[:, :, None]
        shape = (len(self.widths), len(self.lrs), len(self.seeds))
        if losses.shape != shape:
            raise TransferError(f"losses has shape {losses.shape}; widths x lrs x seeds is {shape}")
        pending = np.zeros(shape, dtype=bool) if self.pending is None else \
            np.asarray(self.pending, dtype=bool).reshape(shape)
        self.pending = pending if pending.any() else None
        losses = np.where((np.isnan(losses) | (losses == -np.inf)) & ~pending, np.inf, losses)
        self.losses = np.where(pending, np.nan, losses)
        if self.histories is not None:
            self.histories = np.asarray(self.histories, dtype=float)
        if self.times is not None:
            self.times = np.asarray(self.times, dtype=float)

    # ---- the grid and its minima
    @property
    def grid(self) -> np.ndarray:
        """(W, L) final loss averaged over seeds; ``inf`` where any seed diverged."""
        return self.losses.mean(axis=2)

    @property
    def diverged(self) -> np.ndarray:
        """(W, L, S) bool: the trial's loss went non-finite."""
        return np.isinf(self.losses)

    @property
    def partial(self) -> bool:
        """The sweep was stopped before every trial ran (see ``pending``)."""
        return self.pending is not None

    @property
    def log2_lrs(self) -> np.ndarray:
        return np.log2(np.asarray(self.lrs))

    @property
    def best_index(self) -> np.ndarray:
        """(W,) index into ``lrs`` of the lowest grid loss per width; -1 if all diverged."""
        g = self.grid
        idx = np.argmin(np.where(np.isnan(g), np.inf, g), axis=1)  # nan: a trial not run
        return np.where(np.isfinite(g).any(axis=1), idx, -1)

    @property
    def best_lr(self) -> tuple[float, ...]:
        """Best grid learning rate per width (``nan`` where every lr diverged)."""
        return tuple(self.lrs[i] if i >= 0 else math.nan for i in self.best_index)

    @property
    def best_loss(self) -> tuple[float, ...]:
        g = self.grid
        return tuple(float(g[w, i]) if i >= 0 else math.inf for w, i in enumerate(self.best_index))

    @property
    def at_edge(self) -> tuple[bool, ...]:
        """Per width: the best lr is the smallest or largest of the grid (the optimum may lie
        outside it)."""
        return tuple(bool(i == 0 or i == len(self.lrs) - 1) for i in self.best_index)

    @property
    def _half_steps(self) -> np.ndarray:
        x = self.log2_lrs
        out = []
        for i in self.best_index:
            if i < 0:
                out.append(math.nan)
                continue
            gaps = [x[i] - x[i - 1]] if i > 0 else []
            gaps += [x[i + 1] - x[i]] if i < len(x) - 1 else []
            out.append(max(gaps) / 2 if gaps else math.nan)
        return np.asarray(out)

    @property
    def refined_best_lr(self) -> tuple[float, ...]:
        """Best lr per width refined by a parabola in (log2 lr, loss) through the grid minimum and its
        neighbours (the grid value where a neighbour is missing or diverged)."""
        x, g = self.log2_lrs, self.grid
        return tuple(2.0 ** _refine(x, g[w], i) if i >= 0 else math.nan
                     for w, i in enumerate(self.best_index))

    # ---- drift
    @property
    def drift(self) -> float:
        """Least-squares slope of log2(best lr) vs log2(width): change per doubling of width."""
        return drift_of(self.widths, self.best_lr, self._half_steps)[0]

    @property
    def drift_err(self) -> float:
        """Worst-case change of ``drift`` from the grid resolution (+- half a grid step per width)."""
        return drift_of(self.widths, self.best_lr, self._half_steps)[1]

    @property
    def drift_refined(self) -> float:
        """``drift`` of the parabola-refined minima."""
        return drift_of(self.widths, self.refined_best_lr)[0]

    @property
    def drift_refined_err(self) -> float:
        """Least-squares standard error of ``drift_refined`` (``nan`` for two widths)."""
        return drift_of(self.widths, self.refined_best_lr)[1]

    # ---- output
    def to_dict(self, histories: bool = True) -> dict:
        """JSON-ready dict (``histories=False`` leaves out the per-step losses); non-finite
        numbers (diverged runs, trials not run) are encoded by ``to_json`` as in
        ``tensorprog.jsonio``: ``{"nonfinite": "inf"}`` / ``{"nonfinite": "nan"}``."""
        d = {
            "name": self.name,
            "widths": list(self.widths),
            "lrs": list(self.lrs),
            "seeds": list(self.seeds),
            "losses": self.losses.tolist(),
            "grid": self.grid.tolist(),
            "diverged": self.diverged.tolist(),
            "best_lr": list(self.best_lr),
            "refined_best_lr": list(self.refined_best_lr),
            "best_loss": list(self.best_loss),
            "at_edge": list(self.at_edge),
            "drift": self.drift,
            "drift_err": self.drift_err,
            "drift_refined": self.drift_refined,
            "drift_refined_err": self.drift_refined_err,
            "times": None if self.times is None else self.times.tolist(),
            "meta": self.meta,
            "pending": None if self.pending is None else self.pending.tolist(),
        }
        if histories and self.histories is not None:
            d["histories"] = self.histories.tolist()
        return d

    def __eq__(self, other):
        if not isinstance(other, Sweep):
            return NotImplemented
        return jsonable(self.to_dict()) == jsonable(other.to_dict())

    @property
    def verdict(self) -> str:
        """The short answer: "transfers" (|drift| <= 0.25: the best learning rate stays put across
        widths), "drifts" (it moves), or "inconclusive" (a best lr at the edge of the grid, a partial
        sweep, or no drift to measure)."""
        d = self.drift_refined if math.isfinite(self.drift_refined) else self.drift
        if not math.isfinite(d) or any(self.at_edge) or self.partial:
            return "inconclusive"
        return "transfers" if abs(d) <= 0.25 else "drifts"

    def to_json(self, path: str | None = None, histories: bool = True) -> str:
        """JSON text (written to ``path`` when given); ``from_json`` reads it back into an equal
        ``Sweep`` (``histories=False``: without the per-step losses)."""
        text = dumps(self.to_dict(histories=histories))
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "Sweep":
        """Inverse of ``to_dict`` (plain or decoded JSON; ``None`` losses, as files written
        before the ``{"nonfinite": ...}`` encoding have them, read back as ``inf``)."""
        d = from_jsonable(d)
        return cls(widths=d["widths"], lrs=d["lrs"], seeds=d.get("seeds", (0,)),
                   losses=from_nested(d["losses"]),
                   histories=(None if d.get("histories") is None
                              else from_nested(d["histories"], math.nan)),
                   times=None if d.get("times") is None else from_nested(d["times"], math.nan),
                   name=d.get("name", ""), meta=d.get("meta", {}), pending=d.get("pending"))

    @classmethod
    def from_json(cls, source: str) -> "Sweep":
        """Inverse of ``to_json``: ``source`` is a path to a JSON file or the JSON text itself."""
        return cls.from_dict(read_json(source))

    def summary(self) -> str:
        """One line: the drift with its uncertainties."""
        return (f"drift of log2(best lr) per width doubling: {self.drift:+.2f} +- {self.drift_err:.2f} "
                f"(grid argmin, +- half a grid step); {self.drift_refined:+.2f} +- "
                f"{self.drift_refined_err:.2f} (parabola-refined, least-squares stderr)")

    def __str__(self) -> str:
        g = self.grid
        head = f"muTransfer sweep{': ' + self.name if self.name else ''}"
        info = []
        if "steps" in self.meta:
            info.append(f"{self.meta['steps']} steps, final loss = mean of the last "
                        f"{self.meta.get('average_last', 1)}")
        info.append(f"{len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''}")
        if "wall_s" in self.meta:
            info.append(f"{self.meta['wall_s']:.0f} s")
        lines = [f"{head} ({', '.join(info)})"]
        if self.partial:
            lines.append(f"PARTIAL: {self.meta.get('partial', 'stopped early')}; - = not run")
        cells = [f"{v:8.3f}" if math.isfinite(v) else "     inf" if math.isinf(v) else "       -"
                 for v in g.ravel()]
        lines.append("  log2 lr |" + "".join(f"{x:8.2f}" for x in self.log2_lrs))
        for i, w in enumerate(self.widths):
            row = cells[i * len(self.lrs):(i + 1) * len(self.lrs)]
            j = self.best_index[i]
            if j >= 0:
                row[j] = row[j][:-1] + "*"
            lines.append(f"{w:9d} |" + "".join(row))
        lines.append("best lr per width (* above; inf = diverged):")
        for w, lr, rl, edge in zip(self.widths, self.best_lr, self.refined_best_lr, self.at_edge):
            if not math.isfinite(lr):
                lines.append(f"  {w:6d}: every learning rate diverged")
                continue
            lines.append(f"  {w:6d}: {lr:.3g} (2^{math.log2(lr):.2f}); "
                         f"refined {rl:.3g} (2^{math.log2(rl):.2f})"
                         + ("  [edge of the lr grid: widen lrs]" if edge else ""))
        lines.append(self.summary())
        return "\n".join(lines)

    def plot(self, path: str | None = None, *, ax=None, title: str | None = None):
        """Training loss vs log2(lr), one curve per width coloured by width (TP5 Figure 1); the best
        lr of each width is a filled dot, diverged runs are crosses on the top edge. Saves a PNG to
        ``path`` (when given, and no ``ax``); returns the matplotlib Figure (or ``ax``'s figure)."""
        if ax is not None:
            from .plots import plot_one

            plot_one(self, ax, title)
            return ax.figure
        from .plots import plot_sweeps

        return plot_sweeps([self], path, titles=[title] if title else None)
