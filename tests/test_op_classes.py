"""Real code written the way real code writes it: each construct gets the verdict its plainly
written twin gets, or an honest "undetermined" naming the op, never a silent wrong answer.

Every expected value here comes from the construct's twin (the same math written with ops the
engine has always known: F.linear, out-of-place multiplication, separate q / k / v projections),
from the Tensor Programs size arithmetic (TP5 Table 14: a mean-zero sum over n terms is sqrt(n)),
or from a measurement by ``check``.
"""
import math

import pytest
import sympy as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from tensorprog import TensorprogError, analyze, check

R = sp.Rational
WIDTHS = (64, 128, 256)
X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
SEQ = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))


def adam(m):
    return torch.optim.Adam(m.parameters(), lr=1e-3)


def sgd(m):
    return torch.optim.SGD(m.parameters(), lr=1e-2)


class MLP(nn.Module):
    """input -> hidden -> readout in PyTorch's default init, the hidden layer written ``variant``."""

    def __init__(self, n, variant="plain"):
        super().__init__()
        self.n, self.variant = n, variant
        self.inp, self.hid, self.out = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 4)
        self.W = nn.Parameter(torch.randn(n, n) / math.sqrt(n))
        self.v = nn.Parameter(torch.randn(n) / math.sqrt(n))

    def forward(self, x):
        h, v = F.relu(self.inp(x)), self.variant
        if v == "inplace":
            h = self.hid(h)
            h *= self.n ** -0.5
        elif v == "inplace_div":
            h = self.hid(h)
            h.div_(self.n ** 0.5)
        elif v == "outofplace":
            h = self.hid(h) * self.n ** -0.5
        elif v == "einsum":
            h = torch.einsum("bi,oi->bo", h, self.W)
        elif v == "einsum_twin":
            h = F.linear(h, self.W)
        elif v == "mulsum":
            return (F.relu(self.hid(h)) * self.v).sum(-1, keepdim=True)
        elif v == "mean_centered":
            return self.hid(h).mean(-1, keepdim=True)
        elif v == "mean_relu":
            return F.relu(self.hid(h)).mean(-1, keepdim=True)
        else:
            h = self.hid(h)
        return self.out(F.relu(h))


def mlp(variant, opt=adam, widths=WIDTHS):
    return analyze(lambda n: MLP(n, variant), widths, example_inputs=(X,), make_optimizer=opt)


def exps(rep):
    return {k: (p.role, p.init_exp, p.mult_exp, p.lr_exp) for k, p in rep.params.items() if p.uses}


# ----------------------------------------------------------------------------- in place


@pytest.mark.parametrize("variant", ["inplace", "inplace_div"])
def test_in_place_multiplier_is_its_out_of_place_twin(variant):
    rep, twin = mlp(variant), mlp("outofplace")
    assert rep.params["hid.weight"].mult_exp == -R(1, 2)
    assert exps(rep) == exps(twin)
    assert (rep.parametrization, rep.regime, rep.output_init) == (twin.parametrization, twin.regime,
                                                                    twin.output_init)


# ----------------------------------------------------------------------------- einsum


def test_einsum_weight_is_a_matrix_like_its_linear_twin():
    rep, twin = mlp("einsum"), mlp("einsum_twin")
    assert rep.params["W"].role == "hidden" and rep.params["W"].fan_in_exp == 1
    assert exps(rep) == exps(twin)
    assert rep.parametrization == twin.parametrization == "SP"
    assert [(p.what, p.when, p.exponent) for p in rep.problems] == \
        [(p.what, p.when, p.exponent) for p in twin.problems]


# ----------------------------------------------------------------------------- multiply-then-reduce


def test_multiply_then_sum_readout_is_an_output_weight_summed_clt_at_init():
    rep = mlp("mulsum")
    v = rep.params["v"]
    assert v.role == "output" and v.fan_in_exp == 1  # the contraction, not the elementwise mul
    assert rep.output_init == 0  # n terms of mean zero, each n^-1/2: sqrt(n) * n^-1/2
    assert "SP" in v.classes and "muP" not in v.classes  # SP init 1/sqrt(n); muP wants 1/n


@pytest.mark.parametrize("variant,out", [("mean_centered", -R(1, 2)), ("mean_relu", 0)])
def test_mean_over_the_width_is_clt_for_mean_zero_features_lln_otherwise(variant, out):
    assert mlp(variant).output_init == out


# ----------------------------------------------------------------------------- attention


class Attn(nn.Module):
    """embed 8 -> n, one attention block written ``variant``, readout n -> 4 (PyTorch init)."""

    def __init__(self, n, variant, heads=2):
        super().__init__()
        self.n, self.h, self.variant = n, heads, variant
        self.emb, self.o, self.out = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 4)
        self.qkv = nn.Linear(n, 3 * n)
        self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        if variant == "mha":
            self.mha = nn.MultiheadAttention(n, heads, batch_first=True)
        if variant == "encoder":
            self.enc = nn.TransformerEncoderLayer(n, heads, 2 * n, dropout=0.0, batch_first=True)

    def forward(self, x):
        B, T, _ = x.shape
        h, v, d = self.emb(x), self.variant, self.n // self.h
        if v == "mha":
            return self.out(self.mha(h, h, h, need_weights=False)[0])
        if v == "encoder":
            return self.out(self.enc(h))
        heads = (lambda t: t.view(B, T, self.h, d).transpose(1, 2))
        if v == "separate":
            q, k, val = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        elif v == "proj_sqrt":  # OPT / BART style: the scale on q_proj's output, sdpa scale 1
            q, k, val = heads(self.q(h) * d ** -0.5), heads(self.k(h)), heads(self.v(h))
            return self.out(h + self.o(F.scaled_dot_product_attention(q, k, val, scale=1.0)
                                       .transpose(1, 2).reshape(B, T, self.n)))
        elif v == "slice":
            y = self.qkv(h)
            q, k, val = heads(y[..., :self.n]), heads(y[..., self.n:2 * self.n]), heads(y[..., 2 * self.n:])
        elif v == "viewselect":  # Falcon / Phi style fused qkv
            y = self.qkv(h).view(B, T, 3, self.h, d)
            q, k, val = (y[:, :, i].transpose(1, 2) for i in range(3))
        else:
            q, k, val = (heads(t) for t in self.qkv(h).chunk(3, dim=-1))
        if v == "fold_sqrt":
            a = F.scaled_dot_product_attention(q * d ** -0.5, k, val, scale=1.0)
        elif v == "fold_d":
            a = F.scaled_dot_product_attention(q * (1.0 / d), k, val, scale=1.0)
        elif v in ("by_hand_sqrt", "by_hand_d"):
            w = (q @ k.transpose(-1, -2)) * (d ** -0.5 if v == "by_hand_sqrt" else 1.0 / d)
            a = F.softmax(w, dim=-1) @ val
        else:
            a = F.scaled_dot_product_attention(q, k, val)
        return self.out(h + self.o(a.transpose(1, 2).reshape(B, T, self.n)))


def attn(variant, widths=WIDTHS):
    return analyze(lambda n: Attn(n, variant), widths, example_inputs=(SEQ,), make_optimizer=adam)


@pytest.mark.parametrize("variant", ["slice", "viewselect", "chunk", "mha", "encoder"])
def test_q_and_k_sliced_from_one_packed_projection_are_independent_at_init(variant):
    """Disjoint slices of a fresh projection's output dim are independent (TP: different rows
    of an iid matrix), so q.k over d_head is sqrt(d) and the 1/sqrt(d) scale makes it Theta(1),
    exactly as for separate q, k projections."""
    rep, twin = attn(variant), attn("separate")
    assert [a.logits_init for a in rep.attention] == [a.logits_init for a in twin.attention] == [0]
    assert not [p for p in rep.problems if p.when == "at init"]
    assert rep.parametrization == twin.parametrization == "SP"


@pytest.mark.parametrize("variant,kind", [("fold_sqrt", "1/sqrt(d)"), ("fold_d", "1/d")])
def test_scale_folded_into_q_is_the_attention_scale(variant, kind):
    rep = attn(variant)
    assert [a.kind for a in rep.attention] == [kind]
    assert rep.params["qkv.weight"].mult_exp == 0  # not a multiplier of the projection
    assert rep.attention[0].logits_init == (0 if kind == "1/sqrt(d)" else -R(1, 2))


def test_scale_on_a_separate_q_projection_is_the_attention_scale_not_its_multiplier():
    """``q_proj(h) * d**-0.5`` in the attention module, then sdpa(scale=1) (OPT, BART): the
    factor reaches q through views only, so it is the attention scale (TP5 Def 4.1), and
    q_proj keeps multiplier 1 like its k and v twins (the model is SP like the plain one)."""
    rep = attn("proj_sqrt")
    assert [a.kind for a in rep.attention] == ["1/sqrt(d)"]
    assert rep.params["q.weight"].mult_exp == 0 == rep.params["q.bias"].mult_exp
    assert rep.parametrization == attn("separate").parametrization == "SP"


@pytest.mark.parametrize("variant,kind", [("by_hand_sqrt", "1/sqrt(d)"), ("by_hand_d", "1/d")])
def test_attention_written_by_hand_is_judged_as_sdpa_is(variant, kind):
    rep = attn(variant)
    assert [a.kind for a in rep.attention] == [kind]
    if kind == "1/sqrt(d)":
        assert rep.parametrization == attn("chunk").parametrization == "SP"


class NormThenScaledReadout(nn.Module):
    """nanoGPT-mup's readout: ``lm_head(ln_f(h) * (1 / width_mult))``, the factor written in the
    parent module, between a norm gain and the readout."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.inp, self.ln, self.out = nn.Linear(8, n), nn.LayerNorm(n), nn.Linear(n, 4)

    def forward(self, x):
        return self.out(self.ln(F.relu(self.inp(x))) * (64 / self.n))


def test_a_factor_between_a_norm_and_a_readout_is_the_readouts_multiplier_counted_once():
    """One factor is one multiplier (TP4: W = n^{-a} w): charged to the readout that contracts
    it (as mup's MuReadout), not also to the norm's gain before it."""
    rep = analyze(NormThenScaledReadout, WIDTHS, example_inputs=(X,), make_optimizer=adam)
    assert rep.params["out.weight"].mult_exp == -1
    assert rep.params["ln.weight"].mult_exp == 0 == rep.params["ln.bias"].mult_exp
    assert "muP" in rep.params["ln.weight"].classes


# ----------------------------------------------------------------------------- pow, exp, custom


class Net(nn.Module):
    def __init__(self, n, variant):
        super().__init__()
        self.n, self.variant = n, variant
        self.emb, self.hid, self.out = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 4)
        self.qkv = nn.Linear(n, 3 * n)
        # Mamba's A: log(1..16) per channel, the state dim finite
        self.A_log = nn.Parameter(torch.log(torch.arange(1, 17, dtype=torch.float)).repeat(n, 1))
        if variant == "zero_query":
            with torch.no_grad():
                self.qkv.weight[:n].zero_()

    def forward(self, x):
        h, v = self.emb(x), self.variant
        if v == "rope":  # frequencies computed in forward from a scalar base
            inv = 1.0 / (10000.0 ** (torch.arange(0, self.n, 2, dtype=torch.float) / self.n))
            ang = torch.outer(torch.arange(x.shape[1], dtype=torch.float), inv)
            h = h * ang.cos().repeat_interleave(2, -1) + h.flip(-1) * ang.sin().repeat_interleave(2, -1)
        elif v == "scan":  # a selective-scan decay: exp(dt * A) with A < 0, dt >= 0
            dt = F.softplus(self.hid(h))
            h = (h.unsqueeze(-1) * torch.exp(dt.unsqueeze(-1) * -torch.exp(self.A_log))).sum(-1)
        elif v == "custom":
            h = Double.apply(h)
        elif v == "zero_query":
            q, k, val = self.qkv(h).chunk(3, -1)
            h = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), val.unsqueeze(1)).squeeze(1)
        return self.out(F.relu(self.hid(h)))


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


def net(variant, opt=adam):
    return analyze(lambda n: Net(n, variant), WIDTHS, example_inputs=(SEQ,), make_optimizer=opt)


def test_scalar_base_power_rope_frequencies():
    rep = net("rope")
    assert rep.parametrization == net("plain").parametrization == "SP"
    assert not rep.undetermined


def test_exp_of_a_growing_decay_is_bounded():
    """SP with Adam: dt grows after a step, dt * A grows negative, exp(dt * A) stays bounded."""
    rep = net("scan")
    assert rep.parametrization != "undetermined", rep.notes
    decay = rep.graph.order[max(i for i, n in enumerate(rep.graph.order) if rep.graph.node(n)["op"] == "exp")]
    grows = rep.propagation.steps[-1][rep.graph.inputs(decay)[0]]
    assert grows.dx > 0  # dt * A grows after training (SP with Adam) ...
    assert all(s[decay].x <= 0 and s[decay].dx <= 0 for s in rep.propagation.steps)  # ... exp stays O(1)


def test_custom_autograd_function_is_reported_and_refuses_an_sgd_verdict():
    rep = net("custom", sgd)
    assert rep.parametrization == "undetermined"
    assert any("Double" in u["reason"] for u in rep.undetermined)
    rep = net("custom", adam)  # Adam's update does not depend on the gradient's size
    assert rep.parametrization == "SP" and any("Double" in n for n in rep.notes)


def test_fused_weight_with_a_zero_initialised_slice_is_undetermined_not_guessed():
    rep = net("zero_query")
    assert rep.parametrization == "undetermined"
    assert any("qkv.weight" in u["reason"] and "zero" in u["reason"] for u in rep.undetermined)


# ----------------------------------------------------------------------------- unknown ops


class Unknown(nn.Module):
    def __init__(self, n, feeds_output=True):
        super().__init__()
        self.inp, self.out, self.feeds = nn.Linear(8, n), nn.Linear(n, 4), feeds_output

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        c = torch.cumprod(h, dim=-1)  # no entry in the op table, over the width dim
        return self.out(c if self.feeds else h), c


def test_an_op_without_an_entry_is_undetermined_naming_op_module_and_line():
    rep = analyze(lambda n: Unknown(n), WIDTHS, example_inputs=(X,), make_optimizer=adam)
    assert rep.parametrization == rep.regime == "undetermined" and rep.stable is None
    u = rep.undetermined[0]
    assert u["op"] == "cumprod" and u["source"].startswith("test_op_classes.py:")
    assert "cumprod" in str(rep) and "undetermined" in str(rep)


def test_an_unknown_op_off_the_output_path_is_only_noted():
    rep = analyze(lambda n: Unknown(n, feeds_output=False), WIDTHS, example_inputs=(X,),
                  make_optimizer=adam)
    assert rep.parametrization == "SP"
    assert any("cumprod" in n for n in rep.notes)


# ----------------------------------------------------------------------------- consistency


class Frozen(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(8, 4)
        self.lin.requires_grad_(False)

    def forward(self, x):
        return self.lin(x)


def test_a_model_without_trainable_parameters_is_an_error():
    with pytest.raises(TensorprogError, match="no trainable parameters"):
        analyze(lambda n: nn.Sequential(nn.Linear(8, n), nn.Linear(n, 4)).requires_grad_(False),
                WIDTHS, example_inputs=(X,), optimizer="adam")


def test_mup_is_named_only_with_feature_learning_dynamics():
    """Every parameter in muP (TP5 Table 3) but an activation blown up by sqrt(n) outside any
    layer (shared by two consumers, so no parameter's multiplier): the abc classes say muP, the
    dynamics do not, and the report says so."""
    from tensorprog.zoo import example

    ex = example("mlp", param="mup")

    class Blown(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.m, self.n = ex.factory(n), n

        def forward(self, x):
            y = self.m(x)
            return y * self.n ** 0.5 + y

    rep = analyze(Blown, WIDTHS, example_inputs=ex.example_inputs,
                  make_optimizer=lambda m: ex.make_optimizer(m.m))
    assert all("muP" in p.classes for p in rep.params.values() if p.trainable)
    assert rep.parametrization == "mixed" and not rep.stable
    assert any("muP's abc rules" in n for n in rep.notes)


# ----------------------------------------------------------------------------- measured


@pytest.mark.slow
@pytest.mark.parametrize("kind,variant", [("mlp", "inplace"), ("mlp", "einsum"), ("mlp", "mulsum"),
                                          ("mlp", "mean_centered"), ("attn", "slice"),
                                          ("attn", "fold_sqrt"), ("attn", "by_hand_sqrt")])
def test_check_refutes_no_prediction_on_these_constructs(kind, variant):
    factory = (lambda n: MLP(n, variant)) if kind == "mlp" else (lambda n: Attn(n, variant))
    rep = check(factory, (64, 128, 256, 512), example_inputs=(X,) if kind == "mlp" else (SEQ,),
                make_optimizer=adam, steps=2, seeds=2, progress=False)
    assert not rep.refuted(), [(r.node, r.kind, r.step, r.predicted, r.slope) for r in rep.refuted()]
    assert sum(r.status == "confirmed" for r in rep.records) > len(rep.records) // 2
