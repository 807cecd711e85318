"""muTransfer, measured: sweep the learning rate (or any hyperparameter) at several widths and see
whether the best one moves; tune a small proxy and transfer (``tune``).

``sweep(factory, widths, lrs, steps=..., data=...)`` trains every (width, learning rate, seed)
triple from scratch, records the final training loss of each, and returns a ``Sweep``: the loss
grid, the best learning rate per width and the **drift** of log2(best LR) per doubling of width.
That is Figure 1 of Tensor Programs V (TP5, arXiv 2203.03466) as a number: in SP the optimum
moves with width (with Adam, hidden updates grow like lr * n, so the best lr falls roughly like
1/n: drift towards -1); in muP it stays put (drift ~ 0), which is what makes zero-shot transfer of
a small model's tuned learning rate possible.

Beyond the learning rate (TP5 Figures 3-5)
-----------------------------------------
* ``sweep(factory, widths, hparams={"output_mult": [...], "init_scale": [...]}, base={"lr": 3e-3},
  ...)`` sweeps each named hyperparameter across widths with the others at their ``base`` values
  and returns ``HPSweeps`` ({name: Sweep}). Built in: ``lr``, ``init_scale`` (global multiplier on
  the init std of every matrix), ``output_mult`` (multiplier on the model's output), ``schedule``
  (``SCHEDULES``: constant, linear, cosine, inverse_sqrt, step; ``schedule_factor`` has the
  formulas), ``warmup`` (steps), ``weight_decay``. Any other name goes, by keyword, to whichever of
  ``factory(width, ...)``, ``make_optimizer(model, lr, ...)``, ``data(width, seed, ...)`` names it
  (``hparams.route_hparams``). The drift of each optimum is in log2 units per width doubling for
  scale-like hyperparameters, in its own units for ``warmup`` and values <= 0, and a
  same-choice-or-not verdict for the schedule (``result`` module docs).
* ``sweep(..., along="depth" | "batch_size" | "seq_len" | "steps", width=128)`` follows the
  optimum along another scale dimension (TP5 Figure 4; empirical, not a muP prediction).
* ``tune(factory, space, proxy_width=64, target_width=512, budget=16, ...)`` searches ``space``
  (``LogUniform``, ``Uniform``, ``IntUniform``, ``Choice``) on the proxy by random search or
  Optuna's TPE (``pip install 'tensorprog[tune]'``), trains the target with the best setting and
  compares with the same search on the target: loss against compute in parameter-steps
  (``TuneResult``; ``plot_tune`` draws TP5 Figure 5). Resumable through ``store=path.jsonl``; it
  refuses a model that ``tensorprog.analyze`` does not call muP (``check_mup="warn"`` overrides).

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
  The zoo's ``example(...)`` pieces are made for ``check`` (its ``.make_optimizer(model)`` takes
  no learning rate): use ``functools.partial(zoo.GPT, param="sp", ...)`` and
  ``zoo_optimizer("adam")`` instead.
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

from ..errors import TransferError
from .backends import BACKENDS
from .plots import plot_hp_panels, plot_sweeps, plot_tune
from .hparams import (BUILTIN_HPARAMS, NOT_WIDTH_TRANSFERABLE, SCHEDULES, WIDTH_TRANSFERABLE,
                      schedule_factor)
from .result import HPSweeps, Sweep, drift_of
from .space import Choice, IntUniform, LogUniform, Uniform
from .sweep import sweep
from .tune import read_store, transferability, tune
from .tune_result import TuneResult
from .tasks import (DEFAULT_CHARSET, STDLIB_FILES, StdlibText, TeacherStudent, default_forward,
                    default_optimizer, mse_loss, next_token_loss, stdlib_text_data,
                    teacher_student_data, zoo_optimizer)

__all__ = [
    "TransferError", "Sweep", "HPSweeps", "sweep", "plot_sweeps", "plot_hp_panels", "plot_tune",
    "tune", "TuneResult", "read_store", "transferability", "LogUniform", "Uniform", "IntUniform",
    "Choice", "drift_of", "schedule_factor",
    "BUILTIN_HPARAMS", "SCHEDULES", "WIDTH_TRANSFERABLE", "NOT_WIDTH_TRANSFERABLE",
    "StdlibText", "stdlib_text_data", "TeacherStudent", "teacher_student_data",
    "next_token_loss", "mse_loss", "default_forward", "default_optimizer", "zoo_optimizer",
    "BACKENDS", "DEFAULT_CHARSET", "STDLIB_FILES",
]
