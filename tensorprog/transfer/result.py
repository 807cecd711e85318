"""The result of a sweep: ``Sweep`` (loss grid, best value of one hyperparameter per width, drift),
``HPSweeps`` (one ``Sweep`` per hyperparameter) and ``drift_of``.

Units of the drift (x = log2 width, so "per width doubling"): for ``scale="log"`` (the learning
rate, init scale, output multiplier, weight decay: multiplicative quantities, TP5 arXiv 2203.03466
Figures 1 and 3 plot them on log axes) the optimum is measured in log2 units, so a drift of -1 means
the best value halves per doubling; for ``scale="linear"`` (warmup steps, any value <= 0, where a
logarithm makes no sense) in the hyperparameter's own units; for ``scale="categorical"`` (the
schedule) there is no slope: the sweep reports the best choice per width and whether it changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..errors import TransferError
from ..jsonio import JSONMixin, dumps, from_jsonable, jsonable, read_json

__all__ = ["Sweep", "HPSweeps", "drift_of", "SCALES"]

SCALES = ("log", "linear", "categorical")


def drift_of(widths: Sequence[float], best_lrs: Sequence[float],
             half_steps: Sequence[float] | None = None, scale: str = "log") -> tuple[float, float]:
    """(slope, uncertainty) of log2(best_lrs) against log2(widths), ignoring ``nan`` entries
    (``scale="linear"``: of best_lrs itself against log2(widths)).

    ``half_steps`` given: the uncertainty is the worst-case slope change when each log2(best lr)
    moves by up to ``half_steps[i]`` (grid resolution). Otherwise: the least-squares standard
    error of the slope from the residuals (``nan`` with fewer than three points). ``nan`` slope
    with fewer than two usable points.
    """
    x = np.log2(np.asarray(widths, dtype=float))
    y = np.asarray(best_lrs, dtype=float)
    y = np.log2(y) if scale == "log" else y
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


def write_json(d: dict, path: str | None) -> str:
    """``d`` as JSON text (``jsonio.dumps``), also written to ``path`` when given."""
    text = dumps(d)
    if path is not None:
        with open(path, "w") as fh:
            fh.write(text)
    return text


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
    """Result of ``sweep``: final training losses on a (width, value, seed) grid and what follows.

    ``hp`` names the swept hyperparameter (default "lr"); its values are ``lrs`` (the field keeps
    the name of the original learning-rate sweep; ``values`` is the same tuple) and ``scale`` says
    how its optimum is measured ("log", "linear", "categorical": module docs).
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
    hp: str = "lr"
    scale: str = "log"
    along: str = "width"

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if self.scale not in SCALES:
            raise TransferError(f"scale must be one of {SCALES}; got {self.scale!r}")
        if self.scale == "categorical":
            self.lrs = tuple(self.lrs)
        else:
            self.lrs = tuple(float(lr) for lr in self.lrs)
            if self.scale == "log" and any(not v > 0 for v in self.lrs):
                raise TransferError(f"scale='log' needs positive values of {self.hp}; got "
                                    f"{list(self.lrs)} (use scale='linear')")
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

    def at_widths(self, widths) -> "Sweep":
        """The same sweep restricted to some of its widths (e.g. without the narrowest, to see
        whether a drift comes from one pre-asymptotic width); at least two."""
        keep = [self.widths.index(int(w)) for w in widths if int(w) in self.widths]
        if len(keep) != len(list(widths)) or len(set(keep)) < 2:
            raise TransferError(f"at_widths needs two or more of this sweep's widths "
                                f"{list(self.widths)}; got {list(widths)}")
        keep = sorted(set(keep))
        pick = (lambda a: None if a is None else np.asarray(a)[keep])
        return replace(self, widths=tuple(self.widths[i] for i in keep), losses=self.losses[keep],
                       histories=pick(self.histories), times=pick(self.times),
                       pending=pick(self.pending))

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
    def values(self) -> tuple:
        """The swept values of ``hp`` (= ``lrs``)."""
        return self.lrs

    @property
    def coords(self) -> np.ndarray:
        """Where the values sit on the axis the optimum is measured on: log2(value) ("log"), the
        value ("linear"), its index ("categorical")."""
        if self.scale == "categorical":
            return np.arange(len(self.lrs), dtype=float)
        v = np.asarray(self.lrs, dtype=float)
        return np.log2(v) if self.scale == "log" else v

    @property
    def axis_label(self) -> str:
        name = "learning rate" if self.hp == "lr" else self.hp
        return f"log2 {name}" if self.scale == "log" else name

    @property
    def log2_lrs(self) -> np.ndarray:
        return np.log2(np.asarray(self.lrs, dtype=float))

    @property
    def best_index(self) -> np.ndarray:
        """(W,) index into ``lrs`` of the lowest grid loss per width; -1 if all diverged."""
        g = self.grid
        idx = np.argmin(np.where(np.isnan(g), np.inf, g), axis=1)  # nan: a trial not run
        return np.where(np.isfinite(g).any(axis=1), idx, -1)

    @property
    def best_lr(self) -> tuple:
        """Best grid value per width (``nan`` where every value diverged)."""
        return tuple(self.lrs[i] if i >= 0 else math.nan for i in self.best_index)

    @property
    def best_value(self) -> tuple:
        """Best grid value of ``hp`` per width (= ``best_lr``)."""
        return self.best_lr

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
        x = self.coords
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
    def refined_best_lr(self) -> tuple:
        """Best value per width refined by a parabola in (coordinate, loss) through the grid minimum
        and its neighbours (the grid value where a neighbour is missing or diverged, and always for
        a categorical hyperparameter)."""
        if self.scale == "categorical":
            return self.best_lr
        x, g = self.coords, self.grid
        back = (lambda c: 2.0 ** c) if self.scale == "log" else (lambda c: c)
        return tuple(back(_refine(x, g[w], i)) if i >= 0 else math.nan
                     for w, i in enumerate(self.best_index))

    @property
    def refined_best_value(self) -> tuple:
        return self.refined_best_lr

    # ---- drift
    def _drift(self, refined: bool) -> tuple[float, float]:
        if self.scale == "categorical":
            return math.nan, math.nan
        if refined:
            return drift_of(self.widths, self.refined_best_lr, scale=self.scale)
        return drift_of(self.widths, self.best_lr, self._half_steps, scale=self.scale)

    @property
    def drift(self) -> float:
        """Least-squares slope of the best value's coordinate (log2 for scale "log") vs
        log2(width): change per doubling of width (``nan`` for a categorical hyperparameter)."""
        return self._drift(False)[0]

    @property
    def drift_err(self) -> float:
        """Worst-case change of ``drift`` from the grid resolution (+- half a grid step per width)."""
        return self._drift(False)[1]

    @property
    def drift_refined(self) -> float:
        """``drift`` of the parabola-refined minima."""
        return self._drift(True)[0]

    @property
    def drift_refined_err(self) -> float:
        """Least-squares standard error of ``drift_refined`` (``nan`` for two widths)."""
        return self._drift(True)[1]

    # ---- output
    def to_dict(self, histories: bool = True) -> dict:
        """JSON-ready dict (``histories=False`` leaves out the per-step losses); non-finite
        numbers (diverged runs, trials not run) are encoded by ``to_json`` as in
        ``tensorprog.jsonio``: ``{"nonfinite": "inf"}`` / ``{"nonfinite": "nan"}``."""
        d = {
            "name": self.name,
            "hp": self.hp,
            "scale": self.scale,
            "along": self.along,
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
        """The short answer: "transfers" (the best value stays put across widths), "drifts" (it
        moves), or "inconclusive" (a best value at the edge of the grid, a partial sweep, or no drift to measure).
        Stays put: |drift| <= 0.25 log2 units per doubling (scale "log"); |drift| within its
        grid-resolution uncertainty (scale "linear"); the same choice at every width
        ("categorical", where the edge of a list of choices means nothing)."""
        if self.partial:
            return "inconclusive"
        if self.scale == "categorical":
            best = [b for b in self.best_lr if not (isinstance(b, float) and math.isnan(b))]
            if len(best) < 2:
                return "inconclusive"
            return "transfers" if len(set(best)) == 1 else "drifts"
        d = self.drift_refined if math.isfinite(self.drift_refined) else self.drift
        if not math.isfinite(d) or any(self.at_edge) or self.partial:
            return "inconclusive"
        bound = 0.25 if self.scale == "log" else self.drift_err
        return "transfers" if abs(d) <= bound else "drifts"

    def to_json(self, path: str | None = None, histories: bool = True) -> str:
        """JSON text (written to ``path`` when given); ``from_json`` reads it back into an equal
        ``Sweep`` (``histories=False``: without the per-step losses)."""
        return write_json(self.to_dict(histories=histories), path)

    @classmethod
    def from_dict(cls, d: dict) -> "Sweep":
        """Inverse of ``to_dict`` (plain or decoded JSON; ``None`` losses, as files written
        before the ``{"nonfinite": ...}`` encoding have them, read back as ``inf``)."""
        d = from_jsonable(d)
        return cls(widths=d["widths"], lrs=d["lrs"], seeds=d.get("seeds", (0,)),
                   hp=d.get("hp", "lr"), scale=d.get("scale", "log"), along=d.get("along", "width"),
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
        if self.scale == "categorical":
            best = ", ".join(str(b) for b in self.best_lr)
            return f"best {self.hp} per {self.along}: {best} ({self.verdict})"
        what = f"log2(best {self.hp})" if self.scale == "log" else f"best {self.hp}"
        return (f"drift of {what} per {self.along} doubling: {self.drift:+.2f} +- {self.drift_err:.2f} "
                f"(grid argmin, +- half a grid step); {self.drift_refined:+.2f} +- "
                f"{self.drift_refined_err:.2f} (parabola-refined, least-squares stderr)")

    def __str__(self) -> str:
        g = self.grid
        head = f"muTransfer sweep of {self.hp}{': ' + self.name if self.name else ''}"
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
        label = {"log": f"log2 {self.hp}", "linear": self.hp, "categorical": self.hp}[self.scale]
        heads = [f"{x:8.2f}" for x in self.coords] if self.scale != "categorical" else \
            [f"{str(v)[:7]:>8s}" for v in self.lrs]
        lines.append(f"{label[-9:]:>9s} |" + "".join(heads))
        for i, w in enumerate(self.widths):
            row = cells[i * len(self.lrs):(i + 1) * len(self.lrs)]
            j = self.best_index[i]
            if j >= 0:
                row[j] = row[j][:-1] + "*"
            lines.append(f"{w:9d} |" + "".join(row))
        lines.append(f"best {self.hp} per {self.along} (* above; inf = diverged):")
        for w, j, lr, rl, edge in zip(self.widths, self.best_index, self.best_lr,
                                      self.refined_best_lr, self.at_edge):
            if j < 0:
                lines.append(f"  {w:6d}: every {'learning rate' if self.hp == 'lr' else 'value'} "
                             "diverged")
                continue
            if self.scale == "categorical":
                lines.append(f"  {w:6d}: {lr}")
                continue
            pow2 = (lambda v: f" (2^{math.log2(v):.2f})") if self.scale == "log" else (lambda v: "")
            lines.append(f"  {w:6d}: {lr:.3g}{pow2(lr)}; refined {rl:.3g}{pow2(rl)}"
                         + (f"  [edge of the {self.hp} grid: widen it]" if edge else ""))
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


class HPSweeps(dict):
    """{hyperparameter name: ``Sweep``}, the result of ``sweep(..., hparams={...})``: each
    hyperparameter swept with the others at their base values (TP5 Figure 3)."""

    def summary(self) -> str:
        """One line per hyperparameter: verdict and drift with its uncertainty."""
        return "\n".join(f"  {name:14s} [{s.verdict}] {s.summary()}" for name, s in self.items())

    def __str__(self) -> str:
        return "\n\n".join(str(s) for s in self.values()) + "\nsummary\n" + self.summary()

    def to_dict(self, histories: bool = False) -> dict:
        return {name: s.to_dict(histories=histories) for name, s in self.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "HPSweeps":
        return cls({name: Sweep.from_dict(v) for name, v in d.items()})

    def to_json(self, path: str | None = None, histories: bool = True) -> str:
        """JSON text (written to ``path`` when given), encoded as ``Sweep.to_json``."""
        return write_json(self.to_dict(histories=histories), path)

    @classmethod
    def from_json(cls, source: str) -> "HPSweeps":
        """What ``to_json`` wrote: a file path or the JSON text."""
        return cls.from_dict(read_json(source))
