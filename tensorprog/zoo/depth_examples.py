"""``depth_example(name, depth_param)``: a zoo residual network as a factory (width, depth) with
its inputs, loss and depth-scaled optimizer, ready for ``analyze_depth`` / ``check_depth``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import OPTIMIZERS, PARAMS, check_choice
from .depth import DEPTH_PARAMS, ResidualMLP, make_depth_optimizer
from .examples import example
from .gpt import GPT

DEPTH_EXAMPLES: tuple[str, ...] = ("resmlp", "gpt")


@dataclass(frozen=True)
class DepthExample:
    name: str                                            # e.g. "resmlp-completep"
    description: str
    factory: Callable[[int, int], nn.Module]             # (width, depth) -> fresh model
    example_inputs: Callable[[int], tuple]               # width -> inputs (same at every depth)
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    loss: Callable[[Any, tuple], torch.Tensor]
    width: int
    depths: tuple[int, ...]
    base_depth: int
    depth_param: str                                     # "standard" | "depth_mup" | "completep"
    optimizer: str


def _resmlp_inputs(width: int) -> tuple:
    return (torch.randn(8, 16, generator=torch.Generator().manual_seed(0)),)


def _resmlp_loss(out: torch.Tensor, inputs: tuple) -> torch.Tensor:
    targets = torch.randn(tuple(out.shape), generator=torch.Generator().manual_seed(1))
    return F.mse_loss(out, targets.to(device=out.device, dtype=out.dtype))


def depth_example(name: str, depth_param: str = "standard", param: str = "mup",
                  optimizer: str = "adam", *, width: int = 32,
                  depths: tuple[int, ...] = (2, 4, 8, 16, 32), base_depth: int = 2,
                  lr: float | None = None, **model_kwargs) -> DepthExample:
    """The zoo residual MLP ("resmlp") or GPT ("gpt") in ``depth_param`` (muP in width by
    default), its depth factors as in ``zoo.depth``."""
    check_choice("depth example", name, DEPTH_EXAMPLES)
    check_choice("depth_param", depth_param, DEPTH_PARAMS)
    check_choice("param", param, PARAMS)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    options = dict(param=param, depth_param=depth_param, base_depth=base_depth, **model_kwargs)
    if name == "resmlp":
        def factory(w: int, depth: int) -> nn.Module:
            return ResidualMLP(w, depth=depth, **options)
        inputs, loss = _resmlp_inputs, _resmlp_loss
        what = "residual MLP: pre-LN blocks x + m W relu(LN x)"
    else:
        def factory(w: int, depth: int) -> nn.Module:
            return GPT(w, n_layer=depth, **options)
        ex = example("gpt", param, optimizer, lr=lr, **model_kwargs)
        inputs, loss = ex.example_inputs, ex.loss
        what = "nanoGPT: pre-LN blocks, two branches (attention, MLP) per block"

    def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
        return make_depth_optimizer(model, optimizer, lr)

    return DepthExample(name=f"{name}-{depth_param}", description=f"{what}; {depth_param}; "
                        f"{param} in width; {optimizer}, base depth {base_depth}",
                        factory=factory, example_inputs=inputs, make_optimizer=optimizer_for,
                        loss=loss, width=width, depths=tuple(depths), base_depth=base_depth,
                        depth_param=depth_param, optimizer=optimizer)
