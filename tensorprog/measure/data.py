"""Batches for the checker: the example inputs, or a user's data source, on the right device
and dtype, checked against the traced inputs' shapes."""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
import torch.utils._pytree as pytree

from ..errors import CheckError

def data_source(data):
    """data -> None or a function width -> iterable of batches."""
    if data is None:
        return None
    if callable(data) and not isinstance(data, (list, tuple, torch.Tensor)):
        return data
    if isinstance(data, torch.Tensor):
        raise CheckError("data must be an iterable of input tuples (one batch per step) or a "
                         "callable width -> batches, not a single tensor; for one fixed batch pass "
                         "example_inputs=(tensor,).")
    if not isinstance(data, Iterable):
        raise CheckError(f"data must be an iterable of input tuples or a callable, got {type(data).__name__}.")
    items = list(data)
    if not items:
        raise CheckError("data is empty: give at least one batch (a tuple of input tensors).")
    return FixedBatches(items)


class FixedBatches:
    """data as a function width -> the same list of batches (picklable: worker processes get it)."""

    def __init__(self, items: list):
        self.items = items

    def __call__(self, w):
        return self.items


class FirstBatchOf:
    """example_inputs as a function width -> the first batch of ``data_fn(width)`` (picklable)."""

    def __init__(self, data_fn):
        self.data_fn = data_fn

    def __call__(self, w):
        return first_batch(self.data_fn(w))


def _as_batch(b, k):
    """A batch: a tuple of positional inputs, or a dict of keyword inputs (HuggingFace style)."""
    if isinstance(b, torch.Tensor):
        return (b,)
    if isinstance(b, list):
        b = tuple(b)
    if isinstance(b, dict):
        return dict(b)
    if not isinstance(b, tuple):
        raise CheckError(f"batch {k} of data is a {type(b).__name__}; each batch must be a tuple "
                         "of model inputs, one tensor, or a dict of keyword inputs.")
    return b


def first_batch(d):
    if isinstance(d, (tuple, dict, torch.Tensor)):
        return _as_batch(d, 0)
    if isinstance(d, list) and d and isinstance(d[0], torch.Tensor):
        return _as_batch(d, 0)
    return _as_batch(next(iter(d)), 0)


def split(batch):
    """(positional, keyword) inputs of a batch, as torch.export's (args, kwargs)."""
    return ((), batch) if isinstance(batch, dict) else (batch, {})


def batches_for(data_fn, example_inputs, model, w, dev, dtype, count) -> list:
    """``count`` batches (tuples or keyword dicts, on the device); the same object every step
    for a fixed batch. What the loss receives as ``inputs``."""
    from ..graph.trace import example_args as _inputs
    from ..errors import TraceError

    try:
        args, kwargs = _inputs(example_inputs, model, w, "cpu")
    except TraceError as e:
        raise CheckError(str(e)) from e
    ref = cast(kwargs if kwargs and not args else args, dev, dtype)
    if data_fn is None:
        return [ref] * count
    d = data_fn(w)
    if isinstance(d, (tuple, dict, torch.Tensor)):
        batches = [_as_batch(d, 0)]
    else:
        batches = [_as_batch(b, k) for k, b in zip(range(count), itertools.cycle(d))]
        if not batches:
            raise CheckError(f"data({w}) gave no batches.")
    out = []
    for k, b in enumerate(batches):
        b = cast(b, dev, dtype)
        if isinstance(ref, dict):  # keyword inputs flatten in the export's key order
            if not isinstance(b, dict) or set(b) != set(ref):
                raise CheckError(f"batch {k} of data must be a dict with keys {sorted(ref)} like "
                                 f"the example inputs, got {type(b).__name__} "
                                 f"{sorted(b) if isinstance(b, dict) else ''}.")
            b = {key: b[key] for key in ref}
        _check_like(b, ref, k, w)
        out.append(b)
    if len(out) == 1:
        return out * count
    return [out[k % len(out)] for k in range(count)]


def cast(args, dev, dtype):
    """Tensors of a batch (tuple or dict) moved to the device; float ones cast to dtype."""
    def mv(t):
        if isinstance(t, torch.Tensor):
            t = t.to(dev)
            return t.to(dtype) if t.is_floating_point() else t
        return t
    if isinstance(args, dict):
        return {k: pytree.tree_map(mv, v) for k, v in args.items()}
    return tuple(pytree.tree_map(mv, a) for a in args)


def _check_like(batch, ref, k, w):
    lb, lr = pytree.tree_leaves(batch), pytree.tree_leaves(ref)
    if len(lb) != len(lr):
        raise CheckError(f"batch {k} of data has {len(lb)} inputs but the model was exported with "
                         f"{len(lr)} (width {w}); each batch must be a tuple like the example inputs.")
    for i, (x, y) in enumerate(zip(lb, lr)):
        if isinstance(y, torch.Tensor):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(y.shape) or \
                    x.is_floating_point() != y.is_floating_point():
                got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise CheckError(
                    f"input {i} of batch {k} of data is {got} but the model was exported with "
                    f"{tuple(y.shape)} {y.dtype} (width {w}). The exported graph has static "
                    "shapes: every batch must match the example inputs' shapes (or pass "
                    "example_inputs of the data's shape).")
