"""Red-team zoo: small architectures written from scratch in plain PyTorch, each in SP (PyTorch's
default init, one global Adam LR) and in muP (the ``mup`` package's MuReadout + set_base_shapes +
MuAdam, an implementation independent of tensorprog; attention 1/d by hand), analysed with
``tensorprog.analyze`` and measured with ``tensorprog.check``. Findings:
benchmarks/UNSEEN_MODELS_FINDINGS.md.

    PYTHONPATH=. python benchmarks/unseen_models.py                 # analyze every model
    PYTHONPATH=. python benchmarks/unseen_models.py --check lora    # and check one
"""
from __future__ import annotations

import argparse
import math
import sys
import traceback
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

BASE = 32
VOCAB, SEQ, CLASSES = 64, 8, 10


def ids():
    return (torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0)),)


def images(size=8):
    return (torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)),)


class Readout(nn.Module):
    """nn.Linear in SP, mup.MuReadout in muP."""

    def __new__(cls, n_in, n_out, mup=False, bias=True):
        if mup:
            import mup as mup_pkg
            return mup_pkg.MuReadout(n_in, n_out, bias=bias)
        return nn.Linear(n_in, n_out, bias=bias)


# ------------------------------------------------------------------------------- architectures


class ConvBN(nn.Module):
    """ConvNet: conv-BN-ReLU x2, global average pooling, linear head (width = channels)."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, n, 3, padding=1), nn.BatchNorm2d(n)
        self.c2, self.b2 = nn.Conv2d(n, n, 3, padding=1), nn.BatchNorm2d(n)
        self.head = Readout(n, CLASSES, mup)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.head(x.mean((2, 3)))


class DepthwiseSeparable(nn.Module):
    """MobileNet block: 1x1 stem, depthwise 3x3 (groups = channels), pointwise 1x1, BN, pool."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.stem = nn.Conv2d(3, n, 1)
        self.dw = nn.Conv2d(n, n, 3, padding=1, groups=n)
        self.pw = nn.Conv2d(n, n, 1)
        self.bn = nn.BatchNorm2d(n)
        self.head = Readout(n, CLASSES, mup)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn(self.pw(F.relu(self.dw(x)))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class RNN(nn.Module):
    """Embedding -> nn.GRU / nn.LSTM (one layer, unrolled by cuDNN-free ATen) -> readout."""

    def __init__(self, n, mup=False, cell="gru"):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, n)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(n, n, batch_first=True)
        self.head = Readout(n, VOCAB, mup)

    def forward(self, t):
        h, _ = self.rnn(self.emb(t))
        return self.head(h)


class RMSNorm(nn.Module):
    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(n)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class SwiGLU(nn.Module):
    def __init__(self, n, hidden):
        super().__init__()
        self.w1, self.w3 = nn.Linear(n, hidden, bias=False), nn.Linear(n, hidden, bias=False)
        self.w2 = nn.Linear(hidden, n, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GatedMLP(nn.Module):
    """Token embedding, two pre-RMSNorm SwiGLU residual blocks, RMSNorm, readout."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, n)
        self.norms = nn.ModuleList([RMSNorm(n) for _ in range(2)])
        self.mlps = nn.ModuleList([SwiGLU(n, 2 * n) for _ in range(2)])
        self.norm_f, self.head = RMSNorm(n), Readout(n, VOCAB, mup, bias=False)

    def forward(self, t):
        h = self.emb(t)
        for norm, mlp in zip(self.norms, self.mlps):
            h = h + mlp(norm(h))
        return self.head(self.norm_f(h))


class MoE(nn.Module):
    """Top-k routed mixture of experts; ``dispatch="dense"`` runs every expert and zeroes the
    unrouted ones, ``"index"`` gathers each expert's tokens with a data-dependent index."""

    def __init__(self, n, mup=False, experts=4, k=2, dispatch="dense"):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, n)
        self.router = nn.Linear(n, experts, bias=False)
        self.experts = nn.ModuleList([SwiGLU(n, 2 * n) for _ in range(experts)])
        self.k, self.dispatch = k, dispatch
        self.norm, self.head = nn.LayerNorm(n), Readout(n, VOCAB, mup)

    def forward(self, t):
        h = self.emb(t)
        x = h.reshape(-1, h.shape[-1])
        gates = self.router(x).softmax(-1)
        top, idx = gates.topk(self.k, dim=-1)
        top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            w = (top * (idx == e)).sum(-1, keepdim=True)
            if self.dispatch == "dense":
                out = out + w * expert(x)
            else:
                rows = (idx == e).any(-1).nonzero().squeeze(-1)
                out = out.index_add(0, rows, w[rows] * expert(x[rows]))
        h = h + out.reshape(h.shape)
        return self.head(self.norm(h))


class TiedLM(nn.Module):
    """Embedding tied to the readout (logits = h E^T), one MLP block in between."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, n)
        self.fc1, self.fc2 = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.norm = nn.LayerNorm(n)
        self.mup, self.n = mup, n

    def forward(self, t):
        h = self.emb(t)
        h = h + self.fc2(F.gelu(self.fc1(h)))
        logits = self.norm(h) @ self.emb.weight.t()
        return logits * (BASE / self.n) if self.mup else logits


class Attention(nn.Module):
    """Multi-head attention, 4 heads (d_head grows with the width); scale 1/sqrt(d) in SP, 1/d
    (times sqrt(base d)) in muP (TP5 Def 4.1). ``ctx_dim``: cross-attention to a context of a
    fixed width; ``rel_bias``: T5-style learned relative position bias per head."""

    def __init__(self, n, mup=False, heads=4, ctx_dim=None, rel_bias=False, buckets=16):
        super().__init__()
        self.h, self.d = heads, n // heads
        self.q = nn.Linear(n, n)
        self.kv = nn.Linear(ctx_dim or n, 2 * n)
        self.o = nn.Linear(n, n)
        base_d = BASE // heads
        self.scale = math.sqrt(base_d) / self.d if mup else 1 / math.sqrt(self.d)
        self.rel = nn.Embedding(buckets, heads) if rel_bias else None
        self.buckets = buckets

    def forward(self, x, ctx=None):
        B, T, n = x.shape
        ctx = x if ctx is None else ctx
        q = self.q(x).view(B, T, self.h, self.d).transpose(1, 2)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.h, self.d).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) * self.scale
        if self.rel is not None:
            pos = torch.arange(T)
            rel = (pos[None, :] - pos[:, None]).clamp(-self.buckets // 2, self.buckets // 2 - 1)
            logits = logits + self.rel(rel + self.buckets // 2).permute(2, 0, 1)[None]
        o = logits.softmax(-1) @ v
        return self.o(o.transpose(1, 2).reshape(B, T, n))


class ViT(nn.Module):
    """Patch embedding (Conv2d stride = patch), CLS token, learned positions, one pre-LN block."""

    def __init__(self, n, mup=False, patch=4, size=8):
        super().__init__()
        self.patch = nn.Conv2d(3, n, patch, stride=patch)
        tokens = (size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, n))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, n) * 0.02)
        self.ln1, self.attn = nn.LayerNorm(n), Attention(n, mup)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(n), nn.Linear(n, 4 * n), nn.Linear(4 * n, n)
        self.ln_f, self.head = nn.LayerNorm(n), Readout(n, CLASSES, mup)

    def forward(self, x):
        p = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(p.shape[0], -1, -1), p], 1) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.head(self.ln_f(h)[:, 0])


class CrossAttn(nn.Module):
    """Decoder tokens attend to a width-independent context (dim 24, e.g. frozen encoder features)."""

    CTX = 24

    def __init__(self, n, mup=False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, n)
        self.ln, self.attn = nn.LayerNorm(n), Attention(n, mup, ctx_dim=self.CTX)
        self.ln_f, self.head = nn.LayerNorm(n), Readout(n, VOCAB, mup)

    def forward(self, t, ctx):
        h = self.emb(t)
        h = h + self.attn(self.ln(h), ctx)
        return self.head(self.ln_f(h))


def cross_inputs():
    g = torch.Generator().manual_seed(1)
    return ids() + (torch.randn(2, 5, CrossAttn.CTX, generator=g),)


class T5Block(nn.Module):
    """Self-attention with a T5 relative position bias (an Embedding(buckets, heads))."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, n)
        self.ln, self.attn = RMSNorm(n), Attention(n, mup, rel_bias=True)
        self.ln_f, self.head = RMSNorm(n), Readout(n, VOCAB, mup, bias=False)

    def forward(self, t):
        h = self.emb(t)
        h = h + self.attn(self.ln(h))
        return self.head(self.ln_f(h))


class LoRALinear(nn.Module):
    """Frozen W0 plus B A x * alpha / r, A kaiming, B zero (Hu et al. 2021, arXiv 2106.09685)."""

    def __init__(self, n_in, n_out, r=4, alpha=8):
        super().__init__()
        self.base = nn.Linear(n_in, n_out)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, n_in))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(n_out, r))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.A.t()) @ self.B.t() * self.scale


class LoRAMLP(nn.Module):
    """Frozen MLP (input layer, LoRA'd hidden layer, readout); only A, B and the head train."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.inp = nn.Linear(16, n)
        self.inp.requires_grad_(False)
        self.hid = LoRALinear(n, n)
        self.head = Readout(n, CLASSES, mup)

    def forward(self, x):
        return self.head(F.relu(self.hid(F.relu(self.inp(x)))))


def vec_inputs():
    return (torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),)


class NormedMLP(nn.Module):
    """MLP whose hidden layer is weight-normalised or spectral-normed (torch parametrizations)."""

    def __init__(self, n, mup=False, kind="weight_norm"):
        super().__init__()
        P = nn.utils.parametrizations
        self.inp = nn.Linear(16, n)
        hid = nn.Linear(n, n)
        self.hid = P.weight_norm(hid) if kind == "weight_norm" else P.spectral_norm(hid)
        self.head = Readout(n, CLASSES, mup)

    def forward(self, x):
        return self.head(F.relu(self.hid(F.relu(self.inp(x)))))


class Temperature(nn.Module):
    """MLP classifier with a learnable scalar temperature: logits * exp(log_t) (CLIP-style)."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.inp, self.hid = nn.Linear(16, n), nn.Linear(n, n)
        self.head = Readout(n, CLASSES, mup)
        self.log_t = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return self.head(F.relu(self.hid(F.relu(self.inp(x))))) * self.log_t.exp()


class ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor`` (a custom autograd
    Function whose backward the forward graph does not show)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


class CustomFn(nn.Module):
    """MLP whose hidden activation passes through ScaleGrad(width): gradient scaled by n."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.inp, self.hid = nn.Linear(16, n), nn.Linear(n, n)
        self.head = Readout(n, CLASSES, mup)
        self.n = n

    def forward(self, x):
        h = F.relu(self.inp(x))
        h = ScaleGrad.apply(h, float(self.n))
        return self.head(F.relu(self.hid(h)))


class Compiled(nn.Module):
    """MLP whose hidden block is a torch.compile'd submodule."""

    def __init__(self, n, mup=False):
        super().__init__()
        self.inp = nn.Linear(16, n)
        self.block = torch.compile(nn.Sequential(nn.Linear(n, n), nn.ReLU()))
        self.head = Readout(n, CLASSES, mup)

    def forward(self, x):
        return self.head(self.block(F.relu(self.inp(x))))


# ----------------------------------------------------------------------------------- the zoo

MODELS = {
    "convbn": (ConvBN, images),
    "dwsep": (DepthwiseSeparable, images),
    "gru": (lambda n, mup=False: RNN(n, mup, "gru"), ids),
    "lstm": (lambda n, mup=False: RNN(n, mup, "lstm"), ids),
    "swiglu": (GatedMLP, ids),
    "moe_dense": (lambda n, mup=False: MoE(n, mup, dispatch="dense"), ids),
    "moe_index": (lambda n, mup=False: MoE(n, mup, dispatch="index"), ids),
    "tied": (TiedLM, ids),
    "vit": (ViT, images),
    "cross": (CrossAttn, cross_inputs),
    "t5bias": (T5Block, ids),
    "lora": (LoRAMLP, vec_inputs),
    "weightnorm": (lambda n, mup=False: NormedMLP(n, mup, "weight_norm"), vec_inputs),
    "spectral": (lambda n, mup=False: NormedMLP(n, mup, "spectral_norm"), vec_inputs),
    "temperature": (Temperature, vec_inputs),
    "customfn": (CustomFn, vec_inputs),
    "compiled": (Compiled, vec_inputs),
}


def build(name, param, n):
    """The model ``name`` at width n in ``param`` ("sp" or "mup"); muP via the mup package."""
    cls, _ = MODELS[name]
    torch.manual_seed(0)
    model = cls(n, mup=(param == "mup"))
    if param == "mup":
        import mup
        base, delta = cls(BASE, mup=True), cls(2 * BASE, mup=True)
        mup.set_base_shapes(model, base, delta=delta)
    return model


def factory(name, param):
    return lambda n: build(name, param, n)


def optimizer(param, lr=1e-2):
    if param == "mup":
        import mup
        return lambda m: mup.MuAdam([p for p in m.parameters() if p.requires_grad], lr=lr)
    return lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)


def run_analyze(name, param, widths=(32, 64, 128)):
    from tensorprog import analyze
    return analyze(factory(name, param), widths, example_inputs=MODELS[name][1](),
                   make_optimizer=optimizer(param))


def run_check(name, param, widths=(64, 128, 256, 512), steps=2, seeds=2):
    from tensorprog import check
    return check(factory(name, param), widths, example_inputs=MODELS[name][1](),
                 make_optimizer=optimizer(param), steps=steps, seeds=seeds, device="cpu",
                 progress=False)


def summary(rep):
    """verdict, regime, and per-parameter role / classes."""
    rows = [f"{rep.parametrization} {rep.regime}"]
    for p in rep.params.values():
        rows.append(f"  {p.name:28s} {p.role:8s} fan_in n^{p.fan_in_exp} init {p.init_exp} "
                    f"mult {p.mult_exp} lr {p.lr_exp} {','.join(p.classes)}")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--params", nargs="*", default=["sp", "mup"])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--full", action="store_true", help="print the whole report")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in args.models:
        for param in args.params:
            print(f"=== {name} / {param}", flush=True)
            try:
                rep = run_analyze(name, param)
                print(rep if args.full else summary(rep), flush=True)
            except Exception as e:  # noqa: BLE001 - a red-team table records the crash
                print(f"CRASH {type(e).__name__}: {str(e)[:400]}")
                traceback.print_exc(limit=-3, file=sys.stdout)
                continue
            if args.check:
                try:
                    chk = run_check(name, param)
                    counts = {s: sum(r.status == s for r in chk.records)
                              for s in ("confirmed", "refuted", "inconclusive")}
                    print(f"check: {chk.verdict} {counts}; refuted: "
                          + "; ".join(f"{r.node}:{r.kind}@{r.step} pred {r.predicted} meas "
                                      f"{r.slope}" for r in chk.refuted()[:10]), flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"CHECK CRASH {type(e).__name__}: {str(e)[:400]}")


if __name__ == "__main__":
    main()
