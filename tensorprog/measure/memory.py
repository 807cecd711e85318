"""Memory: what training at a width needs (from the traced graph) against what the device has,
checked before the largest width is built; allocation failures reported with their width."""
from __future__ import annotations

import math
import os
from contextlib import contextmanager

import torch

from ..errors import CheckError

__all__ = ["float_nodes", "memory_estimate", "available_memory", "check_memory", "out_of_memory"]


def float_nodes(graph) -> set:
    """Names of traced nodes whose value is one floating-point tensor (from the export's meta)."""
    ep = graph.programs[graph.widths[0]]
    return {n.name for n in ep.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].is_floating_point()}


def _scaled_numel(shapes: dict, dims, w: int) -> int | None:
    """Entries of a tensor at width ``w``, from its shape at the largest traced width w0 and the
    width exponent e_d of each dim: size_d(w) = size_d(w0) * (w / w0)^e_d (an unknown exponent
    is read off the traced shapes themselves). None when the node is not one tensor."""
    ws = sorted(k for k, v in shapes.items() if v is not None)
    if not ws or not all(isinstance(x, int) for x in shapes[ws[-1]]):
        return None
    w0, first = ws[-1], ws[0]
    n = 1.0
    for d, size in enumerate(shapes[w0]):
        e = dims[d] if dims is not None and d < len(dims) else None
        try:
            e = float(e)
        except (TypeError, ValueError):
            e = None
        if e is None or not math.isfinite(e):
            lo = shapes[first][d]
            e = math.log(size / lo) / math.log(w0 / first) if w0 != first and lo and size else 0.0
        n *= size * (w / w0) ** e
    return int(round(n))


def memory_estimate(graph, w: int, dtype=torch.float32, optimizer: str = "adam") -> dict:
    """Bytes that training at width ``w`` holds at least, from the traced graph (its shapes at the
    traced widths and the width exponent of every dim), on the training device:

    * ``parameters``: every parameter (tied ones once);
    * ``gradients``: one per trainable parameter;
    * ``optimizer_state``: Adam-like optimizers keep two moments per trainable parameter (SGD:
      none counted; a momentum buffer comes on top);
    * ``activations``: every floating-point output of a non-view op of the forward, and the
      inputs (what autograd keeps for the backward pass is of that order; the backward's own
      temporaries and the allocator's slack come on top).

    Returns those four and ``total``; each at ``dtype``'s element size."""
    size = torch.empty((), dtype=dtype).element_size()
    params = trainable = 0
    for p in graph.params.values():
        n = _scaled_numel(p.shapes, p.dims, w) or 0
        params += n
        trainable += n if p.trainable else 0
    from ..graph.uses import is_view
    floats = float_nodes(graph)
    acts = 0
    for name in graph.order:
        a = graph.node(name)
        if name not in floats or a["param"] or a["buffer"]:
            continue
        if a["kind"] == "placeholder" and a["input"] is None:
            continue
        if a["kind"] == "call_function" and is_view(graph, name):
            continue
        acts += _scaled_numel(a["shapes"], a["dims"], w) or 0
    state = 2 if optimizer == "adam" else 0
    out = {"parameters": params * size, "gradients": trainable * size,
           "optimizer_state": state * trainable * size, "activations": acts * size}
    out["total"] = sum(out.values())
    return out


def available_memory(dev) -> tuple[int | None, str]:
    """(bytes free for training on ``dev``, where that number comes from); None if unknown.
    CUDA: ``torch.cuda.mem_get_info``; CPU: psutil's available memory, else /proc/meminfo's
    MemAvailable."""
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free), f"free on {dev}"
    if dev.type != "cpu":
        return None, ""
    try:
        import psutil
        return int(psutil.virtual_memory().available), "available RAM"
    except ImportError:
        pass
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    return None, ""


def _gib(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{int(n)} bytes"


def check_memory(graph, w: int, dtype, optimizer: str, dev, max_memory="auto") -> dict | None:
    """Refuse, before anything is built, a width whose ``memory_estimate`` exceeds the limit:
    ``max_memory`` bytes, or with "auto" what the device has free (``available_memory``);
    None skips the check. Returns the estimate (None when not checked)."""
    if max_memory is None:
        return None
    if max_memory == "auto":
        limit, where = available_memory(dev)
        if limit is None:
            return None
    else:
        if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)) or \
                not max_memory > 0:  # NaN fails this too: a NaN limit would refuse nothing
            raise CheckError(f"max_memory must be 'auto', None or a positive number of bytes, got "
                             f"{max_memory!r}.")
        limit, where = max_memory, "given as max_memory"
    est = memory_estimate(graph, w, dtype, optimizer)
    if est["total"] > limit:
        raise CheckError(
            f"width {w} needs an estimated {_gib(est['total'])} on {dev} (parameters "
            f"{_gib(est['parameters'])}, gradients and {optimizer} state "
            f"{_gib(est['gradients'] + est['optimizer_state'])}, activations "
            f"{_gib(est['activations'])}; estimated from the traced graph), more than the "
            f"{_gib(limit)} {where}. Check smaller widths, or pass max_memory=None (CLI: "
            "--max-memory none) to run anyway, or max_memory=BYTES to set the limit.")
    return est


@contextmanager
def out_of_memory(w: int, dev):
    """An allocation failure inside (torch.OutOfMemoryError, MemoryError, or a RuntimeError
    saying "out of memory") becomes a ``CheckError`` naming the width."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "out of memory" not in str(e).lower():
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckError(f"out of memory at width {w} on {dev} ({type(e).__name__}: {first}); "
                         "check smaller widths (or fewer seeds' worth of data per batch).") from None


