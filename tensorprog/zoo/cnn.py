"""The zoo CNN.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Conv2d, Linear, ZooModel


class CNN(ZooModel):
    """Small conv net on (B, in_channels, 8, 8) images, ``width`` channels everywhere.

    conv1 (in_channels -> n, 3x3, pad 1) -> GroupNorm(num_groups=4, n) -> relu
    -> conv2 (n -> n, 3x3, pad 1) -> BatchNorm2d(n) -> relu -> max_pool2d(2)
    -> conv3 (n -> n, 3x3, pad 1) -> relu -> adaptive_avg_pool2d(1) -> flatten -> readout (n -> classes).

    The GroupNorm group count is fixed (4) so the group size grows with width (a fixed group
    size would make the group count an infinite dim). conv1 is the input layer (fan-in
    in_channels * 9, finite), conv2 / conv3 are hidden (fan-in 9 n).
    """

    def __init__(self, width: int, *, param: str = "sp", base_width: int = 64,
                 in_channels: int = 3, num_classes: int = 10, num_groups: int = 4,
                 readout_zero_init: bool = False):
        super().__init__(width, param=param, base_width=base_width,
                         readout_zero_init=readout_zero_init)
        if width % num_groups:
            raise ValueError(f"width {width} must be divisible by num_groups={num_groups}")
        self.conv1 = Conv2d(in_channels, width, 3, padding=1, role="input")
        self.norm1 = nn.GroupNorm(num_groups, width)
        self.conv2 = Conv2d(width, width, 3, padding=1, role="hidden")
        self.norm2 = nn.BatchNorm2d(width)
        self.conv3 = Conv2d(width, width, 3, padding=1, role="hidden")
        self.readout = Linear(width, num_classes, role="readout")
        self._apply_parametrization()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = F.relu(self.norm2(self.conv2(h)))
        h = F.max_pool2d(h, 2)
        h = F.relu(self.conv3(h))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.readout(h)
