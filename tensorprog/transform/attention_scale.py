"""muP's attention scale, owned by the transformed model alone.

muP scales attention logits by 1/d_head instead of 1/sqrt(d_head) (TP5 Def 4.1): ``apply_mup``
multiplies the ``scale`` of every ``scaled_dot_product_attention`` call of the modules that were
traced calling it by ``(base / width)^{d_exp / 2}``.

How, without touching anything process-wide: each such module gets a forward pre-hook that
enters a ``torch.overrides.TorchFunctionMode`` and a forward hook (``always_call``: also when the
forward raises) that leaves it. A TorchFunctionMode sees every torch call made while it is on the
stack, and torch keeps that stack per thread; so the scale applies to the sdpa calls made inside
that module's forward, in that thread, and nowhere else. Another model (even of the same class)
running in another thread, or after an exception, computes exactly what it did before. Nothing
is patched: ``torch.nn.functional.scaled_dot_product_attention`` is never reassigned, and calls
through any alias of it (``from torch.nn.functional import scaled_dot_product_attention``, HF's
attention helpers) are seen alike. Nested hooked modules (a model that calls sdpa itself and
through a submodule) scale each call once: the innermost mode scales it and marks the call
(a context variable, per thread) so the outer ones pass it through. The mode costs a Python call
per torch op inside the hooked attention modules only.

torch.compile (tested with the "eager" and "aot_eager" backends, torch 2.13) gives the eager
outputs and gradients: TorchDynamo cannot trace the ContextVar, so it breaks the graph inside
the mode at each hooked sdpa call (about three breaks per call) and runs that part eagerly.
Those breaks are what keeps it right: a flag Dynamo does trace (a thread-local or per-mode
attribute) put everything in one graph but scaled nested hooked modules' calls twice.
"""
from __future__ import annotations

import contextvars
import math
import threading
from typing import Sequence

import torch
from torch.overrides import TorchFunctionMode

from ..errors import TensorprogError

__all__ = ["AttentionScale", "SDPA"]

#: The builtin itself (``F.scaled_dot_product_attention`` is this object unless someone patched it).
SDPA = torch._C._nn.scaled_dot_product_attention
_SCALE_POS = 6  # sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

#: True while one mode's sdpa call runs: outer modes then pass the call through unscaled.
_SCALED = contextvars.ContextVar("tensorprog_sdpa_scaled", default=False)


class _ScaleMode(TorchFunctionMode):
    """One forward of one module: the i-th sdpa call's scale times ``owner.factor(i)``."""

    def __init__(self, owner: "AttentionScale"):
        super().__init__()
        self.owner = owner
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not SDPA or _SCALED.get():
            return func(*args, **kwargs)
        f = self.owner.factor(self.calls)
        self.calls += 1
        args = list(args)
        query = args[0] if args else kwargs["query"]
        scale = args[_SCALE_POS] if len(args) > _SCALE_POS else kwargs.get("scale")
        scale = (1.0 / math.sqrt(query.size(-1)) if scale is None else scale) * f
        if len(args) > _SCALE_POS:
            args[_SCALE_POS] = scale
        else:
            kwargs = {**kwargs, "scale": scale}
        token = _SCALED.set(True)
        try:
            return func(*args, **kwargs)
        finally:
            _SCALED.reset(token)


class AttentionScale:
    """Forward pre-hook + hook pair of one module: its sdpa calls' scales times ``factors``
    (one per call in traced order; one value when they are all equal)."""

    def __init__(self, factors: Sequence[float], module: str):
        self.factors = list(factors)
        self.module = module
        self._local = threading.local()

    def __reduce__(self):  # copies and pickles start with no forward in flight
        return (type(self), (self.factors, self.module))

    def _state(self):
        st = self._local
        if not hasattr(st, "stack"):
            st.stack, st.calls = [], 0
        return st

    @property
    def calls(self) -> int:
        """sdpa calls this module scaled in this thread so far."""
        return self._state().calls

    def factor(self, i: int) -> float:
        if len(set(self.factors)) == 1:
            return self.factors[0]
        if i < len(self.factors):
            return self.factors[i]
        raise TensorprogError(
            f"`{self.module or '<top>'}` called scaled_dot_product_attention {i + 1} times in one "
            f"forward; it was traced with {len(self.factors)} calls needing different scale "
            "factors. apply_mup needs the same attention calls in every forward.")

    def pre(self, mod, args):
        mode = _ScaleMode(self)
        mode.__enter__()
        self._state().stack.append(mode)

    def post(self, mod, args, output):
        st = self._state()
        if st.stack:
            mode = st.stack.pop()
            mode.__exit__(None, None, None)
            st.calls += mode.calls

    def install(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(self.pre, prepend=True)
        module.register_forward_hook(self.post, always_call=True)
