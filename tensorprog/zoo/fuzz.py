"""Random small architectures for differential fuzzing of the engine against ``check``.

``random_architecture(seed)`` draws a ``Spec`` (a plain dataclass: the blocks, and per layer an
init exponent b, a multiplier exponent a and a learning-rate exponent c); ``build(spec)`` turns it
into a factory ``width -> nn.Module``; ``example_inputs(spec)`` and ``make_optimizer(spec)`` give
the rest of what ``analyze`` / ``check`` need. ``benchmarks/fuzz.py`` and ``tests/test_fuzz.py``
run both on many seeds and count where the predicted exponents and the measured slopes disagree.

Vocabulary (each written the way real code writes it, since the tracer has to read every form):

* ``linear``: ``nn.Linear(n, n)``; ``einsum``: a raw ``(n, n)`` parameter used through
  ``torch.einsum("bti,oi->bto", h, W)``;
* ``attn``: a packed ``nn.Linear(n, 3n)`` split into q, k, v by slicing, ``chunk`` or
  ``view(B, T, 3, H, d)`` + indexing, 2 heads (d_head = n / 2 grows), then attention either
  through ``F.scaled_dot_product_attention(scale=s)``, with s folded into q beforehand
  (``q = q * s``, then sdpa with ``scale=1``), or by hand (``q @ k.transpose(-1, -2) * s``,
  softmax, ``@ v``); s is 1/d_head or 1/sqrt(d_head); then an ``nn.Linear(n, n)`` projection;
* ``norm``: ``nn.LayerNorm``, ``nn.RMSNorm`` or a hand-written RMS norm
  (``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g``);
* residual connections (``h = h + block(h)``) on linear / einsum / attention blocks;
* readout: ``nn.Linear(n, 4)``, multiply-then-sum ``(z.unsqueeze(-2) * v).sum(-1)`` with a
  parameter ``v`` of shape ``(4, n)``, or the same with ``.mean(-1)`` (mean over the width dim);
* multipliers n^{-a} written as ``y * c``, ``y *= c``, ``y.mul_(c)`` or ``y.div_(1 / c)``;
* nonlinearities relu, gelu, tanh (or none) after linear / einsum blocks.

Exponents, all relative to ``base_width`` (64), where every model is the same SP-like network
whatever its exponents: init std = std0 * (n / base)^-b with std0 = 1/sqrt(fan_in at base width)
(b in {0, 1/2, 1}); multiplier (n / base)^-a on the layer's output (a in {0, 1/2, 1}; a = 0: no
multiplication in the graph); learning rate base_lr * (n / base)^c (c in {0, -1/2, -1}).
Biases and norm gains get their layer's learning-rate exponent; biases start at zero (as GPT-2
and nanoGPT init them; PyTorch's default U(+-1/sqrt(fan_in)) bias would be a Theta(1) term that
only overtakes a decaying W x beyond widths of several hundred, a pre-asymptotic artefact), norm
gains at one.
Sizes are tiny: input dim 8, output dim 4, sequence length 4, batch 4.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Layer", "Block", "Spec", "random_architecture", "build", "example_inputs",
           "make_optimizer", "CONSTRUCTS", "D_IN", "D_OUT", "SEQ", "BATCH", "BASE_WIDTH", "N_HEAD"]

D_IN, D_OUT, SEQ, BATCH = 8, 4, 4, 4
BASE_WIDTH = 64
N_HEAD = 2
INIT_EXPS = (Fraction(0), Fraction(1, 2), Fraction(1))
MULT_EXPS = (Fraction(0), Fraction(1, 2), Fraction(1))
LR_EXPS = (Fraction(0), Fraction(-1, 2), Fraction(-1))
MULT_STYLES = ("mul", "imul", "mul_", "div_")
BASE_LR = {"adam": 1e-3, "sgd": 1e-2}


@dataclass
class Layer:
    """Exponents of one weight: init std ~ n^-b, output multiplier n^-a, LR ~ n^c."""

    b: Fraction = Fraction(1, 2)
    a: Fraction = Fraction(0)
    c: Fraction = Fraction(0)
    mult_style: str = "mul"  # how the multiplier is written: mul | imul | mul_ | div_

    def text(self) -> str:
        s = f"b={self.b},a={self.a},c={self.c}"
        return s + (f"[{self.mult_style}]" if self.a else "")


@dataclass
class Block:
    """One block on the (B, T, n) hidden state.

    kind: linear | einsum | attn | norm. Options (by kind): residual, act (relu | gelu | tanh |
    none), bias; attn: split (slice | chunk | view), attn_impl (sdpa | fold | manual), scale
    (1/d | 1/sqrt(d)); norm: norm (layernorm | rmsnorm | rms_hand)."""

    kind: str
    layers: dict[str, Layer] = field(default_factory=dict)
    residual: bool = False
    act: str = "none"
    bias: bool = True
    split: str = ""
    attn_impl: str = ""
    scale: str = ""
    norm: str = ""

    def text(self) -> str:
        if self.kind == "norm":
            return self.norm
        if self.kind == "attn":
            head = f"attn({self.split},{self.attn_impl},{self.scale})"
        else:
            head = self.kind + ("" if self.bias else "-nobias") + (f"+{self.act}" if self.act != "none" else "")
        ws = ";".join(f"{k}:{v.text()}" for k, v in self.layers.items())
        return ("res:" if self.residual else "") + f"{head}[{ws}]"


@dataclass
class Spec:
    """A random architecture: input Linear(8, n) -> blocks -> readout (to 4 outputs)."""

    seed: int
    optimizer: str  # adam | sgd
    inp: Layer
    blocks: list[Block]
    readout: str  # linear | mulsum | mulmean
    out: Layer
    base_width: int = BASE_WIDTH
    base_lr: float = 1e-3

    def describe(self) -> str:
        parts = [f"in[{self.inp.text()}]"] + [b.text() for b in self.blocks]
        parts.append(f"{self.readout}[{self.out.text()}]")
        return f"seed {self.seed} {self.optimizer}: " + " -> ".join(parts)

    def to_dict(self) -> dict:
        def conv(x):
            if isinstance(x, Fraction):
                return str(x)
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            if isinstance(x, list):
                return [conv(v) for v in x]
            return x
        return conv(asdict(self))


# ----------------------------------------------------------------------------- generator


def _layer(rng: random.Random) -> Layer:
    return Layer(b=rng.choice(INIT_EXPS), a=rng.choice(MULT_EXPS), c=rng.choice(LR_EXPS),
                 mult_style=rng.choice(MULT_STYLES))


#: constructs ``random_architecture`` can leave out (``exclude=``): block kinds, readouts, optimizers
CONSTRUCTS = ("linear", "einsum", "attn", "norm", "mulsum", "mulmean", "adam", "sgd")


def random_architecture(seed: int, exclude: frozenset | set | tuple = ()) -> Spec:
    """A seeded random ``Spec``: 1-3 blocks from the vocabulary, random exponents per layer.

    exclude: constructs (``CONSTRUCTS``) never drawn, to isolate a class of disagreements; the
    draw for a given seed then differs from the unrestricted one."""
    exclude = set(exclude)
    unknown = exclude - set(CONSTRUCTS)
    if unknown:
        raise ValueError(f"unknown constructs {sorted(unknown)}; choose from {CONSTRUCTS}")
    rng = random.Random(seed)
    optimizer = rng.choice([o for o in ("adam", "sgd") if o not in exclude] or ["adam"])
    kinds = [k for k in ("linear", "einsum", "attn", "norm") if k not in exclude] or ["linear"]
    blocks = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(kinds)
        if kind == "norm":
            blocks.append(Block("norm", {"g": Layer(c=rng.choice(LR_EXPS))},
                                norm=rng.choice(("layernorm", "rmsnorm", "rms_hand"))))
        elif kind == "attn":
            blocks.append(Block("attn", {"qkv": _layer(rng), "proj": _layer(rng)},
                                residual=rng.random() < 0.7,
                                split=rng.choice(("slice", "chunk", "view")),
                                attn_impl=rng.choice(("sdpa", "fold", "manual")),
                                scale=rng.choice(("1/d", "1/sqrt(d)")), bias=rng.random() < 0.5))
        else:
            blocks.append(Block(kind, {"w": _layer(rng)}, residual=rng.random() < 0.5,
                                act=rng.choice(("relu", "gelu", "tanh", "none")),
                                bias=kind == "linear" and rng.random() < 0.5))
    readout = rng.choice([r for r in ("linear", "mulsum", "mulmean") if r not in exclude])
    return Spec(seed=seed, optimizer=optimizer, inp=_layer(rng), blocks=blocks, readout=readout,
                out=_layer(rng), base_lr=BASE_LR[optimizer])


# ----------------------------------------------------------------------------- modules


def _apply_mult(y: torch.Tensor, c: float | None, style: str) -> torch.Tensor:
    """y times the width-dependent constant c, written in ``style``; c None: untouched."""
    if c is None:
        return y
    if style == "mul":
        return y * c
    if style == "imul":
        y *= c
        return y
    if style == "mul_":
        return y.mul_(c)
    return y.div_(1.0 / c)


class _Weighted(nn.Module):
    """Holds the exponents of a layer at a given width (multiplier value, LR factor)."""

    def _setup(self, width: int, base: int, lay: Layer, weight: torch.Tensor, fan_in_base: int):
        r = width / base
        self.lay = lay
        self.mult = None if lay.a == 0 else r ** -float(lay.a)
        with torch.no_grad():
            weight.normal_(0.0, fan_in_base ** -0.5 * r ** -float(lay.b))


class LinearBlock(_Weighted):
    def __init__(self, width, base, blk: Block):
        super().__init__()
        self.blk = blk
        lay = blk.layers["w"]
        if blk.kind == "linear":
            self.lin = nn.Linear(width, width, bias=blk.bias)
            w = self.lin.weight
        else:
            self.weight = nn.Parameter(torch.empty(width, width))
            w = self.weight
        self._setup(width, base, lay, w, base)
        self.act = {"relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh, "none": None}[blk.act]

    def forward(self, h):
        if self.blk.kind == "linear":
            if self.mult is None:
                y = self.lin(h)
            else:
                y = _apply_mult(F.linear(h, self.lin.weight), self.mult, self.lay.mult_style)
                if self.lin.bias is not None:
                    y = y + self.lin.bias
        else:
            y = _apply_mult(torch.einsum("bti,oi->bto", h, self.weight), self.mult, self.lay.mult_style)
        if self.act is not None:
            y = self.act(y)
        return h + y if self.blk.residual else y


class AttnBlock(nn.Module):
    def __init__(self, width, base, blk: Block):
        super().__init__()
        self.blk = blk
        self.width = width
        self.d = width // N_HEAD
        self.qkv = nn.Linear(width, 3 * width, bias=blk.bias)
        self.proj = nn.Linear(width, width, bias=blk.bias)
        r = width / base
        self.lays = {"qkv": blk.layers["qkv"], "proj": blk.layers["proj"]}
        self.mults = {}
        for name, lin in (("qkv", self.qkv), ("proj", self.proj)):
            lay = self.lays[name]
            self.mults[name] = None if lay.a == 0 else r ** -float(lay.a)
            with torch.no_grad():
                lin.weight.normal_(0.0, base ** -0.5 * r ** -float(lay.b))
        self.scale = 1.0 / self.d if blk.scale == "1/d" else self.d ** -0.5

    def _lin(self, name, x):
        lin, m = getattr(self, name), self.mults[name]
        if m is None:
            return lin(x)
        y = _apply_mult(F.linear(x, lin.weight), m, self.lays[name].mult_style)
        return y if lin.bias is None else y + lin.bias

    def forward(self, h):
        B, T, C = h.shape
        H, d = N_HEAD, self.d
        qkv = self._lin("qkv", h)
        if self.blk.split == "slice":
            q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        elif self.blk.split == "chunk":
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            qkv = qkv.view(B, T, 3, H, d)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k, v = (t.reshape(B, T, H, d).transpose(1, 2) for t in (q, k, v))
        if self.blk.attn_impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif self.blk.attn_impl == "fold":
            q = q * self.scale
            y = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        else:
            att = (q @ k.transpose(-1, -2)) * self.scale
            y = att.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, C)
        y = self._lin("proj", y)
        return h + y if self.blk.residual else y


class NormBlock(nn.Module):
    def __init__(self, width, base, blk: Block):
        super().__init__()
        self.kind = blk.norm
        if blk.norm == "layernorm":
            self.norm = nn.LayerNorm(width)
        elif blk.norm == "rmsnorm":
            self.norm = nn.RMSNorm(width, eps=1e-6)
        else:
            self.g = nn.Parameter(torch.ones(width))

    def forward(self, h):
        if self.kind == "rms_hand":
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.g
        return self.norm(h)


def _zero_biases(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()


class FuzzModel(nn.Module):
    """input Linear(8, n) (times its multiplier) -> blocks -> readout to 4 outputs."""

    def __init__(self, spec: Spec, width: int):
        super().__init__()
        base = spec.base_width
        r = width / base
        self.spec = spec
        self.width = width
        self.inp = nn.Linear(D_IN, width)
        self.inp_mult = None if spec.inp.a == 0 else r ** -float(spec.inp.a)
        with torch.no_grad():
            self.inp.weight.normal_(0.0, D_IN ** -0.5 * r ** -float(spec.inp.b))
        mods = []
        for blk in spec.blocks:
            cls = {"linear": LinearBlock, "einsum": LinearBlock, "attn": AttnBlock,
                   "norm": NormBlock}[blk.kind]
            mods.append(cls(width, base, blk))
        self.blocks = nn.ModuleList(mods)
        self.out_mult = None if spec.out.a == 0 else r ** -float(spec.out.a)
        std = base ** -0.5 * r ** -float(spec.out.b)
        if spec.readout == "linear":
            self.readout = nn.Linear(width, D_OUT)
            with torch.no_grad():
                self.readout.weight.normal_(0.0, std)
        else:
            self.v = nn.Parameter(torch.randn(D_OUT, width) * std)
        _zero_biases(self)

    def forward(self, x):
        if self.inp_mult is None:
            h = self.inp(x)
        else:
            h = _apply_mult(F.linear(x, self.inp.weight), self.inp_mult, self.spec.inp.mult_style)
            h = h + self.inp.bias
        for blk in self.blocks:
            h = blk(h)
        if self.spec.readout == "linear":
            if self.out_mult is None:
                return self.readout(h)
            y = _apply_mult(F.linear(h, self.readout.weight), self.out_mult, self.spec.out.mult_style)
            return y + self.readout.bias
        prod = h.unsqueeze(-2) * self.v  # (B, T, 4, n)
        y = prod.sum(-1) if self.spec.readout == "mulsum" else prod.mean(-1)
        return _apply_mult(y, self.out_mult, self.spec.out.mult_style)

    def lr_exponents(self) -> dict[str, Fraction]:
        """Parameter name -> its learning-rate exponent c (LR ~ (n / base)^c)."""
        out = {}
        for name, _ in self.named_parameters():
            out[name] = self._lr_exp(name)
        return out

    def _lr_exp(self, name: str) -> Fraction:
        spec = self.spec
        if name.startswith("inp."):
            return spec.inp.c
        if name.startswith("readout.") or name == "v":
            return spec.out.c
        i = int(name.split(".")[1])
        blk = spec.blocks[i]
        if blk.kind == "attn":
            return blk.layers["qkv" if ".qkv." in name else "proj"].c
        return next(iter(blk.layers.values())).c


def build(spec: Spec) -> Callable[[int], nn.Module]:
    """The factory ``width -> FuzzModel``."""
    def factory(width: int) -> nn.Module:
        return FuzzModel(spec, width)
    return factory


def example_inputs(spec: Spec) -> Callable[[int], tuple]:
    """``width -> (x,)``, x of shape (BATCH, SEQ, D_IN), the same at every width (seeded)."""
    def inputs(width: int) -> tuple:
        g = torch.Generator().manual_seed(10_000 + spec.seed)
        return (torch.randn(BATCH, SEQ, D_IN, generator=g),)
    return inputs


def make_optimizer(spec: Spec, lr: float | None = None, *,
                   eps: float = 1e-8) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """model -> Adam / SGD with one param group per LR exponent: lr = base * (n / base)^c.

    eps: Adam's epsilon (torch's default 1e-8). The engine models Adam as sign-like (eps -> 0);
    a gradient coordinate far below eps makes Adam's step SGD-like (lr * g / eps) instead."""
    base_lr = spec.base_lr if lr is None else lr

    def make(model: nn.Module) -> torch.optim.Optimizer:
        r = model.width / spec.base_width
        groups: dict[Fraction, list] = {}
        for name, p in model.named_parameters():
            groups.setdefault(model._lr_exp(name), []).append(p)
        pg = [{"params": ps, "lr": base_lr * r ** float(c)} for c, ps in groups.items()]
        if spec.optimizer == "adam":
            return torch.optim.Adam(pg, lr=base_lr, eps=eps)
        return torch.optim.SGD(pg, lr=base_lr)
    return make
