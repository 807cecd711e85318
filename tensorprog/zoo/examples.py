"""``example(name, param, optimizer)``: a zoo model with its inputs, loss and optimizer, ready for
``trace`` / ``analyze`` / ``check``.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import EXAMPLES, OPTIMIZERS, PARAMS, ZooModel, check_choice, make_optimizer
from .cnn import CNN
from .gpt import GPT
from .mlp import MLP


@dataclass(frozen=True)
class Example:
    name: str                                            # e.g. "gpt-mup"
    description: str
    factory: Callable[[int], nn.Module]                  # width -> fresh model
    example_inputs: Callable[[int], tuple]               # width -> inputs (same at every width)
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    loss: Callable[[Any, tuple], torch.Tensor]           # (model output, inputs) -> scalar
    base_width: int
    widths: tuple[int, ...]
    param: str                                           # "sp" | "ntk" | "mup" | "mup_table8"
    optimizer: str                                       # "adam" | "sgd" | "adamw"


_MODELS: dict[str, type[ZooModel]] = {"mlp": MLP, "cnn": CNN, "gpt": GPT}


_DESCRIPTIONS = {
    "mlp": "MLP {d_in} -> width x {depth} hidden layers ({nonlinearity}) -> {d_out}",
    "cnn": "CNN: 3 conv3x3 layers of width channels (GroupNorm, BatchNorm, max-pool) -> linear readout",
    "gpt": "nanoGPT: {n_layer} pre-LN blocks, d_model = width, vocab {vocab_size}, context {block_size}",
}


_PARAM_DESCRIPTIONS = {
    "sp": "SP (PyTorch defaults, one global LR)",
    "ntk": "NTK (N(0,1) weights, 1/sqrt(fan_in) multipliers, one global LR)",
    "mup": "muP, TP5 Table 3 (readout init / sqrt(width_mult), per-role LR, 1/d_head attention)",
    "mup_table8": "muP, TP5 Table 8 (readout multiplier 1/width_mult, per-role LR, 1/d_head attention)",
}
_SEED_INPUTS, _SEED_TARGETS = 0, 1


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _mse_to_fixed_targets(out: torch.Tensor, inputs: tuple) -> torch.Tensor:
    targets = torch.randn(tuple(out.shape), generator=_generator(_SEED_TARGETS), device="cpu")
    return F.mse_loss(out, targets.to(device=out.device, dtype=out.dtype))


def _cross_entropy_to_fixed_labels(out: torch.Tensor, inputs: tuple) -> torch.Tensor:
    labels = torch.randint(out.shape[-1], (out.shape[0],), generator=_generator(_SEED_TARGETS),
                           device="cpu")
    return F.cross_entropy(out, labels.to(out.device))


def _next_token_loss(logits: torch.Tensor, inputs: tuple) -> torch.Tensor:
    (idx,) = inputs
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           idx[:, 1:].reshape(-1).to(logits.device))


def _mlp_inputs(width: int, d_in: int) -> tuple:
    return (torch.randn(8, d_in, generator=_generator(_SEED_INPUTS), device="cpu"),)


def _cnn_inputs(width: int, channels: int) -> tuple:
    return (torch.randn(4, channels, 8, 8, generator=_generator(_SEED_INPUTS), device="cpu"),)


def _token_inputs(width: int, vocab: int, block: int) -> tuple:
    return (torch.randint(vocab, (4, block), generator=_generator(_SEED_INPUTS), device="cpu"),)


def _optimizer_for(model: nn.Module, kind: str, lr: float | None) -> torch.optim.Optimizer:
    return make_optimizer(model, kind, lr)


def example(name: str, param: str = "mup", optimizer: str = "adam", *, lr: float | None = None,
            widths: tuple[int, ...] = (64, 128, 256), **model_kwargs) -> Example:
    """The zoo example ``name`` ("mlp", "cnn", "gpt") in ``param`` with ``optimizer``.

    ``model_kwargs`` go to the model's constructor (``MLP``, ``CNN``, ``GPT``; e.g. depth,
    nonlinearity, tie, grow, base_width, readout_zero_init, query_zero_init).
    """
    check_choice("example", name, EXAMPLES)
    check_choice("param", param, PARAMS)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    cls = _MODELS[name]
    sig = inspect.signature(cls.__init__)
    allowed = tuple(k for k in sig.parameters if k not in ("self", "width", "param"))
    for key in model_kwargs:
        check_choice(f"{name} option", key, allowed)
    options = {k: v.default for k, v in sig.parameters.items() if k in allowed}
    options.update(model_kwargs)
    base_width = options["base_width"]

    # partials of module-level functions: picklable, so check(backend="local") can send them
    factory = functools.partial(cls, param=param, **model_kwargs)
    if name == "mlp":
        example_inputs = functools.partial(_mlp_inputs, d_in=options["d_in"])
        loss = _mse_to_fixed_targets
    elif name == "cnn":
        example_inputs = functools.partial(_cnn_inputs, channels=options["in_channels"])
        loss = _cross_entropy_to_fixed_labels
    else:
        example_inputs = functools.partial(_token_inputs, vocab=options["vocab_size"],
                                           block=options["block_size"])
        loss = _next_token_loss
    optimizer_for = functools.partial(_optimizer_for, kind=optimizer, lr=lr)

    description = (f"{_DESCRIPTIONS[name].format(**options)}; {_PARAM_DESCRIPTIONS[param]}; "
                   f"{optimizer}, base width {base_width}")
    return Example(name=f"{name}-{param}", description=description, factory=factory,
                   example_inputs=example_inputs, make_optimizer=optimizer_for, loss=loss,
                   base_width=base_width, widths=tuple(widths), param=param, optimizer=optimizer)
