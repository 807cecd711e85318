"""Built-in model zoo: an MLP, a small CNN and a small GPT, each in SP, NTK and muP.

The models are written by hand from the formulas in the facts sheet (docs: tensor-programs.md,
sections 1-3), so they double as the reference fixtures of every other feature: a tracer or a
classifier that disagrees with them is wrong, not them.

Vocabulary
----------
``width`` is n (MLP hidden size, conv channels, GPT d_model). ``base_width`` (default 64) is where
every muP variant coincides with SP: muP factors are written with ``width_mult = width /
base_width``, which is 1 there (same seed -> same init, same outputs, same learning rates).
Finite dims (input dim, classes, vocab, sequence length, kernel size) never change with width.

Every weight layer carries a **role** (TP5 Table 3, App J):

============ ============================================= =========================
role         what                                          examples
============ ============================================= =========================
``input``    weight finite -> infinite                     first Linear / Conv, embeddings
``hidden``   weight infinite -> infinite (matrix-like)     n x n Linear, width x width conv
``readout``  weight infinite -> finite                     last Linear (logits)
``vector``   one infinite dim: biases of input/hidden      LayerNorm / GroupNorm / BatchNorm
             layers, norm gains and shifts                 weight and bias
``scalar``   no infinite dim: the readout's bias           ``readout.bias``
============ ============================================= =========================

and every variant is one small class below (``SP``, ``NTK``, ``MuP``, ``MuPTable8``) whose docstring
lists its abc exponents per role: W = n^{-a} w, w ~ N(0, n^{-2b}), learning rate ~ n^{-c}.

Where things live
-----------------
* forward multiplier n^{-a}: ``layer.multiplier`` on every ``Linear`` / ``Conv2d`` of this module
  (``None`` = no multiplication in the graph at all; a float = one ``aten.mul`` by that constant,
  present at every width, base width included, so traced graphs line up across widths).
  The GPT readout multiplier is ``model.readout.multiplier``.
* attention logit scale: ``attn.scale`` on each ``CausalSelfAttention`` (the value passed to
  ``F.scaled_dot_product_attention``; ``None`` = its default 1/sqrt(d_head)); ``attn.effective_scale``
  is the number actually used.
* per-parameter learning-rate factor: ``model.parametrization.lr_scale(role, optimizer)``;
  ``model.param_roles()`` maps parameter names to roles; ``make_optimizer`` builds the groups
  (each group carries ``"role"`` and ``"lr_scale"`` keys next to ``"lr"``).

Usage::

    ex = example("gpt", param="mup", optimizer="adam")
    model = ex.factory(128)
    out = model(*ex.example_inputs(128))
    ex.loss(out, ex.example_inputs(128)).backward()
    ex.make_optimizer(model).step()
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "PARAMS", "OPTIMIZERS", "ROLES", "EXAMPLES", "DEFAULT_LR",
    "Parametrization", "SP", "NTK", "MuP", "MuPTable8", "parametrization",
    "Linear", "Conv2d", "ZooModel", "MLP", "CNN", "GPT", "CausalSelfAttention", "Block",
    "make_optimizer", "Example", "example",
]

PARAMS: tuple[str, ...] = ("sp", "ntk", "mup", "mup_table8")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "adamw")
ROLES: tuple[str, ...] = ("input", "hidden", "readout", "vector", "scalar")
EXAMPLES: tuple[str, ...] = ("mlp", "cnn", "gpt")

#: Learning rate used when none is given (at base width; muP rescales it per role).
DEFAULT_LR: dict[str, float] = {"adam": 1e-3, "adamw": 1e-3, "sgd": 1e-2}
#: AdamW weight decay when none is given (torch's default).
DEFAULT_WEIGHT_DECAY = 0.01


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


# ---------------------------------------------------------------------------------------------
# Layers: nn.Linear / nn.Conv2d with a role and an optional forward multiplier
# ---------------------------------------------------------------------------------------------

class Linear(nn.Linear):
    """``nn.Linear`` (PyTorch default init) with a ``role`` and a forward ``multiplier``.

    y = multiplier * (x W^T) + b. The bias is never multiplied (abc puts n^{-a} on the weight).
    ``multiplier=None`` runs plain ``F.linear``, so SP and Table-3 muP trace to the same graph.
    """

    def __init__(self, fan_in: int, fan_out: int, *, role: str, bias: bool = True):
        super().__init__(fan_in, fan_out, bias=bias)
        _check_choice("role", role, ("input", "hidden", "readout"))
        self.role = role
        self.multiplier: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier is None:
            return F.linear(x, self.weight, self.bias)
        y = F.linear(x, self.weight) * self.multiplier
        return y if self.bias is None else y + self.bias


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (PyTorch default init) with a ``role`` and a forward ``multiplier``.

    Fan-in of the weight is in_channels * k * k. Same multiplier convention as ``Linear``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, role: str,
                 padding: int = 0, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        _check_choice("role", role, ("input", "hidden", "readout"))
        self.role = role
        self.multiplier: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier is None:
            return self._conv_forward(x, self.weight, self.bias)
        y = self._conv_forward(x, self.weight, None) * self.multiplier
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def _fan_in(layer: nn.Module) -> int:
    return math.prod(layer.weight.shape[1:])


# ---------------------------------------------------------------------------------------------
# Parametrizations: one class per variant; init + multiplier per layer, LR factor per role
# ---------------------------------------------------------------------------------------------

class Parametrization:
    """Base: what a variant does to a freshly built (PyTorch-default) layer, and its LR factors.

    ``setup(layer)`` may re-initialise the layer and set ``layer.multiplier``; it must not draw
    random numbers unless the variant changes the init distribution (so muP == SP at base width).
    """

    name = ""

    def __init__(self, width_mult: float = 1.0, *, readout_zero_init: bool = False):
        self.width_mult = float(width_mult)
        self.readout_zero_init = readout_zero_init

    def setup(self, layer: Linear | Conv2d) -> None:
        layer.multiplier = None

    def tied_readout_multiplier(self, fan_in: int) -> float | None:
        """Multiplier of a readout that shares its weight with the (N(0,1)) token embedding."""
        return None

    def attention_scale(self, d_head: int, base_d_head: int) -> float | None:
        """Logit scale for ``F.scaled_dot_product_attention``; None = its 1/sqrt(d_head)."""
        return None

    def lr_scale(self, role: str, optimizer: str) -> float:
        """Factor on the base learning rate for a parameter of ``role``."""
        return 1.0

    @property
    def per_role_lr(self) -> bool:
        """Whether learning rates differ between roles (muP) or one global LR is used."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(width_mult={self.width_mult:g})"


class SP(Parametrization):
    """Standard parametrization: PyTorch defaults, one global learning rate (TP4 §2 table, "SP").

    nn.Linear / nn.Conv2d: w ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (std 1/sqrt(3 fan_in)), same for
    the bias; nn.Embedding N(0, 1); norms ones / zeros; attention 1/sqrt(d_head).

    ======== === ====== ===================
    role      a    b     c (SGD and Adam)
    ======== === ====== ===================
    input     0    0     0
    hidden    0    1/2   0
    readout   0    1/2   0
    vector    0    0*    0
    ======== === ====== ===================

    (*) PyTorch's bias init has variance 1/(3 fan_in of its layer), so hidden biases have b = 1/2.
    """

    name = "sp"


class NTK(Parametrization):
    """Neural tangent parametrization (TP4 §2 table, "NTK"): unit init, 1/sqrt(fan_in) multipliers.

    Every Linear / Conv2d weight w ~ N(0, 1) with forward multiplier 1/sqrt(fan_in) (the input
    layer's 1/sqrt(d_in) is a width-independent constant); biases N(0, 1), multiplier 1;
    embeddings N(0, 1) with no multiplier; norms ones / zeros; attention 1/sqrt(d_head);
    one global learning rate.

    ======== ===== === ===================
    role      a     b   c (SGD and Adam)
    ======== ===== === ===================
    input     0     0   0
    hidden    1/2   0   0
    readout   1/2   0   0
    vector    0     0   0
    ======== ===== === ===================
    """

    name = "ntk"

    def setup(self, layer: Linear | Conv2d) -> None:
        nn.init.normal_(layer.weight, 0.0, 1.0)
        if layer.bias is not None:
            nn.init.normal_(layer.bias, 0.0, 1.0)
        layer.multiplier = _fan_in(layer) ** -0.5

    def tied_readout_multiplier(self, fan_in: int) -> float | None:
        return fan_in ** -0.5


class MuP(Parametrization):
    """muP in TP5 Table 3 form: init and learning rates only; no multiplier except attention.

    Input weights, embeddings, all biases, norm gains and hidden weights keep the SP init.
    Readout init std = SP std * sqrt(base_width / width) (variance ~ 1/fan_in^2), or exactly zero
    with ``readout_zero_init`` (TP5 App D.2; weight and bias). Attention logits use
    scale = sqrt(base_d_head) / d_head: 1/sqrt(d_head) at base width, ~ 1/d_head beyond (TP5 Def 4.1).
    With a tied readout (GPT ``tie=True``) the shared N(0, 1) init forces the Table 8 readout
    multiplier 1/width_mult instead (see ``MuPTable8``).

    LR factors (m = width_mult):

    ======== === ===== ======== ===== ========
    role      a   b     c Adam   Adam  SGD
    ======== === ===== ======== ===== ========
    input     0   0     0        1     m   (c = -1)
    vector    0   0*    0        1     m   (c = -1; LayerNorm / GroupNorm / BatchNorm, biases)
    hidden    0   1/2   1        1/m   1   (c = 0)
    readout   0   1     1        1/m   1/m (c = 1)
    scalar    0   1/2*  0        1     1
    ======== === ===== ======== ===== ========

    (*) biases keep PyTorch's init (variance 1/(3 fan_in of their layer)), so hidden biases have
    b = 1/2 rather than Table 3's 0: smaller than Theta(1), stable, and equal to SP at base width.
    Canonical forms: Adam readout (0, 1, 1) ~ (1, 0, 0) of TP4b Def 2.5.1 by the symmetry
    (a+t, b-t, c-t) with t = 1; SGD (0,0,-1), (0,1/2,0), (0,1,1) ~ TP4's muP
    (-1/2,0 ; 1/2,1/2 ; 1/2,1/2 ; c = 0) by (a+t, b-t, c-2t).
    """

    name = "mup"

    def setup(self, layer: Linear | Conv2d) -> None:
        layer.multiplier = None
        if layer.role == "readout":
            self._init_readout(layer)

    def _init_readout(self, layer: Linear | Conv2d) -> None:
        with torch.no_grad():
            if self.readout_zero_init:
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            else:
                layer.weight.mul_(self.width_mult ** -0.5)

    def tied_readout_multiplier(self, fan_in: int) -> float | None:
        return 1.0 / self.width_mult

    def attention_scale(self, d_head: int, base_d_head: int) -> float | None:
        return math.sqrt(base_d_head) / d_head

    def lr_scale(self, role: str, optimizer: str) -> float:
        _check_choice("role", role, ROLES)
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        m = self.width_mult
        if optimizer == "sgd":
            return {"input": m, "vector": m, "hidden": 1.0, "readout": 1.0 / m, "scalar": 1.0}[role]
        return {"input": 1.0, "vector": 1.0, "hidden": 1.0 / m, "readout": 1.0 / m,
                "scalar": 1.0}[role]

    @property
    def per_role_lr(self) -> bool:
        return True


class MuPTable8(MuP):
    """muP in the mup package's form (TP5 Table 8): readout multiplier 1/width_mult.

    The readout computes (x W^T) / width_mult + b with init variance held constant in width at its
    base-width SP value: std = SP std * sqrt(width_mult) = 1/sqrt(3 base_width) (Table 8: "init
    variance constant"; keeping the plain SP std 1/sqrt(3 width) would give b = 1/2 and break
    b_{L+1} <= c_{L+1}, TP4b Thm 2.8.12). ``readout_zero_init`` zeroes it instead.
    Readout LR factor: Adam 1, SGD width_mult. Every other role as ``MuP`` (Table 3).

    ======== === === ======== ===== ========
    role      a   b   c Adam   Adam  SGD
    ======== === === ======== ===== ========
    readout   1   0   0        1     m  (c = -1)
    ======== === === ======== ===== ========

    This is (a+t, b-t, c-t) / (a+t, b-t, c-2t) of ``MuP``'s readout with t = 1 (TP5 Lemma J.1), and
    exactly TP4b Def 2.5.1's Adam muP readout (1, 0, 0).
    """

    name = "mup_table8"

    def setup(self, layer: Linear | Conv2d) -> None:
        layer.multiplier = None
        if layer.role == "readout":
            self._init_readout(layer)
            layer.multiplier = 1.0 / self.width_mult

    def _init_readout(self, layer: Linear | Conv2d) -> None:
        with torch.no_grad():
            if self.readout_zero_init:
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            else:
                layer.weight.mul_(self.width_mult ** 0.5)

    def lr_scale(self, role: str, optimizer: str) -> float:
        if role == "readout":
            _check_choice("optimizer", optimizer, OPTIMIZERS)
            return self.width_mult if optimizer == "sgd" else 1.0
        return super().lr_scale(role, optimizer)


_PARAMETRIZATIONS: dict[str, type[Parametrization]] = {
    "sp": SP, "ntk": NTK, "mup": MuP, "mup_table8": MuPTable8,
}


def parametrization(param: str, width_mult: float = 1.0, **kwargs) -> Parametrization:
    """The ``Parametrization`` object for ``param`` ("sp", "ntk", "mup", "mup_table8")."""
    _check_choice("param", param, PARAMS)
    return _PARAMETRIZATIONS[param](width_mult, **kwargs)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


class ZooModel(nn.Module):
    """Common part of the zoo models: width bookkeeping, the parametrization, parameter roles."""

    def __init__(self, width: int, *, param: str, base_width: int, readout_zero_init: bool = False):
        super().__init__()
        _check_choice("param", param, PARAMS)
        if width <= 0 or base_width <= 0:
            raise ValueError(f"width and base_width must be positive, got {width}, {base_width}")
        if readout_zero_init and param not in ("mup", "mup_table8"):
            raise ValueError(f"readout_zero_init is a muP option; param={param!r} does not use it")
        self.width = width
        self.base_width = base_width
        self.width_mult = width / base_width
        self.param = param
        self.parametrization = parametrization(param, self.width_mult,
                                               readout_zero_init=readout_zero_init)

    def _apply_parametrization(self) -> None:
        """Re-initialise / set multipliers of every role-carrying layer (call once, at the end)."""
        for module in self.modules():
            if isinstance(module, (Linear, Conv2d)):
                self.parametrization.setup(module)

    def param_roles(self) -> dict[str, str]:
        """Parameter name (as in ``named_parameters()``) -> role. Tied parameters appear once."""
        roles: dict[str, str] = {}
        seen: set[int] = set()
        for mod_name, module in self.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if isinstance(module, (Linear, Conv2d)):
                    if p_name == "weight":
                        role = module.role
                    else:
                        role = "scalar" if module.role == "readout" else "vector"
                elif isinstance(module, nn.Embedding):
                    role = "input"
                elif isinstance(module, _NORMS):
                    role = "vector"
                else:
                    raise TypeError(f"no role for parameter {full} of {type(module).__name__}")
                roles[full] = role
        return roles


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
        _check_choice("nonlinearity", nonlinearity, tuple(_NONLINEARITIES))
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
    """Pre-LayerNorm transformer block: x + attn(ln1 x), then x + mlp(ln2 x)."""

    def __init__(self, width: int, n_head: int, attn_scale: float | None):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, n_head, attn_scale)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = FeedForward(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


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
    """

    def __init__(self, width: int, *, param: str = "sp", base_width: int = 64,
                 vocab_size: int = 64, block_size: int = 16, n_layer: int = 2, n_head: int = 4,
                 grow: str = "width", d_head: int = 16, tie: bool = False,
                 readout_zero_init: bool = False, query_zero_init: bool = False):
        super().__init__(width, param=param, base_width=base_width,
                         readout_zero_init=readout_zero_init)
        _check_choice("grow", grow, ("width", "heads"))
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
        self.blocks = nn.ModuleList(Block(width, n_head, attn_scale) for _ in range(n_layer))
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


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------

def make_optimizer(model: ZooModel, kind: str = "adam", lr: float | None = None, *,
                   weight_decay: float | None = None, **optimizer_kwargs) -> torch.optim.Optimizer:
    """torch.optim optimizer with the model's per-role learning rates.

    sp / ntk: one group, one global LR. mup / mup_table8: one group per role with
    lr * ``model.parametrization.lr_scale(role, kind)``. Each group also carries ``"role"``
    ("all" for the single global group) and ``"lr_scale"``.
    ``kind="adamw"``: torch's decoupled weight decay with the same ``weight_decay`` in every group
    (default 0.01). It is left constant in width, so the per-step decay lr_group * wd follows each
    group's muP learning rate (TP5: "AdamW weight decay as Adam"; as the mup package's MuAdamW).
    """
    _check_choice("optimizer", kind, OPTIMIZERS)
    if not isinstance(model, ZooModel):
        raise TypeError(f"make_optimizer needs a zoo model (MLP, CNN, GPT), got {type(model).__name__}")
    lr = DEFAULT_LR[kind] if lr is None else lr
    p = model.parametrization
    params = dict(model.named_parameters())
    if p.per_role_lr:
        by_role: dict[str, list[nn.Parameter]] = {}
        for name, role in model.param_roles().items():
            by_role.setdefault(role, []).append(params[name])
        groups = [{"params": ps, "lr": lr * p.lr_scale(role, kind), "role": role,
                   "lr_scale": p.lr_scale(role, kind)} for role, ps in by_role.items()]
    else:
        groups = [{"params": list(params.values()), "lr": lr, "role": "all", "lr_scale": 1.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, **optimizer_kwargs)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, **optimizer_kwargs)
    wd = DEFAULT_WEIGHT_DECAY if weight_decay is None else weight_decay
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, **optimizer_kwargs)


# ---------------------------------------------------------------------------------------------
# Examples: model + inputs + loss + optimizer, ready for the CLI and the tests
# ---------------------------------------------------------------------------------------------

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


def example(name: str, param: str = "mup", optimizer: str = "adam", *, lr: float | None = None,
            widths: tuple[int, ...] = (64, 128, 256), **model_kwargs) -> Example:
    """The zoo example ``name`` ("mlp", "cnn", "gpt") in ``param`` with ``optimizer``.

    ``model_kwargs`` go to the model's constructor (``MLP``, ``CNN``, ``GPT``; e.g. depth,
    nonlinearity, tie, grow, base_width, readout_zero_init, query_zero_init).
    """
    _check_choice("example", name, EXAMPLES)
    _check_choice("param", param, PARAMS)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    cls = _MODELS[name]
    sig = inspect.signature(cls.__init__)
    allowed = tuple(k for k in sig.parameters if k not in ("self", "width", "param"))
    for key in model_kwargs:
        _check_choice(f"{name} option", key, allowed)
    options = {k: v.default for k, v in sig.parameters.items() if k in allowed}
    options.update(model_kwargs)
    base_width = options["base_width"]

    def factory(width: int) -> nn.Module:
        return cls(width, param=param, **model_kwargs)

    if name == "mlp":
        def example_inputs(width: int) -> tuple:
            return (torch.randn(8, options["d_in"], generator=_generator(_SEED_INPUTS), device="cpu"),)
        loss = _mse_to_fixed_targets
    elif name == "cnn":
        def example_inputs(width: int) -> tuple:
            return (torch.randn(4, options["in_channels"], 8, 8, generator=_generator(_SEED_INPUTS),
                                device="cpu"),)
        loss = _cross_entropy_to_fixed_labels
    else:
        def example_inputs(width: int) -> tuple:
            return (torch.randint(options["vocab_size"], (4, options["block_size"]),
                                  generator=_generator(_SEED_INPUTS), device="cpu"),)
        loss = _next_token_loss

    def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model, optimizer, lr)

    description = (f"{_DESCRIPTIONS[name].format(**options)}; {_PARAM_DESCRIPTIONS[param]}; "
                   f"{optimizer}, base width {base_width}")
    return Example(name=f"{name}-{param}", description=description, factory=factory,
                   example_inputs=example_inputs, make_optimizer=optimizer_for, loss=loss,
                   base_width=base_width, widths=tuple(widths), param=param, optimizer=optimizer)


# ---------------------------------------------------------------------------------------------
# The TP4 MLP in any abc-parametrization: the bridge between theory.ABC and the traced engine
# ---------------------------------------------------------------------------------------------

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
