"""What a sweep trains on: losses, the forward call, optimizers, and two built-in data sets
(Python's own sources as next-token text; a teacher-student regression).
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TransferError

__all__ = ["next_token_loss", "mse_loss", "default_forward", "default_optimizer", "zoo_optimizer", "DEFAULT_CHARSET", "STDLIB_FILES", "StdlibText", "stdlib_text_data", "TeacherStudent", "teacher_student_data"]


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

    def __call__(self, width: int, seed: int, batch_size: int | None = None,
                 seq_len: int | None = None) -> Iterator[tuple[torch.Tensor]]:
        """Batches; ``batch_size`` and ``seq_len`` (<= ``block_size``) override the object's, so a
        sweep can follow the optimum along them (``sweep(..., along="seq_len")``)."""
        batch = self.batch_size if batch_size is None else int(batch_size)
        length = self.block_size if seq_len is None else int(seq_len)
        if not (2 <= length <= self.block_size and batch >= 1):
            raise TransferError(f"seq_len must be in 2..block_size={self.block_size} and batch_size "
                                f">= 1; got seq_len={length}, batch_size={batch}")
        tokens = self.tokens()
        gen = torch.Generator().manual_seed(1_000_003 * int(seed) + 17)
        span = tokens.numel() - length
        offsets = torch.arange(length)
        while True:
            starts = torch.randint(span, (batch,), generator=gen)
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

    def __call__(self, width: int, seed: int,
                 batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches; ``batch_size`` overrides the object's (``sweep(..., along="batch_size")``)."""
        batch = self.batch_size if batch_size is None else int(batch_size)
        gen = torch.Generator().manual_seed(1_000_003 * int(seed) + 29)
        while True:
            x = torch.randn(batch, self.d_in, generator=gen)
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
