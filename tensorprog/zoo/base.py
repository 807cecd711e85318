"""The shared parts of the zoo: choices and defaults, width-aware layers, the four parametrizations
(SP, NTK, muP Table 3, muP Table 8), ``ZooModel`` and ``make_optimizer``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


PARAMS: tuple[str, ...] = ("sp", "ntk", "mup", "mup_table8")


OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "adamw")


ROLES: tuple[str, ...] = ("input", "hidden", "readout", "vector", "scalar")


EXAMPLES: tuple[str, ...] = ("mlp", "cnn", "gpt")


#: Learning rate used when none is given (at base width; muP rescales it per role).
DEFAULT_LR: dict[str, float] = {"adam": 1e-3, "adamw": 1e-3, "sgd": 1e-2}


#: AdamW weight decay when none is given (torch's default).
DEFAULT_WEIGHT_DECAY = 0.01


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


class Linear(nn.Linear):
    """``nn.Linear`` (PyTorch default init) with a ``role`` and a forward ``multiplier``.

    y = multiplier * (x W^T) + b. The bias is never multiplied (abc puts n^{-a} on the weight).
    ``multiplier=None`` runs plain ``F.linear``, so SP and Table-3 muP trace to the same graph.
    """

    def __init__(self, fan_in: int, fan_out: int, *, role: str, bias: bool = True):
        super().__init__(fan_in, fan_out, bias=bias)
        check_choice("role", role, ("input", "hidden", "readout"))
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
        check_choice("role", role, ("input", "hidden", "readout"))
        self.role = role
        self.multiplier: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier is None:
            return self._conv_forward(x, self.weight, self.bias)
        y = self._conv_forward(x, self.weight, None) * self.multiplier
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def fan_in(layer: nn.Module) -> int:
    return math.prod(layer.weight.shape[1:])


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
        layer.multiplier = fan_in(layer) ** -0.5

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
        check_choice("role", role, ROLES)
        check_choice("optimizer", optimizer, OPTIMIZERS)
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
    variance constant"; keeping the plain SP std 1/sqrt(3 width) gives b = 1/2 > c = 0, TP4b
    Thm 2.8.12's b_{L+1} <= c_{L+1}: the readout's updates outgrow its init, which ``analyze``
    notes without calling it unstable, theory note 9). ``readout_zero_init`` zeroes it instead.
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
            check_choice("optimizer", optimizer, OPTIMIZERS)
            return self.width_mult if optimizer == "sgd" else 1.0
        return super().lr_scale(role, optimizer)


_PARAMETRIZATIONS: dict[str, type[Parametrization]] = {
    "sp": SP, "ntk": NTK, "mup": MuP, "mup_table8": MuPTable8,
}


def parametrization(param: str, width_mult: float = 1.0, **kwargs) -> Parametrization:
    """The ``Parametrization`` object for ``param`` ("sp", "ntk", "mup", "mup_table8")."""
    check_choice("param", param, PARAMS)
    return _PARAMETRIZATIONS[param](width_mult, **kwargs)


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


class ZooModel(nn.Module):
    """Common part of the zoo models: width bookkeeping, the parametrization, parameter roles."""

    def __init__(self, width: int, *, param: str, base_width: int, readout_zero_init: bool = False):
        super().__init__()
        check_choice("param", param, PARAMS)
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
    check_choice("optimizer", kind, OPTIMIZERS)
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
