"""The zoo in depth: residual networks in standard, Depth-muP and CompleteP form.

Written by hand from the papers (they are the reference fixtures of ``analyze_depth`` and
``check_depth``, so they do not import the depth engine):

* the residual stream x^l = x^{l-1} + m_L g^l(x^{l-1}), l = 1..L, with branch multiplier
  m_L = (L / L_0)^-alpha (TP6, arXiv 2310.02244, eq. 1 with a = 1 at L = L_0; CompleteP,
  arXiv 2505.01618, Table 1): standard alpha = 0 (no multiplier in the graph), Depth-muP
  alpha = 1/2, CompleteP alpha = 1;
* the learning rate of every parameter inside the blocks, times (L / L_0)^{alpha - 1} for Adam
  (TP6: eta / sqrt(L) at alpha = 1/2; CompleteP Table 1: no depth factor at alpha = 1) and
  (L / L_0)^{2 alpha - 1} for SGD (TP6: constant at alpha = 1/2; the gradient of a block carries
  the multiplier L^-alpha, so SGD's step is L^-alpha times its LR and alpha + gamma = 1 needs
  LR ~ L^{2 alpha - 1}); standard: no depth factor;
* Adam's eps inside the blocks, times (L / L_0)^-alpha (CompleteP Table 1, eps ~ m_L^-alpha: a
  block's gradient entries carry the multiplier's L^-alpha, and eps must shrink with them).

``L_0 = base_depth`` is where every depth form coincides with standard (multiplier 1, same LR).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DEFAULT_LR, Linear, ZooModel, check_choice, make_optimizer

DEPTH_PARAMS: tuple[str, ...] = ("standard", "depth_mup", "completep")

#: branch-multiplier exponent alpha (m_L ~ L^-alpha) of each depth form
ALPHA: dict[str, float] = {"standard": 0.0, "depth_mup": 0.5, "completep": 1.0}

#: Adam's eps at the base depth (torch's default)
BASE_EPS = 1e-8


def branch_multiplier(depth_param: str, depth: int, base_depth: int) -> float | None:
    """(L / L_0)^-alpha, or None for standard (no multiplication in the graph at all)."""
    check_choice("depth_param", depth_param, DEPTH_PARAMS)
    if depth < 1 or base_depth < 1:
        raise ValueError(f"depth and base_depth must be >= 1, got {depth}, {base_depth}")
    if depth_param == "standard":
        return None
    return (depth / base_depth) ** -ALPHA[depth_param]


def depth_lr_scale(depth_param: str, depth: int, base_depth: int, optimizer: str) -> float:
    """The depth factor of a block parameter's learning rate (module docstring)."""
    alpha = ALPHA[depth_param]
    if depth_param == "standard":
        return 1.0
    exponent = 2 * alpha - 1 if optimizer == "sgd" else alpha - 1
    return (depth / base_depth) ** exponent


def depth_eps_scale(depth_param: str, depth: int, base_depth: int) -> float:
    """The depth factor of Adam's eps inside the blocks: (L / L_0)^-alpha (CompleteP Table 1)."""
    return (depth / base_depth) ** -ALPHA[depth_param]


class ResidualBlock(nn.Module):
    """One pre-norm branch of one layer (TP6's block depth 1): g(x) = W relu(LN(x)).

    The LayerNorm has no affine parameters, so the branch's only parameters are W and its bias."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.linear = Linear(width, width, role="hidden")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.relu(self.norm(x)))


class ResidualMLP(ZooModel):
    """d_in -> width, ``depth`` residual blocks x + m_L W relu(LN x), readout width -> d_out.

    At init the branch outputs are independent of one another and of size Theta(1) (the norm
    fixes their input's size), so mean(x_L^2) = mean(x_0^2) + L m_L^2 Theta(1): the stream grows
    like L^{1/2} when alpha = 0 and stays Theta(1) for alpha >= 1/2 (TP6 §2).
    """

    def __init__(self, width: int, *, param: str = "mup", base_width: int = 64, depth: int = 4,
                 depth_param: str = "standard", base_depth: int = 2, d_in: int = 16,
                 d_out: int = 4):
        super().__init__(width, param=param, base_width=base_width)
        self.depth, self.depth_param, self.base_depth = depth, depth_param, base_depth
        self.branch_multiplier = branch_multiplier(depth_param, depth, base_depth)
        self.input = Linear(d_in, width, role="input")
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.readout = Linear(width, d_out, role="readout")
        self._apply_parametrization()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        m = self.branch_multiplier
        for block in self.blocks:
            h = h + block(h) if m is None else h + m * block(h)
        return self.readout(h)


def make_depth_optimizer(model: ZooModel, kind: str = "adam", lr: float | None = None,
                         **optimizer_kwargs) -> torch.optim.Optimizer:
    """``zoo.make_optimizer``'s per-role groups, each split into its parameters inside the blocks
    (``blocks.*``: learning rate times ``depth_lr_scale``, Adam eps times ``depth_eps_scale``)
    and the rest (no depth factor). The model needs ``depth``, ``depth_param``, ``base_depth``."""
    base = make_optimizer(model, kind, lr, **optimizer_kwargs)
    lr_scale = depth_lr_scale(model.depth_param, model.depth, model.base_depth, kind)
    eps_scale = depth_eps_scale(model.depth_param, model.depth, model.base_depth)
    inside = {id(p) for name, p in model.named_parameters() if name.startswith("blocks.")}
    groups = []
    for group in base.param_groups:
        for in_blocks in (True, False):
            ps = [p for p in group["params"] if (id(p) in inside) == in_blocks]
            if not ps:
                continue
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = ps
            if in_blocks:
                g["lr"] = group["lr"] * lr_scale
                if kind != "sgd":
                    g["eps"] = group.get("eps", BASE_EPS) * eps_scale
            groups.append(g)
    defaults = {"lr": DEFAULT_LR[kind] if lr is None else lr}
    return type(base)(groups, **defaults)
