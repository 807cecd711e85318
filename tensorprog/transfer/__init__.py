"""muTransfer, measured: sweep the learning rate at several widths and see whether the best one moves.

``sweep(factory, widths, lrs, steps=..., data=...)`` trains every (width, learning rate, seed)
triple from scratch, records the final training loss of each, and returns a ``Sweep``: the loss
grid, the best learning rate per width and the **drift** of log2(best LR) per doubling of width.
That is Figure 1 of Tensor Programs V (TP5, arXiv 2203.03466) as a number: in SP the optimum
moves with width (with Adam, hidden updates grow like lr * n, so the best lr falls roughly like
1/n: drift towards -1); in muP it stays put (drift ~ 0), which is what makes zero-shot transfer of
a small model's tuned learning rate possible.

Quick start::

    import functools
    from tensorprog import zoo
    from tensorprog.transfer import stdlib_text_data, sweep, zoo_optimizer

    data = stdlib_text_data(block_size=32, batch_size=16)          # Python's own sources, no download
    sp = sweep(functools.partial(zoo.GPT, param="sp", block_size=32), widths=(64, 128, 256),
               lrs=[2.0 ** k for k in range(-12, -5)], steps=150, data=data,
               make_optimizer=zoo_optimizer("adam"))
    print(sp)                      # loss grid, best lr per width, drift
    sp.plot("transfer.png")        # training loss vs log2 lr, one curve per width

What each trial does
--------------------
``torch.manual_seed(seed)``; ``model = factory(width)`` (moved to ``device``);
``opt = make_optimizer(model, lr)``; then ``steps`` times: take the next batch, ``out =
forward(model, batch)``, ``l = loss(out, batch)``, record ``l``, backward, step. The **final loss**
is the mean of the last ``average_last`` recorded training losses (default: the last 10% of the
steps, at least 1), which averages out batch-to-batch noise. A trial whose loss becomes NaN or
+-inf is stopped there and recorded as **diverged**: final loss ``inf``, never an exception.
With several seeds, a cell of ``Sweep.grid`` is the mean over seeds, and ``inf`` if any seed
diverged (a learning rate that sometimes blows up is not a good one).

The arguments
-------------
* ``factory(width) -> nn.Module``.
* ``make_optimizer(model, lr) -> torch.optim.Optimizer``: ``lr`` is the swept *base* learning rate;
  per-role muP factors belong inside (``zoo_optimizer(kind)`` does the zoo's per-role groups).
  Default: the zoo's ``make_optimizer(model, "adam", lr)`` for zoo models, ``torch.optim.Adam``
  over all parameters otherwise.
* ``data``: where batches come from, identical for every width and learning rate at a given seed
  (so the curves differ only by the model). Either

  - a callable ``data(width, seed) -> iterable of batches`` (``stdlib_text_data`` and
    ``teacher_student_data`` return such objects; it is called once per trial and must yield at
    least ``steps`` batches), or
  - a list / tuple of batches, a fixed data set, cycled in order by every trial (one batch in a
    list = full-batch training: ``data=[(x, y)]``, not ``data=(x, y)``).

  A one-shot iterator or generator is refused: trials run in other processes and would share it.
* ``forward(model, batch)``: default ``model(batch[0])`` for a tuple / list batch, ``model(batch)``
  for a tensor.
* ``loss(output, batch) -> scalar tensor``: default ``data.loss`` when the data object has one
  (the built-in ones do: next-token cross entropy, mean squared error).

Where trials run (``backend``)
------------------------------
* ``"local"`` (default): a ``concurrent.futures.ProcessPoolExecutor`` with ``workers`` processes
  (default: one per CPU), each running ``threads`` torch threads (default 1: one trial per core is
  the fastest way to fill a machine with small runs). Start method: **forkserver** where the
  platform has it (Linux, macOS; the server imports torch once, so workers start in milliseconds
  instead of seconds; note that this sets the process-wide forkserver preload list), else
  **spawn**. Workers never inherit this process's threads or CUDA state. Everything sent to the
  workers is pickled: ``factory``, ``make_optimizer``, ``loss``, ``forward`` and
  ``data`` must be **module-level functions or classes, or ``functools.partial`` of them** (lambdas
  and functions defined inside functions do not pickle; a ``TransferError`` names the culprit).
  The zoo's ``example(...).factory`` / ``.make_optimizer`` are closures: use
  ``functools.partial(zoo.GPT, param="sp", ...)`` and ``zoo_optimizer("adam")`` instead.
  Scripts that call ``sweep`` must do so under ``if __name__ == "__main__":`` (workers re-import
  the main module).
* ``"serial"``: in this process, one trial after another, with the same ``threads`` setting, so
  results equal the local backend's bit for bit; nothing is pickled. Handy for debugging and GPUs.
* ``"ray"``: each trial is a Ray task (``num_cpus=1``, plus ``ray_options``, e.g.
  ``{"num_gpus": 1}``) on the cluster this process is connected to; ``ray.init()`` is called
  (local instance with ``workers`` CPUs, or ``RAY_ADDRESS``) if it has not been. Ray pickles with
  cloudpickle, so closures work there. Install with ``pip install 'tensorprog[ray]'``; the worker
  nodes need tensorprog (and the modules your factory lives in) importable.

The best learning rate and the drift
------------------------------------
``best_lr[i]`` is the grid learning rate with the lowest ``grid`` loss at ``widths[i]`` (``nan``
if every learning rate diverged). ``drift`` is the least-squares slope of log2(best lr) against
log2(width): the change of log2(best lr) per doubling of width. Its uncertainty comes from the
grid:

* ``drift_err`` (grid resolution): if the loss is locally symmetric in log lr, the true minimiser
  at width i lies within half a grid step h_i of the grid argmin (h_i = half the larger log2 gap
  to its neighbours). The slope is linear in the minima, so the worst case over those intervals
  is ``sum_i |x_i - mean x| h_i / sum_i (x_i - mean x)^2`` with x = log2(width). For four widths
  spaced by 2x and lrs spaced by 2x this is +-0.4: a drift of -1 against 0 is resolved, -0.1
  against 0 is not.
* ``drift_refined`` +- ``drift_refined_err``: the minimum at each width is refined by the vertex
  of the parabola through the grid argmin and its two neighbours in (log2 lr, loss); where a
  neighbour is missing (edge of the grid) or diverged, the grid point is kept. The slope of the
  refined minima comes with its least-squares standard error (residual scatter; ``nan`` for
  two widths).

A minimum on the edge of the grid (``at_edge``) means the best lr may lie outside it; ``str()``
flags it and the drift is then a bound at best: widen ``lrs``.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import math
import multiprocessing as mp
import os
import pickle
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TensorprogError

__all__ = [
    "TransferError", "Sweep", "sweep", "plot_sweeps", "drift_of",
    "StdlibText", "stdlib_text_data", "TeacherStudent", "teacher_student_data",
    "next_token_loss", "mse_loss", "default_forward", "default_optimizer", "zoo_optimizer",
    "BACKENDS", "DEFAULT_CHARSET", "STDLIB_FILES",
]

BACKENDS: tuple[str, ...] = ("local", "serial", "ray")


class TransferError(TensorprogError):
    """A learning-rate sweep could not run (bad arguments, unpicklable pieces, a failing trial)."""


# ---------------------------------------------------------------------------------------------
# Losses, forward, optimizers: module level, so they pickle into worker processes
# ---------------------------------------------------------------------------------------------

def next_token_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    """Cross entropy of ``logits[:, t]`` against token ``t + 1`` of ``batch[0]`` (B, T) (the zoo's
    GPT loss: the batch is the model's input, targets are the input shifted by one)."""
    idx = batch[0] if isinstance(batch, (tuple, list)) else batch
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           idx[:, 1:].reshape(-1).to(logits.device))


def mse_loss(output: torch.Tensor, batch) -> torch.Tensor:
    """Mean squared error of ``output`` against ``batch[1]`` (batch = (inputs, targets))."""
    return F.mse_loss(output, batch[1].to(device=output.device, dtype=output.dtype))


def default_forward(model: nn.Module, batch):
    """``model(batch[0])`` for a tuple / list batch, ``model(batch)`` for a tensor."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    raise TransferError(f"default forward does not know how to feed a {type(batch).__name__} batch "
                        "to the model; pass forward=fn(model, batch) (a module-level function)")


def default_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The zoo's per-role Adam (``zoo.make_optimizer(model, "adam", lr)``) for zoo models, plain
    ``torch.optim.Adam(model.parameters(), lr)`` for anything else."""
    from .. import zoo

    if isinstance(model, zoo.ZooModel):
        return zoo.make_optimizer(model, "adam", lr)
    return torch.optim.Adam(model.parameters(), lr=lr)


def _zoo_make_optimizer(model: nn.Module, lr: float, *, kind: str, **kwargs) -> torch.optim.Optimizer:
    from .. import zoo

    return zoo.make_optimizer(model, kind, lr, **kwargs)


def zoo_optimizer(kind: str = "adam", **kwargs) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
    """A picklable ``make_optimizer(model, lr)`` for zoo models: ``zoo.make_optimizer(model, kind,
    lr, **kwargs)``, i.e. per-role learning-rate groups (lr * lr_scale) for muP, one group for SP."""
    from .. import zoo

    if kind not in zoo.OPTIMIZERS:
        raise TransferError(f"unknown optimizer {kind!r}; choose one of: {', '.join(zoo.OPTIMIZERS)}")
    return functools.partial(_zoo_make_optimizer, kind=kind, **kwargs)


# ---------------------------------------------------------------------------------------------
# Built-in tasks that need no download
# ---------------------------------------------------------------------------------------------

#: 63 characters of Python source (letters case-folded), id 1..63; id 0 = anything else.
DEFAULT_CHARSET = ("\n abcdefghijklmnopqrstuvwxyz0123456789"
                   "_.,()[]:='\"#-+*/<>{}%!@\\|")

#: Standard-library modules read by ``stdlib_text_data``, in this order (present in 3.10-3.13;
#: missing ones are skipped and ``StdlibText.files`` lists what was read).
STDLIB_FILES: tuple[str, ...] = (
    "argparse.py", "dataclasses.py", "difflib.py", "functools.py", "inspect.py", "os.py",
    "pickle.py", "random.py", "shutil.py", "subprocess.py", "tarfile.py", "textwrap.py",
    "threading.py", "typing.py",
)


def _byte_table(vocab) -> np.ndarray:
    """256-entry lookup table byte -> token id for ``vocab`` (see ``stdlib_text_data``)."""
    if isinstance(vocab, str):
        charset = vocab
        if len(set(charset)) != len(charset) or not charset:
            raise TransferError("vocab charset must be a non-empty string of distinct characters")
        if any(ord(c) > 127 for c in charset):
            raise TransferError("vocab charset must be ASCII (the text is read byte by byte)")
        table = np.zeros(256, dtype=np.int64)
        for i, c in enumerate(charset, start=1):
            table[ord(c)] = i
        return table
    if vocab == 64:
        table = _byte_table(DEFAULT_CHARSET)
        for c in range(ord("A"), ord("Z") + 1):
            table[c] = table[c + 32]
        return table
    if vocab == 128:
        table = np.arange(256, dtype=np.int64)
        table[128:] = 0
        return table
    if vocab == 256:
        return np.arange(256, dtype=np.int64)
    raise TransferError(f"vocab must be 64 (Python charset, case-folded), 128 (ASCII), 256 (bytes) "
                        f"or a string of characters; got {vocab!r}")


@functools.lru_cache(maxsize=8)
def _stdlib_corpus(files: tuple[str, ...], vocab) -> tuple[torch.Tensor, tuple[str, ...]]:
    root = os.path.dirname(os.__file__)
    raw, used = [], []
    for name in files:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                raw.append(fh.read())
            used.append(name)
    if not raw:
        raise TransferError(f"none of the standard-library files {files} exist under {root}")
    data = np.frombuffer(b"\n".join(raw), dtype=np.uint8)
    ids = _byte_table(vocab)[data]
    return torch.from_numpy(ids.copy()), tuple(used)


@dataclass(frozen=True)
class StdlibText:
    """Character-level language modelling on Python's own standard-library sources.

    Call it as ``data(width, seed)``: an endless iterator of batches ``(idx,)`` with ``idx`` a
    (batch_size, block_size) int64 tensor of token ids < ``vocab_size``, windows at uniformly random
    offsets drawn by a generator seeded with ``seed`` (independent of ``width``: every width sees
    the same text). ``loss`` is next-token cross entropy; the batch format matches the zoo GPT
    (``zoo.GPT(width, vocab_size=data.vocab_size, block_size=data.block_size)``).
    """

    block_size: int
    batch_size: int
    vocab: Any = 64
    files: tuple[str, ...] = STDLIB_FILES

    loss = staticmethod(next_token_loss)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 1 if isinstance(self.vocab, str) else int(self.vocab)

    def tokens(self) -> torch.Tensor:
        """The whole corpus as token ids (read once per process)."""
        return _stdlib_corpus(tuple(self.files), self.vocab)[0]

    def files_read(self) -> tuple[str, ...]:
        return _stdlib_corpus(tuple(self.files), self.vocab)[1]

    def __call__(self, width: int, seed: int) -> Iterator[tuple[torch.Tensor]]:
        tokens = self.tokens()
        gen = torch.Generator().manual_seed(1_000_003 * int(seed) + 17)
        span = tokens.numel() - self.block_size
        offsets = torch.arange(self.block_size)
        while True:
            starts = torch.randint(span, (self.batch_size,), generator=gen)
            yield (tokens[starts[:, None] + offsets],)


def stdlib_text_data(block_size: int = 32, batch_size: int = 16, vocab: Any = 64,
                     files: Sequence[str] = STDLIB_FILES) -> StdlibText:
    """Char-level LM batches from Python's standard library (``os.path.dirname(os.__file__)``).

    ``files`` (relative to that folder) are read in order, as bytes, joined by newlines, and mapped
    to ids by ``vocab``: 64 (default: ``DEFAULT_CHARSET``, the 63 most common characters of Python
    source with A-Z folded to a-z, id 0 for everything else; the zoo GPT's default vocab_size),
    128 (ASCII codes, non-ASCII bytes -> 0), 256 (raw bytes), or a string of ASCII characters
    (ids 1..len, 0 = other; vocab_size = len + 1). Deterministic for a given Python installation
    (about 0.7 MB of text on 3.11); ``files_read()`` says which files were found.
    """
    if block_size < 2 or batch_size < 1:
        raise TransferError(f"block_size must be >= 2 and batch_size >= 1; "
                            f"got {block_size}, {batch_size}")
    _byte_table(vocab)
    data = StdlibText(int(block_size), int(batch_size), vocab, tuple(files))
    if data.tokens().numel() <= block_size:
        raise TransferError(f"the standard-library text is shorter than block_size={block_size}")
    return data


@functools.lru_cache(maxsize=8)
def _teacher(d_in: int, d_out: int, width: int, depth: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(int(seed))
    dims = [d_in] + [width] * depth + [d_out]
    return tuple(torch.randn(o, i, generator=gen) / math.sqrt(i) for i, o in zip(dims[:-1], dims[1:]))


@dataclass(frozen=True)
class TeacherStudent:
    """Online regression onto a fixed random teacher: x ~ N(0, I_d_in), y = teacher(x) + noise.

    The teacher is a tanh MLP d_in -> teacher_width (x teacher_depth) -> d_out, weights
    N(0, 1/fan_in) drawn from ``teacher_seed`` (the same for every trial), no biases, outputs
    rescaled to unit variance per coordinate at init (measured on 4096 fixed inputs). ``data(width,
    seed)`` yields endless fresh batches ``(x, y)`` from a generator seeded with ``seed``; ``loss``
    is the mean squared error; matches the zoo MLP's default d_in=32, d_out=10.
    """

    d_in: int = 32
    d_out: int = 10
    batch_size: int = 64
    teacher_width: int = 256
    teacher_depth: int = 2
    noise: float = 0.0
    teacher_seed: int = 1234

    loss = staticmethod(mse_loss)

    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        weights = _teacher(self.d_in, self.d_out, self.teacher_width, self.teacher_depth,
                           self.teacher_seed)
        h = x
        for i, w in enumerate(weights):
            h = h @ w.T
            if i < len(weights) - 1:
                h = torch.tanh(h)
        return h / self._scale()

    def _scale(self) -> torch.Tensor:
        return _teacher_scale(self.d_in, self.d_out, self.teacher_width, self.teacher_depth,
                              self.teacher_seed)

    def __call__(self, width: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(1_000_003 * int(seed) + 29)
        while True:
            x = torch.randn(self.batch_size, self.d_in, generator=gen)
            y = self.teacher(x)
            if self.noise:
                y = y + self.noise * torch.randn(y.shape, generator=gen)
            yield x, y


@functools.lru_cache(maxsize=8)
def _teacher_scale(d_in, d_out, width, depth, seed) -> torch.Tensor:
    weights = _teacher(d_in, d_out, width, depth, seed)
    h = torch.randn(4096, d_in, generator=torch.Generator().manual_seed(int(seed) + 1))
    for i, w in enumerate(weights):
        h = h @ w.T
        if i < len(weights) - 1:
            h = torch.tanh(h)
    return h.std(dim=0).clamp_min(1e-6)


def teacher_student_data(d_in: int = 32, d_out: int = 10, batch_size: int = 64, *,
                         teacher_width: int = 256, teacher_depth: int = 2, noise: float = 0.0,
                         teacher_seed: int = 1234) -> TeacherStudent:
    """Synthetic teacher-student regression for MLPs (see ``TeacherStudent``)."""
    if min(d_in, d_out, batch_size, teacher_width, teacher_depth) < 1 or noise < 0:
        raise TransferError("teacher_student_data: sizes must be >= 1 and noise >= 0")
    return TeacherStudent(int(d_in), int(d_out), int(batch_size), int(teacher_width),
                          int(teacher_depth), float(noise), int(teacher_seed))


# ---------------------------------------------------------------------------------------------
# Drift: least-squares slope of log2(best lr) against log2(width), with its uncertainty
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------

def _finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _nested(a: np.ndarray):
    if a.ndim == 0:
        return _finite_or_none(a)
    return [_nested(s) for s in a]


def _from_nested(v, fill=math.inf) -> np.ndarray:
    def conv(x):
        if isinstance(x, list):
            return [conv(e) for e in x]
        return fill if x is None else float(x)
    return np.asarray(conv(v), dtype=float)


@dataclass
class Sweep:
    """Result of ``sweep``: final training losses on a (width, lr, seed) grid and what follows.

    ``losses[i, j, k]``: final training loss at ``widths[i]``, ``lrs[j]``, ``seeds[k]`` (``inf`` =
    diverged). Build one by hand from a known (W, L) or (W, L, S) grid to analyse external runs:
    ``Sweep(widths=(64, 128), lrs=(1e-3, 2e-3), losses=[[1.0, 2.0], [2.0, 1.0]])``.
    ``histories`` (W, L, S, steps): every training loss (``nan`` after a divergence);
    ``times`` (W, L, S): seconds per trial; ``meta``: how the sweep was run.
    """

    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    losses: Any
    seeds: tuple[int, ...] = (0,)
    histories: Any = None
    times: Any = None
    name: str = ""
    meta: dict = field(default_factory=dict)

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
        losses = np.where(np.isnan(losses) | (losses == -np.inf), np.inf, losses)
        self.losses = losses
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
        return ~np.isfinite(self.losses)

    @property
    def log2_lrs(self) -> np.ndarray:
        return np.log2(np.asarray(self.lrs))

    @property
    def best_index(self) -> np.ndarray:
        """(W,) index into ``lrs`` of the lowest grid loss per width; -1 if all diverged."""
        g = self.grid
        idx = np.argmin(g, axis=1)
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
    def to_dict(self, histories: bool = False) -> dict:
        """JSON-ready dict; non-finite numbers (diverged runs, missing minima) become ``None``."""
        d = {
            "name": self.name,
            "widths": list(self.widths),
            "lrs": list(self.lrs),
            "seeds": list(self.seeds),
            "losses": _nested(self.losses),
            "grid": _nested(self.grid),
            "diverged": self.diverged.tolist(),
            "best_lr": [_finite_or_none(v) for v in self.best_lr],
            "refined_best_lr": [_finite_or_none(v) for v in self.refined_best_lr],
            "best_loss": [_finite_or_none(v) for v in self.best_loss],
            "at_edge": list(self.at_edge),
            "drift": _finite_or_none(self.drift),
            "drift_err": _finite_or_none(self.drift_err),
            "drift_refined": _finite_or_none(self.drift_refined),
            "drift_refined_err": _finite_or_none(self.drift_refined_err),
            "times": None if self.times is None else _nested(self.times),
            "meta": self.meta,
        }
        if histories and self.histories is not None:
            d["histories"] = _nested(self.histories)
        return d

    def to_json(self, path: str | None = None, histories: bool = False) -> str:
        text = json.dumps(self.to_dict(histories=histories), indent=1, allow_nan=False, default=str)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "Sweep":
        """Inverse of ``to_dict`` (``None`` losses read back as ``inf``)."""
        return cls(widths=d["widths"], lrs=d["lrs"], seeds=d.get("seeds", (0,)),
                   losses=_from_nested(d["losses"]),
                   histories=(None if d.get("histories") is None
                              else _from_nested(d["histories"], math.nan)),
                   times=None if d.get("times") is None else _from_nested(d["times"], math.nan),
                   name=d.get("name", ""), meta=d.get("meta", {}))

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
        cells = [f"{v:8.3f}" if math.isfinite(v) else "     inf" for v in g.ravel()]
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
            _plot_one(self, ax, title)
            return ax.figure
        return plot_sweeps([self], path, titles=[title] if title else None)


def _ylim(s: Sweep) -> tuple[float, float]:
    """y range showing every minimum and the curves around them; very high losses are cut off."""
    finite = s.grid[np.isfinite(s.grid)]
    if not finite.size:
        return 0.0, 1.0
    lo, med, hi = float(finite.min()), float(np.median(finite)), float(finite.max())
    top = min(hi, lo + 3.0 * (med - lo)) if med > lo else hi
    pad = 0.05 * (top - lo) if top > lo else 0.1 * max(abs(lo), 1.0)
    return lo - pad, top + pad


def _plot_one(s: Sweep, ax, title: str | None, ylim: tuple[float, float] | None = None) -> None:
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


def plot_sweeps(sweeps: Sequence[Sweep], path: str | None = None, *,
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
        _plot_one(s, ax, titles[k] if titles else None, shared)
    fig.tight_layout()
    if path is not None:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


# ---------------------------------------------------------------------------------------------
# Running the trials
# ---------------------------------------------------------------------------------------------

@dataclass
class _Config:
    factory: Callable
    make_optimizer: Callable
    loss: Callable
    data: Any                 # callable (width, seed) -> iterable, or a list of batches
    forward: Callable
    steps: int
    average_last: int
    warmup: int
    device: str
    threads: int


@dataclass
class _Result:
    key: tuple[int, int, int]
    final: float
    history: list
    seconds: float
    error: str | None = None


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, tuple):
        return tuple(_to_device(b, device) for b in batch)
    if isinstance(batch, list):
        return [_to_device(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_iter(data, width: int, seed: int) -> Iterator:
    if isinstance(data, (list, tuple)):
        return _cycle(data)
    return iter(data(width, seed))


def _cycle(batches) -> Iterator:
    while True:
        yield from batches


def _train(cfg: _Config, width: int, lr: float, seed: int) -> tuple[float, list]:
    device = torch.device(cfg.device)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    model = cfg.factory(width).to(device)
    model.train()
    opt = cfg.make_optimizer(model, lr)
    base = [group["lr"] for group in opt.param_groups]
    batches = _batch_iter(cfg.data, width, seed)
    history: list[float] = []
    for step in range(cfg.steps):
        if cfg.warmup:
            f = min(1.0, (step + 1) / cfg.warmup)
            for group, b in zip(opt.param_groups, base):
                group["lr"] = b * f
        try:
            batch = next(batches)
        except StopIteration:
            raise TransferError(f"data({width}, {seed}) yielded only {step} batches; the sweep needs "
                                f"steps={cfg.steps}") from None
        batch = _to_device(batch, device)
        out = cfg.forward(model, batch)
        loss = cfg.loss(out, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            history.append(math.inf)
            return math.inf, history
        history.append(value)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(np.mean(history[-cfg.average_last:])), history


def _run_trial(cfg: _Config, key: tuple[int, int, int], width: int, lr: float, seed: int) -> _Result:
    """One trial, in whatever process; exceptions come back as text (they may not pickle)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    try:
        final, history = _train(cfg, width, lr, seed)
        return _Result(key, final, history, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 -- reported with the trial's coordinates by the parent
        msg = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        return _Result(key, math.nan, [], time.perf_counter() - t0, error=msg)
    finally:
        torch.set_num_threads(threads)


_WORKER_CFG: _Config | None = None


def _worker_init(cfg_bytes: bytes) -> None:
    global _WORKER_CFG
    torch.set_num_threads(1)
    _WORKER_CFG = pickle.loads(cfg_bytes)


def _worker_trial(key, width, lr, seed) -> _Result:
    return _run_trial(_WORKER_CFG, key, width, lr, seed)


def _ray_trial(cfg, key, width, lr, seed) -> _Result:
    return _run_trial(cfg, key, width, lr, seed)


#: Modules the forkserver imports once, so that forked workers start warm (torch's optimizers
#: import torch._dynamo on first construction: about a second per fresh process otherwise).
_PRELOAD = ["__main__", "torch", "torch._dynamo", "tensorprog.zoo", "tensorprog.transfer"]


def _mp_context():
    """forkserver (workers forked from one warm server process that imported torch once) where the
    platform has it, else spawn. Either way workers never inherit this process's threads or CUDA
    state, and everything they run is pickled."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


def _describe(obj) -> str:
    if isinstance(obj, functools.partial):
        return f"functools.partial({_describe(obj.func)}, ...)"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', '?')}.{name}"


def _check_picklable(parts: dict[str, Any]) -> None:
    main = sys.modules.get("__main__")
    interactive = main is not None and not getattr(main, "__file__", None)
    for what, obj in parts.items():
        try:
            pickle.dumps(obj)
        except Exception as e:  # noqa: BLE001 -- any pickling failure means the same thing
            raise TransferError(
                f"{what} ({_describe(obj)}) cannot be sent to worker processes: {type(e).__name__}: "
                f"{e}. backend='local' pickles everything it sends; define {what} as a module-level "
                "function or class (or a functools.partial of one), not a lambda or a function "
                "defined inside another function; or run with backend='serial' (in this process) "
                "or backend='ray' (cloudpickle)") from None
        target = obj.func if isinstance(obj, functools.partial) else obj
        if interactive and getattr(target, "__module__", None) == "__main__":
            raise TransferError(
                f"{what} ({_describe(obj)}) is defined in an interactive session (__main__ has no "
                "file), which spawned worker processes cannot import; move it into a module, or "
                "use backend='serial' or backend='ray'")


def _check_sizes(values, what: str, cast, minimum: int, why: str) -> tuple:
    try:
        seq = [cast(v) for v in values]
    except (TypeError, ValueError):
        raise TransferError(f"{what} must be a sequence of numbers; got {values!r}") from None
    if cast is int and any(float(v) != int(v) for v in values):
        raise TransferError(f"{what} must be whole numbers; got {list(values)!r}")
    if len(seq) < minimum:
        raise TransferError(f"{what} needs at least {minimum} value{'s' if minimum > 1 else ''} "
                            f"{why}; got {list(seq)!r}")
    if len(set(seq)) != len(seq):
        raise TransferError(f"{what} has repeated values: {list(seq)!r}")
    return tuple(seq)


def _resolve_data(data):
    if data is None:
        raise TransferError("sweep needs data: a callable (width, seed) -> iterable of batches (e.g. "
                            "stdlib_text_data(...), teacher_student_data(...)) or a list of batches")
    if isinstance(data, torch.Tensor):
        raise TransferError("data is a single tensor; pass a list of batches (data=[batch]) or a "
                            "callable (width, seed) -> iterable of batches")
    if isinstance(data, (list, tuple)):
        if not data:
            raise TransferError("data is an empty list of batches")
        return data
    if isinstance(data, Iterator):
        raise TransferError("data is a one-shot iterator / generator; trials would share and "
                            "exhaust it. "
                            "Pass a callable (width, seed) -> iterator (e.g. a generator function), "
                            "or a list of batches")
    if callable(data):
        return data
    raise TransferError(f"data must be a callable (width, seed) -> iterable of batches or a list of "
                        f"batches; got {type(data).__name__}")


def sweep(factory: Callable[[int], nn.Module], widths: Sequence[int], lrs: Sequence[float], *,
          steps: int, data, seeds: Sequence[int] = (0,),
          make_optimizer: Callable[[nn.Module, float], torch.optim.Optimizer] | None = None,
          loss: Callable[[Any, Any], torch.Tensor] | None = None, backend: str = "local",
          workers: int | None = None, progress: bool = True,
          forward: Callable[[nn.Module, Any], Any] | None = None, average_last: int | None = None,
          warmup: int = 0, device: str = "cpu", threads: int = 1,
          ray_options: dict | None = None, name: str = "") -> Sweep:
    """Train ``factory(width)`` for ``steps`` steps at every width x lr x seed; see the module docs.

    ``average_last``: final loss = mean of that many last training losses (default
    max(1, steps // 10)). ``warmup``: linear learning-rate warmup over that many steps (0 = none;
    applied to every optimizer group). ``device``: where each trial trains ("cpu", "cuda", ...).
    ``threads``: torch threads per trial. ``workers``: processes (``local``) or CPUs of a fresh
    local Ray instance (``ray``); default ``os.cpu_count()``. ``name`` labels printouts and plots.
    ``widths`` and ``lrs`` are sorted (the grid's rows and columns follow the sorted order).
    Raises ``TransferError`` on bad arguments or when a trial raises (divergence is not an error).
    """
    widths = _check_sizes(widths, "widths", int, 2, "to measure how the best learning rate moves")
    if any(w <= 0 for w in widths):
        raise TransferError(f"widths must be positive; got {list(widths)}")
    lrs = _check_sizes(lrs, "lrs", float, 2, "to pick a best one")
    if any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise TransferError(f"learning rates must be positive and finite; got {list(lrs)}")
    seeds = _check_sizes(seeds, "seeds", int, 1, "to train anything")
    if not isinstance(steps, int) or steps < 1:
        raise TransferError(f"steps must be a positive int; got {steps!r}")
    average_last = max(1, steps // 10) if average_last is None else int(average_last)
    if not 1 <= average_last <= steps:
        raise TransferError(f"average_last must be in 1..steps={steps}; got {average_last}")
    if warmup < 0 or threads < 1:
        raise TransferError("warmup must be >= 0 and threads >= 1")
    if backend not in BACKENDS:
        raise TransferError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not callable(factory):
        raise TransferError(f"factory must be a callable width -> nn.Module; "
                            f"got {type(factory).__name__}")
    data = _resolve_data(data)
    if loss is None:
        loss = getattr(data, "loss", None)
        if loss is None:
            raise TransferError("no loss given and the data has no .loss; pass loss=fn(output, batch)")
    cfg = _Config(factory=factory, make_optimizer=make_optimizer or default_optimizer, loss=loss,
                  data=data, forward=forward or default_forward, steps=steps,
                  average_last=average_last, warmup=int(warmup), device=str(device),
                  threads=int(threads))

    # sort widths and lrs so the grid reads left-to-right, top-to-bottom
    widths, lrs = tuple(sorted(widths)), tuple(sorted(lrs))
    trials = [((i, j, k), w, lr, s) for i, w in enumerate(widths) for j, lr in enumerate(lrs)
              for k, s in enumerate(seeds)]
    trials.sort(key=lambda t: -t[1])           # widest first: better packing of the pool
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise TransferError(f"workers must be a positive int (or None: one per CPU); got {workers!r}")
    n_workers = min(workers or os.cpu_count() or 1, len(trials))

    shape = (len(widths), len(lrs), len(seeds))
    losses = np.full(shape, np.nan)
    histories = np.full(shape + (steps,), np.nan)
    times = np.full(shape, np.nan)
    t_start = time.perf_counter()
    done = 0

    def collect(res: _Result) -> None:
        nonlocal done
        (i, j, k) = res.key
        if res.error is not None:
            raise TransferError(f"trial width={widths[i]}, lr={lrs[j]:g}, seed={seeds[k]} failed:\n"
                                f"{res.error}")
        losses[i, j, k] = res.final
        histories[i, j, k, :len(res.history)] = res.history
        times[i, j, k] = res.seconds
        done += 1
        if progress:
            status = f"{res.final:.4f}" if math.isfinite(res.final) else \
                f"diverged at step {len(res.history)}"
            print(f"[tensorprog transfer{' ' + name if name else ''}] {done}/{len(trials)} "
                  f"width {widths[i]} lr {lrs[j]:.3g} (2^{math.log2(lrs[j]):.1f}) seed {seeds[k]}: "
                  f"{status} ({res.seconds:.1f} s, {time.perf_counter() - t_start:.0f} s total)",
                  file=sys.stderr, flush=True)

    if backend == "serial":
        for key, w, lr, s in trials:
            collect(_run_trial(cfg, key, w, lr, s))
    elif backend == "local":
        _check_picklable({"factory": cfg.factory, "make_optimizer": cfg.make_optimizer,
                          "loss": cfg.loss, "data": cfg.data, "forward": cfg.forward})
        cfg_bytes = pickle.dumps(cfg)
        with cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=_mp_context(),
                                    initializer=_worker_init, initargs=(cfg_bytes,)) as pool:
            futures = [pool.submit(_worker_trial, key, w, lr, s) for key, w, lr, s in trials]
            try:
                for fut in cf.as_completed(futures):
                    try:
                        res = fut.result()
                    except BrokenProcessPool as e:
                        raise TransferError(
                            f"a worker process died ({e}); out of memory? Try fewer workers, or "
                            "backend='serial' to see the error in this process") from None
                    collect(res)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    else:
        _run_ray(cfg, trials, workers, ray_options or {}, collect)

    meta = {"steps": steps, "average_last": average_last, "warmup": warmup, "backend": backend,
            "workers": n_workers if backend == "local" else (workers if backend == "ray" else 1),
            "threads": threads, "device": str(device),
            "wall_s": round(time.perf_counter() - t_start, 2), "factory": _describe(factory),
            "data": repr(data) if not isinstance(data, (list, tuple)) else f"{len(data)} fixed batches",
            "make_optimizer": _describe(cfg.make_optimizer), "torch": torch.__version__}
    return Sweep(widths=widths, lrs=lrs, seeds=seeds, losses=losses, histories=histories,
                 times=times, name=name, meta=meta)


def _run_ray(cfg: _Config, trials, workers, ray_options: dict, collect) -> None:
    try:
        import ray
    except ImportError:
        raise TransferError("backend='ray' needs Ray, which is not installed: pip install "
                            "'tensorprog[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        kwargs = {} if os.environ.get("RAY_ADDRESS") or not workers else {"num_cpus": int(workers)}
        ray.init(**kwargs)
    options = {"num_cpus": 1, **ray_options}
    remote = ray.remote(_ray_trial).options(**options)
    cfg_ref = ray.put(cfg)
    pending = [remote.remote(cfg_ref, key, w, lr, s) for key, w, lr, s in trials]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            collect(ray.get(ready[0]))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
