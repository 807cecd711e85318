"""The zoo MLP.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Linear, ZooModel, check_choice


_NONLINEARITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu,
}


class MLP(ZooModel):
    """d_in -> width -> ... -> width -> d_out; ``depth`` = number of hidden activations L.

    depth=3: input Linear(d_in, n), 2 hidden Linear(n, n), readout Linear(n, d_out).
    Attributes: ``input``, ``hidden`` (ModuleList), ``readout``.
    """

    def __init__(self, width: int, *, param: str = "sp", base_width: int = 64, depth: int = 3,
                 d_in: int = 32, d_out: int = 10, nonlinearity: str = "tanh", bias: bool = True,
                 readout_zero_init: bool = False):
        super().__init__(width, param=param, base_width=base_width,
                         readout_zero_init=readout_zero_init)
        check_choice("nonlinearity", nonlinearity, tuple(_NONLINEARITIES))
        if depth < 1:
            raise ValueError(f"depth (number of hidden layers) must be >= 1, got {depth}")
        self.depth = depth
        self.nonlinearity = nonlinearity
        self.input = Linear(d_in, width, role="input", bias=bias)
        self.hidden = nn.ModuleList(
            Linear(width, width, role="hidden", bias=bias) for _ in range(depth - 1))
        self.readout = Linear(width, d_out, role="readout", bias=bias)
        self._apply_parametrization()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = _NONLINEARITIES[self.nonlinearity]
        h = phi(self.input(x))
        for layer in self.hidden:
            h = phi(layer(h))
        return self.readout(h)
