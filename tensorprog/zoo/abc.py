"""The abc-parametrized MLP of TP4 (``ABCMLP``) and its per-layer optimizer.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F


class ABCMLP(nn.Module):
    """The L-hidden-layer MLP of TP4 §2 with explicit exponents, no biases.

    h^1 = n^{-a_1} W^1 xi,  h^l = n^{-a_l} W^l phi(h^{l-1}),  f = n^{-a_{L+1}} W^{L+1} phi(h^L),
    W^l_ij ~ N(0, n^{-2 b_l}); ``abc_optimizer`` gives layer l the learning rate lr * n^{-c_l}.
    Multipliers are written as ``x * n^{-a}`` (one aten.mul each), so the tracer reads them.
    """

    def __init__(self, width: int, a, b, *, d_in: int = 8, d_out: int = 4, nonlinearity: str = "tanh"):
        super().__init__()
        if len(a) != len(b) or len(a) < 2:
            raise ValueError("a and b need one entry per layer (input, hidden..., readout), >= 2")
        dims = [d_in] + [width] * (len(a) - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=False) for i, o in zip(dims[:-1], dims[1:]))
        self.multipliers = [float(width) ** -float(x) for x in a]
        for layer, bl in zip(self.layers, b):
            nn.init.normal_(layer.weight, std=float(width) ** -float(bl))
        self.phi = {"tanh": torch.tanh, "relu": torch.relu, "gelu": F.gelu}[nonlinearity]
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (layer, m) in enumerate(zip(self.layers, self.multipliers)):
            if i:
                x = self.phi(x)
            x = layer(x) * m
        return x


def abc_optimizer(model: ABCMLP, c, kind: str = "sgd", lr: float = 0.1) -> torch.optim.Optimizer:
    """Per-layer learning rates lr * n^{-c_l} (c a number or one entry per layer)."""
    cs = list(c) if isinstance(c, (list, tuple)) else [c] * len(model.layers)
    groups = [{"params": [layer.weight], "lr": lr * float(model.width) ** -float(cl)}
              for layer, cl in zip(model.layers, cs)]
    return torch.optim.SGD(groups, lr=lr) if kind == "sgd" else torch.optim.Adam(groups, lr=lr)
