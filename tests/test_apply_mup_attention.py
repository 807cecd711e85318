"""apply_mup's attention scale belongs to the transformed model alone (issue 11 item 1).

Before, the model swapped ``F.scaled_dot_product_attention`` process-wide for the length of its
forward: a plain model in another thread picked up the muP scale, and a transformed model run
inside another's forward was scaled twice. Expected values here are the same models run alone
(single-threaded), or the attention recomputed by hand with the scale TP5 Def 4.1 asks for:
d_head^{-1/2} times (base / width)^{1/2} when d_head grows like the width."""
from __future__ import annotations

import copy
import math
import sys
import threading
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tensorprog.transform.attention_scale import SDPA, AttentionScale
from tensorprog.transform.mup import apply_mup
from tensorprog.zoo import example

BASE = 32


def _gpt():
    ex = example("gpt", param="sp", optimizer="adam", base_width=BASE)
    mf, _ = apply_mup(ex.factory, BASE, example_inputs=ex.example_inputs, widths=(BASE, 2 * BASE),
                      lr=1e-3)
    return ex, mf


def _pair():
    """A plain zoo GPT and its apply_mup twin at 2 x base (same seed), the inputs, and each
    model's output in a single-threaded run."""
    ex, mf = _gpt()
    w = 2 * BASE
    torch.manual_seed(0)
    plain = ex.factory(w).eval()
    torch.manual_seed(0)
    mup = mf(w).eval()
    x = ex.example_inputs(w)
    with torch.no_grad():
        return plain, mup, x, plain(*x), mup(*x)


def _stack_depth() -> int:
    return torch._C._len_torch_function_stack()


def test_plain_model_in_another_thread_is_bit_identical():
    plain, mup, x, ref_plain, ref_mup = _pair()
    # the muP scale makes a difference at this width, so a leak would show
    same_weights = copy.deepcopy(mup)
    for m in same_weights.modules():
        m._forward_pre_hooks.clear(), m._forward_hooks.clear()
    with torch.no_grad():
        assert not torch.equal(same_weights(*x), ref_mup)

    stop = time.monotonic() + 3.0
    bad, counts, errors = [], {"plain": 0, "mup": 0}, []

    def loop(model, ref, key):
        try:
            with torch.no_grad():
                while time.monotonic() < stop:
                    y = model(*x)
                    counts[key] += 1
                    if not torch.equal(y, ref):
                        bad.append(key)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads' forwards as finely as possible
    try:
        threads = [threading.Thread(target=loop, args=(plain, ref_plain, "plain")),
                   threading.Thread(target=loop, args=(mup, ref_mup, "mup"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert counts["plain"] > 5 and counts["mup"] > 5, counts
    assert not bad, f"{len(bad)} forwards differed from the single-threaded run: {set(bad)}"
    assert F.scaled_dot_product_attention is SDPA and _stack_depth() == 0


def test_exception_inside_attention_leaves_nothing_behind():
    plain, mup, x, ref_plain, ref_mup = _pair()
    attn = next(m for m in mup.modules() if any(
        isinstance(getattr(h, "__self__", None), AttentionScale) for h in m._forward_pre_hooks.values()))

    def boom(mod, args):
        raise RuntimeError("inside the attention module")
    handle = next(iter(attn.children())).register_forward_pre_hook(boom)  # after the mode entered
    for _ in range(2):
        try:
            mup(*x)
        except RuntimeError as e:
            assert "inside the attention module" in str(e)
        else:
            raise AssertionError("the hook did not raise")
        assert _stack_depth() == 0 and F.scaled_dot_product_attention is SDPA
    handle.remove()
    with torch.no_grad():
        assert torch.equal(plain(*x), ref_plain)  # nothing left patched
        assert torch.equal(mup(*x), ref_mup)  # and the transformed model still scales


def test_transformed_model_inside_another_forward_is_scaled_once():
    """Re-entrancy: model B (muP, 4 x base) runs inside model A's attention module (muP, 2 x
    base): B's output equals B run alone, and A's equals A run alone."""
    ex, mf = _gpt()
    torch.manual_seed(0)
    a = mf(2 * BASE).eval()
    torch.manual_seed(1)
    b = mf(4 * BASE).eval()
    xa, xb = ex.example_inputs(2 * BASE), ex.example_inputs(4 * BASE)
    with torch.no_grad():
        ref_a, ref_b = a(*xa), b(*xb)
    inner = []
    attn = a.get_submodule("blocks.0.attn")

    def run_b(mod, args):
        inner.append(b(*xb))
    handle = attn.query.register_forward_pre_hook(run_b)
    with torch.no_grad():
        out_a = a(*xa)
    handle.remove()
    assert inner and all(torch.equal(y, ref_b) for y in inner)
    assert torch.equal(out_a, ref_a)


class Inner(nn.Module):
    def __init__(self, n, heads=2):
        super().__init__()
        self.heads, self.scale = heads, None
        self.q, self.k, self.v = (nn.Linear(n, n) for _ in range(3))

    def split(self, t):
        B, T, C = t.shape
        return t.view(B, T, self.heads, C // self.heads).transpose(1, 2)

    def forward(self, h):
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return y.transpose(1, 2).reshape(h.shape)


class Outer(Inner):
    """Calls sdpa itself (the top-level module) and through a submodule: nested hooked modules."""

    def __init__(self, n):
        super().__init__(n)
        self.inp, self.inner, self.out = nn.Linear(8, n), Inner(n), nn.Linear(n, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.inner(h)
        return self.out(h + super().forward(h))


def _without_attention_hooks(model, scale):
    """A copy of ``model`` with apply_mup's attention hooks removed and ``scale(module)`` written
    into the ``scale`` of every module that had them (it goes to sdpa as is)."""
    by_hand = copy.deepcopy(model)
    for m in by_hand.modules():
        hooked = False
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for k in [k for k, h in hooks.items() if isinstance(getattr(h, "__self__", None),
                                                                AttentionScale)]:
                del hooks[k]
                hooked = True
        if hooked:
            m.scale = scale(m)
    return by_hand


def test_nested_attention_modules_scale_each_call_once():
    x = (torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0)),)
    mf, _ = apply_mup(Outer, BASE, example_inputs=x, widths=(BASE, 2 * BASE), lr=1e-3)
    w = 4 * BASE
    torch.manual_seed(0)
    model = mf(w)
    assert sorted(a.module for a in model._tensorprog_attention) == ["", "inner"]
    with torch.no_grad():
        got = model(*x)
    # by hand: the same model with its attention hooks removed and the muP scale written in
    d_head = w // 2
    by_hand = _without_attention_hooks(model, lambda m: d_head ** -0.5 * math.sqrt(BASE / w))
    with torch.no_grad():
        want = by_hand(*x)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
    assert _stack_depth() == 0


# ----------------------------------------------------------------------------- torch.compile

def _compile_supported() -> bool:
    try:
        import torch._dynamo as dynamo

        return hasattr(torch, "compile") and dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001 - any failure to import means: not on this platform
        return False


needs_compile = pytest.mark.skipif(not _compile_supported(),
                                   reason="torch.compile is not supported on this platform")


@needs_compile
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_mup_gpt_equals_the_eager_one_and_scales_attention_once(backend):
    """torch.compile (inlining the hooks and the TorchFunctionMode) computes what the eager
    model does, and that is the attention recomputed by hand with TP5 Def 4.1's scale
    d_head^-1/2 (base / width)^1/2 (d_head grows with width) -- not the unscaled 1/sqrt(d_head),
    not the factor twice."""
    import torch._dynamo as dynamo

    ex, mf = _gpt()
    w = 2 * BASE
    torch.manual_seed(0)
    model = mf(w).eval()
    x = ex.example_inputs(w)
    mup_scale = _without_attention_hooks(model, lambda m: (w // m.n_head) ** -0.5 * math.sqrt(BASE / w))
    unscaled = _without_attention_hooks(model, lambda m: None)
    twice = _without_attention_hooks(model, lambda m: (w // m.n_head) ** -0.5 * BASE / w)
    dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        got, eager = compiled(*x), model(*x)
        want = mup_scale(*x)
        assert torch.equal(got, eager)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
        for wrong in (unscaled(*x), twice(*x)):
            assert not torch.allclose(got, wrong, rtol=1e-4, atol=1e-5)
    assert _stack_depth() == 0


@needs_compile
def test_compiled_mup_gpt_trains_like_the_eager_one():
    """One backward through the aot_eager-compiled model: every gradient equals eager's."""
    ex, mf = _gpt()
    w = 2 * BASE
    torch.manual_seed(0)
    model = mf(w)
    x = ex.example_inputs(w)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    grads = []
    for run in (compiled, model):
        model.zero_grad()
        run(*x).float().pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7), n


@needs_compile
def test_compiled_nested_attention_modules_scale_each_call_once():
    """The nested case (an outer hooked module's mode passes the inner one's call through),
    compiled: as the eager model and the hand-written scale. The guard on the graph breaks of
    attention_scale.py: traced into the graph (a thread-local or per-mode flag instead of its
    ContextVar, torch 2.13), both calls came out scaled twice."""
    x = (torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0)),)
    mf, _ = apply_mup(Outer, BASE, example_inputs=x, widths=(BASE, 2 * BASE), lr=1e-3)
    w = 4 * BASE
    torch.manual_seed(0)
    model = mf(w)
    by_hand = _without_attention_hooks(model, lambda m: (w // 2) ** -0.5 * math.sqrt(BASE / w))
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(model, backend="eager")(*x)
        assert torch.allclose(got, by_hand(*x), rtol=1e-6, atol=1e-7)
        assert torch.equal(got, model(*x))
