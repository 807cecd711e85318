"""Layers that are in no muP table: a test zoo for ``tensorprog.rules`` and ``apply_mup``.

Each layer is written the way people write it (PyTorch defaults, SP: no multipliers, one global
learning rate) and wrapped in a small model ``input -> layer -> readout`` by ``model(name, width)``
so that the engine sees a finite input, a finite output and the layer in between. The muP rule of
every parameter is derived by ``tensorprog.rules`` from how the traced graph uses it (its fan-in
and fan-out dims), never from the layer's type; the comments say what TP5's classification
(App B, Table 3) gives by hand, which is what the tests check.

============== ========================================================================
name           what, and its parameters' kinds
============== ========================================================================
``swiglu``     SwiGLU MLP: w2(silu(w1 x) * w3 x); w1, w3, w2 hidden (d_ffn = 2 width)
``gqa``        grouped-query attention: n_kv = 2 key/value heads shared by 4 query heads,
               d_head grows with width; q, k, v, o projections hidden; needs 1/d_head
``mqa``        multi-query attention: one key/value head
``depthwise``  depthwise conv (groups = channels): weight (C, 1, k): fan-in = kernel size,
               finite, fan-out C -> vector-like (same rules as an input weight)
``bilinear``   nn.Bilinear(n, n, n): weight (out, in1, in2), fan-in in1 * in2 = n^2 -> hidden
               with fan_in n^2 (init variance 1/n^2, Adam LR 1/n^2)
``lora``       LoRA adapter on a frozen n x n base: A (r x n) maps infinite -> finite: output-
               like; B (n x r) finite -> infinite: input-like (zero init); base frozen
``moe``        soft mixture of 4 experts; router n -> 4 (finite): output-like
``temperature`` attention-free softmax pooling with a learnable temperature: scalar-like
``recurrent``  gated recurrent block unrolled 4 steps: shared recurrent weight (hidden),
               used 4 times
``explicit_attention`` attention written as softmax(q @ k^T / sqrt(d)) @ v (no sdpa)
============== ========================================================================
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

D_IN, D_OUT, SEQ, BATCH = 8, 4, 6, 2

__all__ = ["SwiGLU", "GroupedQueryAttention", "DepthwiseConv", "BilinearLayer", "LoRALinear",
           "SoftMoE", "TemperaturePool", "GatedRecurrent", "ExplicitAttention", "Wrapped", "LAYERS",
           "model", "example_inputs"]


class SwiGLU(nn.Module):
    def __init__(self, width: int, d_ffn: int | None = None):
        super().__init__()
        d_ffn = d_ffn or 2 * width
        self.w1 = nn.Linear(width, d_ffn, bias=False)
        self.w3 = nn.Linear(width, d_ffn, bias=False)
        self.w2 = nn.Linear(d_ffn, width, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GroupedQueryAttention(nn.Module):
    """Causal attention with ``n_head`` query heads and ``n_kv`` key/value heads (n_kv = 1: MQA).

    Head counts are fixed; d_head = width / n_head grows with width."""

    def __init__(self, width: int, n_head: int = 4, n_kv: int = 2):
        super().__init__()
        self.n_head, self.n_kv, self.d_head = n_head, n_kv, width // n_head
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, n_kv * self.d_head, bias=False)
        self.v = nn.Linear(width, n_kv * self.d_head, bias=False)
        self.o = nn.Linear(width, width, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv, self.d_head).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv, self.d_head).transpose(1, 2)
        rep = self.n_head // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class DepthwiseConv(nn.Module):
    """Depthwise 1-d conv over the sequence (groups = channels) then a pointwise (hidden) conv."""

    def __init__(self, width: int, kernel: int = 3):
        super().__init__()
        self.dw = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.pw = nn.Conv1d(width, width, 1)

    def forward(self, x):  # x: (B, T, C)
        y = self.pw(F.gelu(self.dw(x.transpose(1, 2))))
        return y.transpose(1, 2)


class BilinearLayer(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.bil = nn.Bilinear(width, width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x):
        return self.bil(x, torch.tanh(self.gate(x)))


class LoRALinear(nn.Module):
    """y = base(x) + (x A^T) B^T * (alpha / r); base frozen, B zero-initialised (Hu et al. 2021)."""

    def __init__(self, width: int, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        self.base = nn.Linear(width, width)
        self.base.requires_grad_(False)
        self.lora_A = nn.Linear(width, rank, bias=False)  # infinite -> finite: output-like
        self.lora_B = nn.Linear(rank, width, bias=False)  # finite -> infinite: input-like
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


class SoftMoE(nn.Module):
    """Dense mixture of experts: out = sum_e softmax(router(x))_e * expert_e(x)."""

    def __init__(self, width: int, n_experts: int = 4):
        super().__init__()
        self.router = nn.Linear(width, n_experts, bias=False)  # infinite -> finite: output-like
        self.experts = nn.ModuleList(SwiGLU(width, width) for _ in range(n_experts))

    def forward(self, x):
        gates = torch.softmax(self.router(x), dim=-1)  # (B, T, E)
        outs = torch.stack([e(x) for e in self.experts], dim=-1)  # (B, T, C, E)
        return (outs * gates.unsqueeze(-2)).sum(-1)


class TemperaturePool(nn.Module):
    """Softmax pooling over the sequence with a learnable temperature (scalar-like) and a
    learnable score vector (vector-like: a readout onto one score per position)."""

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 1, bias=False)
        self.log_temp = nn.Parameter(torch.zeros(()))
        self.proj = nn.Linear(width, width)

    def forward(self, x):  # (B, T, C) -> (B, T, C): every position gets the pooled summary
        w = torch.softmax(self.score(x) * torch.exp(self.log_temp), dim=1)  # (B, T, 1)
        pooled = (w * x).sum(1, keepdim=True)
        return self.proj(x + pooled)


class GatedRecurrent(nn.Module):
    """h_{t+1} = (1 - z) h_t + z tanh(W h_t + U x_t), z = sigmoid(G x_t): a minimal gated
    recurrence (state-space-like), unrolled over the sequence; W is used ``T`` times."""

    def __init__(self, width: int):
        super().__init__()
        self.W = nn.Linear(width, width, bias=False)
        self.U = nn.Linear(width, width)
        self.G = nn.Linear(width, width)

    def forward(self, x):
        h = torch.zeros_like(x[:, 0])
        outs = []
        for t in range(x.shape[1]):
            z = torch.sigmoid(self.G(x[:, t]))
            h = (1 - z) * h + z * torch.tanh(self.W(h) + self.U(x[:, t]))
            outs.append(h)
        return torch.stack(outs, 1)


class ExplicitAttention(nn.Module):
    """Causal attention written out: softmax(q k^T / sqrt(d_head)) v, no sdpa."""

    def __init__(self, width: int, n_head: int = 4):
        super().__init__()
        self.n_head, self.d_head = n_head, width // n_head
        self.qkv = nn.Linear(width, 3 * width)
        self.o = nn.Linear(width, width)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(B, T, C))


LAYERS = {
    "swiglu": SwiGLU,
    "gqa": lambda n: GroupedQueryAttention(n, 4, 2),
    "mqa": lambda n: GroupedQueryAttention(n, 4, 1),
    "depthwise": DepthwiseConv,
    "bilinear": BilinearLayer,
    "lora": LoRALinear,
    "moe": SoftMoE,
    "temperature": TemperaturePool,
    "recurrent": GatedRecurrent,
    "explicit_attention": ExplicitAttention,
}


class Wrapped(nn.Module):
    """input Linear(D_IN, n) -> LayerNorm -> layer -> LayerNorm -> readout Linear(n, D_OUT).

    Input (B, T, D_IN) -> output (B, T, D_OUT)."""

    def __init__(self, width: int, layer: nn.Module):
        super().__init__()
        self.inp = nn.Linear(D_IN, width)
        self.ln1 = nn.LayerNorm(width)
        self.layer = layer
        self.ln2 = nn.LayerNorm(width)
        self.out = nn.Linear(width, D_OUT)

    def forward(self, x):
        h = self.ln1(self.inp(x))
        h = h + self.layer(h)
        return self.out(self.ln2(h))


def model(name: str, width: int) -> Wrapped:
    """``LAYERS[name]`` at ``width`` inside ``Wrapped``."""
    if name not in LAYERS:
        raise ValueError(f"unknown layer {name!r}; choose one of: {', '.join(LAYERS)}")
    return Wrapped(width, LAYERS[name](width))


def example_inputs(width: int | None = None) -> tuple:
    """(B, T, D_IN) Gaussian inputs, the same at every width."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(BATCH, SEQ, D_IN, generator=g),)
