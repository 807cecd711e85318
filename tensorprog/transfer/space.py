"""Search spaces for ``tune`` and the two samplers: random search, and Optuna's TPE.

A space is a dict ``{name: LogUniform(lo, hi) | Uniform(lo, hi) | IntUniform(lo, hi) | Choice([...])}``
(a plain list or tuple means ``Choice``). ``RandomSampler`` draws trial ``n`` from its own
generator seeded with (seed, n): the n-th setting is the same however many trials ran before, so a
resumed search proposes exactly what the killed one would have (Bergstra & Bengio 2012, random
search; TP5 arXiv 2203.03466 Figure 5 tunes by random search). ``TPESampler`` is Optuna's
tree-structured Parzen estimator (Bergstra et al. 2011; ``pip install 'tensorprog[tune]'``); a
resumed search first replays the stored trials into the study, then asks for new ones.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TransferError
from .hparams import check_value

__all__ = ["LogUniform", "Uniform", "IntUniform", "Choice", "check_space", "RandomSampler",
           "TPESampler", "make_sampler", "SAMPLERS"]

SAMPLERS = ("random", "tpe")


@dataclass(frozen=True)
class LogUniform:
    """log(value) uniform on [log lo, log hi] (learning rates, multipliers)."""
    lo: float
    hi: float

    def draw(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))

    def centre(self):
        return math.sqrt(self.lo * self.hi)


@dataclass(frozen=True)
class Uniform:
    """value uniform on [lo, hi]."""
    lo: float
    hi: float

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.lo, self.hi))

    def centre(self):
        return (self.lo + self.hi) / 2


@dataclass(frozen=True)
class IntUniform:
    """integer uniform on lo..hi (inclusive)."""
    lo: int
    hi: int

    def draw(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.lo, self.hi + 1))

    def centre(self):
        return (self.lo + self.hi) // 2


@dataclass(frozen=True)
class Choice:
    """one of ``options``, uniformly."""
    options: tuple

    def draw(self, rng: np.random.Generator) -> Any:
        return self.options[int(rng.integers(len(self.options)))]

    def centre(self):
        return self.options[0]


def _bound(name, d, v, integer: bool):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise TransferError(f"space[{name!r}]: {type(d).__name__} needs finite numbers lo < hi; "
                            f"got {d!r}")
    if integer and not float(v).is_integer():
        raise TransferError(f"space[{name!r}]: IntUniform needs whole-number bounds (they are "
                            f"never rounded); got {d!r}")


def check_space(space) -> dict:
    """The space with lists turned into ``Choice``; ``TransferError`` for anything malformed,
    including values a built-in hyperparameter cannot take (``hparams.check_value``)."""
    if not isinstance(space, dict) or not space:
        raise TransferError("tune needs space = {name: LogUniform(lo, hi) | Uniform(lo, hi) | "
                            f"IntUniform(lo, hi) | Choice([...]) or [options]}}; got {space!r}")
    out = {}
    for name, d in space.items():
        if isinstance(d, (list, tuple)):
            d = Choice(tuple(d))
        if isinstance(d, Choice):
            if isinstance(d.options, (str, bytes)) or not isinstance(d.options, (list, tuple)):
                raise TransferError(f"space[{name!r}]: Choice takes a list of options, e.g. "
                                    f"Choice(['cosine', 'linear']); got {d.options!r}")
            if len(d.options) < 2:
                raise TransferError(f"space[{name!r}] has {len(d.options)} option(s) "
                                    f"{list(d.options)!r}: nothing to search. Fix it in "
                                    f"base={{{name!r}: ...}}, or give two or more options")
            if len(set(map(repr, d.options))) != len(d.options):
                raise TransferError(f"space[{name!r}] has repeated options {list(d.options)!r}")
            for v in d.options:
                check_value(name, v, f"each option of space[{name!r}]")
            out[name] = Choice(tuple(d.options))
            continue
        if not isinstance(d, (LogUniform, Uniform, IntUniform)):
            raise TransferError(f"space[{name!r}] must be LogUniform, Uniform, IntUniform, Choice "
                                f"or a list of options; got {d!r}")
        for v in (d.lo, d.hi):
            _bound(name, d, v, isinstance(d, IntUniform))
        if not d.lo < d.hi:
            raise TransferError(f"space[{name!r}]: need finite lo < hi; got {d!r}")
        if isinstance(d, LogUniform) and d.lo <= 0:
            raise TransferError(f"space[{name!r}]: LogUniform needs lo > 0; got {d!r}")
        for v in (d.lo, d.hi):
            check_value(name, v, f"{name} (a bound of space[{name!r}] = {d!r})")
        out[name] = type(d)(int(d.lo), int(d.hi)) if isinstance(d, IntUniform) else d
    return out


class RandomSampler:
    """Random search: trial ``n`` is drawn from ``np.random.default_rng([seed, n])``."""

    name = "random"

    def __init__(self, space: dict, seed: int):
        self.space, self.seed = space, int(seed)

    def propose(self, index: int) -> tuple[dict, None]:
        """(params, handle for ``tell``)."""
        rng = np.random.default_rng([self.seed, int(index)])
        return {name: d.draw(rng) for name, d in self.space.items()}, None

    def replay(self, params: dict, loss: float) -> None:
        """Nothing to learn: proposals depend only on the index."""

    def tell(self, handle, loss: float) -> None:
        """Nothing to learn."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TransferError("sampler='tpe' needs Optuna, which is not installed: pip install "
                            "'tensorprog[tune]' (or pip install optuna); sampler='random' works "
                            "without it") from None
    return optuna


class TPESampler:
    """Optuna's TPE sampler (``optuna.samplers.TPESampler(seed=seed)``) through ask / tell."""

    name = "tpe"

    def __init__(self, space: dict, seed: int):
        optuna = _optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dists = optuna.distributions
        self.dists = {}
        for name, d in space.items():
            if isinstance(d, LogUniform):
                self.dists[name] = dists.FloatDistribution(d.lo, d.hi, log=True)
            elif isinstance(d, Uniform):
                self.dists[name] = dists.FloatDistribution(d.lo, d.hi)
            elif isinstance(d, IntUniform):
                self.dists[name] = dists.IntDistribution(d.lo, d.hi)
            else:
                self.dists[name] = dists.CategoricalDistribution(list(d.options))
        self.optuna = optuna
        self.study = optuna.create_study(direction="minimize",
                                         sampler=optuna.samplers.TPESampler(seed=int(seed)))

    def propose(self, index: int):
        trial = self.study.ask(self.dists)
        return dict(trial.params), trial

    def replay(self, params: dict, loss: float) -> None:
        state = self.optuna.trial.TrialState
        ok = math.isfinite(loss)
        self.study.add_trial(self.optuna.trial.create_trial(
            params=params, distributions=self.dists, value=loss if ok else None,
            state=state.COMPLETE if ok else state.FAIL))

    def tell(self, handle, loss: float) -> None:
        if math.isfinite(loss):
            self.study.tell(handle, loss)
        else:
            self.study.tell(handle, state=self.optuna.trial.TrialState.FAIL)


def make_sampler(sampler: str, space: dict, seed: int):
    if sampler == "random":
        return RandomSampler(space, seed)
    if sampler == "tpe":
        return TPESampler(space, seed)
    raise TransferError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
