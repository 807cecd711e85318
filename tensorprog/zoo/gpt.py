"""The zoo nanoGPT-style transformer.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Linear, ZooModel, check_choice
from .depth import branch_multiplier


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate query / key / value projections.

    ``scale`` is passed as-is to ``F.scaled_dot_product_attention`` (None = its 1/sqrt(d_head)).
    """

    def __init__(self, width: int, n_head: int, scale: float | None):
        super().__init__()
        self.n_head = n_head
        self.d_head = width // n_head
        self.scale = scale
        self.query = Linear(width, width, role="hidden")
        self.key = Linear(width, width, role="hidden")
        self.value = Linear(width, width, role="hidden")
        self.proj = Linear(width, width, role="hidden")

    @property
    def effective_scale(self) -> float:
        return 1.0 / math.sqrt(self.d_head) if self.scale is None else self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    """width -> 4 width -> GELU -> width (both hidden weights)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = Linear(width, 4 * width, role="hidden")
        self.proj = Linear(4 * width, width, role="hidden")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1 x), then x + mlp(ln2 x).

    ``branch_multiplier`` (None: no multiplication in the graph) scales both branches:
    x + m attn(ln1 x), then x + m mlp(ln2 x) (the depth multiplier L^-alpha of TP6 / CompleteP)."""

    def __init__(self, width: int, n_head: int, attn_scale: float | None,
                 branch_multiplier: float | None = None):
        super().__init__()
        self.branch_multiplier = branch_multiplier
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, n_head, attn_scale)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = FeedForward(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.branch_multiplier
        if m is None:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        x = x + m * self.attn(self.ln1(x))
        return x + m * self.mlp(self.ln2(x))


class GPT(ZooModel):
    """nanoGPT-style decoder: tokens (B, T) -> logits (B, T, vocab_size).

    tok_emb (vocab x n) + pos_emb (block_size x n), ``n_layer`` pre-LN blocks, ln_f, readout
    Linear(n -> vocab, bias=False).

    ``grow="width"`` (default): n_head fixed, d_head = width / n_head grows (base d_head =
    base_width / n_head). ``grow="heads"``: d_head fixed, n_head = width / d_head grows (base
    d_head = d_head, so the muP attention scale stays 1/sqrt(d_head)).
    ``tie=True``: ``readout.weight is tok_emb.weight`` (one Parameter, N(0, 1) from the
    embedding, learning rate of an input weight). muP then uses the Table 8 readout multiplier
    1/width_mult (Adam LR 1, SGD LR width_mult = the embedding's) in both "mup" and "mup_table8",
    since Table 3's shrunk readout init cannot be applied to a weight shared with the embedding.
    ``query_zero_init`` (muP only): query weight and bias start at zero (TP5 App D.2).
    ``depth_param`` ("standard", "depth_mup", "completep") with ``base_depth``: the branch
    multiplier (n_layer / base_depth)^-alpha of ``zoo.depth`` (standard: none); the depth factors
    of the learning rates and eps are ``zoo.depth.make_depth_optimizer``'s.
    """

    def __init__(self, width: int, *, param: str = "sp", base_width: int = 64,
                 vocab_size: int = 64, block_size: int = 16, n_layer: int = 2, n_head: int = 4,
                 grow: str = "width", d_head: int = 16, tie: bool = False,
                 readout_zero_init: bool = False, query_zero_init: bool = False,
                 depth_param: str = "standard", base_depth: int = 2):
        super().__init__(width, param=param, base_width=base_width,
                         readout_zero_init=readout_zero_init)
        check_choice("grow", grow, ("width", "heads"))
        if query_zero_init and param not in ("mup", "mup_table8"):
            raise ValueError(f"query_zero_init is a muP option; param={param!r} does not use it")
        if tie and readout_zero_init:
            raise ValueError("tie=True shares the readout with the embedding; it cannot be zero-init")
        if grow == "heads":
            if width % d_head or base_width % d_head:
                raise ValueError(f"grow='heads': width {width} and base_width {base_width} "
                                 f"must be multiples of d_head={d_head}")
            n_head, base_d_head = width // d_head, d_head
        else:
            if width % n_head or base_width % n_head:
                raise ValueError(f"grow='width': width {width} and base_width {base_width} "
                                 f"must be multiples of n_head={n_head}")
            d_head, base_d_head = width // n_head, base_width // n_head
        self.grow = grow
        self.tie = tie
        self.n_head, self.d_head, self.base_d_head = n_head, d_head, base_d_head
        self.block_size = block_size
        attn_scale = self.parametrization.attention_scale(d_head, base_d_head)

        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Embedding(block_size, width)
        self.depth, self.depth_param, self.base_depth = n_layer, depth_param, base_depth
        mult = branch_multiplier(depth_param, n_layer, base_depth)
        self.blocks = nn.ModuleList(Block(width, n_head, attn_scale, mult) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(width)
        self.readout = Linear(width, vocab_size, role="readout", bias=False)

        if tie:
            for module in self.modules():
                if isinstance(module, Linear) and module is not self.readout:
                    self.parametrization.setup(module)
            self.readout.weight = self.tok_emb.weight
            self.readout.multiplier = self.parametrization.tied_readout_multiplier(width)
        else:
            self._apply_parametrization()
        if query_zero_init:
            with torch.no_grad():
                for block in self.blocks:
                    nn.init.zeros_(block.attn.query.weight)
                    nn.init.zeros_(block.attn.query.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.readout(self.ln_f(x))
