"""Tests for tensorprog.apply_mup: any supported model -> muP, without editing its class.

Expected values come from the papers and the models' documented inits, not from the code:

* at the base width every factor is 1, so the forward pass is the original's bit for bit;
* TP5 Table 3 / 8 (arXiv 2203.03466): hidden Adam LR 1/fan_in -> lr / 4 at 4 x base; Table 8's
  readout multiplier 1/fan_in -> 1/4 at 4 x base; HF GPT-2's hidden init is N(0, 0.02) at every
  width, muP's is fan_in^{-1/2} relative to the base width -> std 0.02 / 2 at 4 x base;
* attention logits scale 1/d_head (TP5 Def 4.1): the analysed attention kind is "1/d";
* weight decay: lr * weight_decay constant in width, as the mup package's MuAdamW (its optim.py:
  ``group['lr'] /= width_mult; group['weight_decay'] *= width_mult``).
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tensorprog import analyze
from tensorprog.errors import TensorprogError
from tensorprog.transform.mup import MupState, apply_mup
from tensorprog.zoo import example

warnings.filterwarnings("ignore")
torch.set_num_threads(1)  # 2 shared cores: intra-op threads only oversubscribe them

BASE = 64
W = (64, 128)


def _zoo(name, param, optimizer=torch.optim.AdamW, **kw):
    ex = example(name, param=param, optimizer="adam")
    mf, of = apply_mup(ex.factory, BASE, example_inputs=ex.example_inputs, optimizer_cls=optimizer,
                       widths=W, **kw)
    return ex, mf, of


def _lr(opt):
    """id(param) -> (lr, weight_decay); every parameter in exactly one group."""
    out = {}
    for g in opt.param_groups:
        for p in g["params"]:
            assert id(p) not in out, "parameter in two groups"
            out[id(p)] = (g["lr"], g["weight_decay"])
    return out


# ============================================================================ the zoo


@pytest.mark.parametrize("name,param", [("mlp", "sp"), ("mlp", "ntk"), ("cnn", "sp"), ("cnn", "ntk"),
                                        ("gpt", "sp"), ("gpt", "ntk")])
def test_zoo_becomes_mup_and_is_unchanged_at_base_width(name, param):
    ex, mf, of = _zoo(name, param, lr=1e-3)
    rep = analyze(mf, W, example_inputs=ex.example_inputs, make_optimizer=of)
    assert rep.parametrization == "muP", str(rep)
    assert rep.stable and rep.nontrivial and rep.feature_learning and rep.every_layer_maximal
    if name == "gpt":
        assert [a.kind for a in rep.attention] == ["1/d", "1/d"]  # export saw the patched scale
    for seed in (0, 1):
        torch.manual_seed(seed)
        a = ex.factory(BASE)
        torch.manual_seed(seed)
        b = mf(BASE)
        x = ex.example_inputs(BASE)
        assert torch.equal(a(*x), b(*x))
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_mlp_sgd_learning_rates_and_readout_multiplier():
    ex, mf, of = _zoo("mlp", "sp", torch.optim.SGD, lr=0.1, momentum=0.9)
    model = mf(4 * BASE)
    lr = _lr(of(model))
    # Table 3 / 8 under SGD: input and biases fan_out (x4), hidden 1, Table 8 readout fan_in (x4)
    assert lr[id(model.input.weight)][0] == pytest.approx(0.4)
    assert lr[id(model.hidden[0].bias)][0] == pytest.approx(0.4)
    assert lr[id(model.hidden[0].weight)][0] == pytest.approx(0.1)
    assert lr[id(model.readout.weight)][0] == pytest.approx(0.4)
    assert lr[id(model.readout.bias)][0] == pytest.approx(0.1)  # scalar-like
    assert of(model).defaults["momentum"] == 0.9
    # the readout multiplier 1/width_mult = 1/4: the module's output with the hook vs without
    h = torch.randn(3, 4 * BASE)
    w, b = model.readout.weight, model.readout.bias
    assert torch.allclose(model.readout(h), F.linear(h, w) / 4 + b, atol=1e-6)


# ============================================================================ HuggingFace


def _hf(kind):
    import transformers

    transformers.logging.set_verbosity_error()
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        return lambda n: GPT2LMHeadModel(GPT2Config(n_embd=n, n_layer=2, n_head=4, vocab_size=128,
                                                    n_positions=32, use_cache=False))
    from transformers import LlamaConfig, LlamaForCausalLM
    return lambda n: LlamaForCausalLM(LlamaConfig(
        hidden_size=n, intermediate_size=2 * n, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=32, use_cache=False))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hf_models_become_mup(kind):
    factory = _hf(kind)
    x = (torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0)),)
    mf, of = apply_mup(factory, BASE, example_inputs=x, widths=W, lr=1e-3, weight_decay=0.1)
    rep = analyze(mf, W, example_inputs=x, make_optimizer=of)
    assert rep.parametrization == "muP", str(rep)
    assert rep.stable and rep.feature_learning and not rep.unknown_ops
    assert all(a.kind == "1/d" for a in rep.attention) and len(rep.attention) == 2

    torch.manual_seed(0)
    a = factory(BASE).eval()
    torch.manual_seed(0)
    b = mf(BASE).eval()
    assert torch.equal(a(*x).logits, b(*x).logits)

    torch.manual_seed(0)
    sp_model = factory(4 * BASE)
    torch.manual_seed(0)
    model = mf(4 * BASE)
    hidden = "transformer.h.0.mlp.c_fc.weight" if kind == "gpt2" else "model.layers.0.mlp.up_proj.weight"
    emb = "transformer.wte.weight" if kind == "gpt2" else "model.embed_tokens.weight"
    # hidden init 0.02 at every width -> 0.02 * (base / width)^{1/2}: exactly half at 4 x base
    assert torch.equal(model.get_parameter(hidden), sp_model.get_parameter(hidden) * 0.5)
    assert torch.equal(model.get_parameter(emb), sp_model.get_parameter(emb))
    lr = _lr(of(model))
    assert lr[id(model.get_parameter(hidden))] == pytest.approx((1e-3 / 4, 0.1 * 4))  # lr * wd const
    assert lr[id(model.get_parameter(emb))] == pytest.approx((1e-3, 0.1))
    assert lr[id(model.lm_head.weight)] == pytest.approx((1e-3, 0.1))  # Table 8 readout, Adam: 1
    # the readout multiplier sits on lm_head alone; GPT-2 stays tied (one tensor, one group)
    assert len(model.lm_head._forward_hooks) + len(model.lm_head._forward_pre_hooks) == 1
    emb_module = model.get_submodule(emb.rsplit(".", 1)[0])
    assert not emb_module._forward_hooks and not emb_module._forward_pre_hooks
    if kind == "gpt2":
        assert model.lm_head.weight is model.transformer.wte.weight
    h = torch.randn(2, 4 * BASE)
    assert torch.allclose(model.lm_head(h), F.linear(h, model.lm_head.weight) / 4, atol=1e-6)


# ============================================================================ training


def test_training_hooks_groups_copies():
    ex, mf, of = _zoo("gpt", "sp", lr=3e-3)
    model = mf(2 * BASE)
    opt = of(model)
    assert isinstance(model.tensorprog_mup, MupState) and model.tensorprog_mup.width_mult == 2
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert set(_lr(opt)) == {id(p) for p in trainable}  # every parameter, exactly once
    assert set(dict(model.state_dict())) == set(ex.factory(2 * BASE).state_dict())  # names unchanged
    x = ex.example_inputs(2 * BASE)
    sdpa = F.scaled_dot_product_attention
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = ex.loss(model(*x), x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert F.scaled_dot_product_attention is sdpa  # the patch is undone after each forward
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(*x), model(*x))  # hooks (multipliers, attention) survive a copy
        twin.tensorprog_mup = None
        stripped = copy.deepcopy(model)
        for m in stripped.modules():
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        assert not torch.equal(stripped(*x), model(*x))  # ... and they do something
    # an exception inside the forward still restores the global sdpa
    with pytest.raises(Exception):
        model(torch.zeros(2, 99, dtype=torch.long))
    assert F.scaled_dot_product_attention is sdpa


def test_weight_decay_scaling_constant():
    ex, mf, of = _zoo("mlp", "sp", torch.optim.AdamW, lr=1e-3, weight_decay=0.1,
                      weight_decay_scaling="constant")
    model = mf(4 * BASE)
    lr = _lr(of(model))
    assert lr[id(model.hidden[0].weight)] == pytest.approx((1e-3 / 4, 0.1))


# ============================================================================ tied weights, errors


V = 32


class TiedLM(nn.Module):
    """Embedding reused as the readout through ``h @ emb.weight.T`` in the top-level forward."""

    def __init__(self, n, functional_embedding=False):
        super().__init__()
        self.emb = nn.Embedding(V, n)
        self.functional_embedding = functional_embedding
        self.ln = nn.LayerNorm(n)
        self.fc = nn.Linear(n, n)

    def forward(self, idx):
        w = self.emb.weight
        h = F.embedding(idx, w) if self.functional_embedding else self.emb(idx)
        h = self.ln(h + torch.tanh(self.fc(h)))
        return h @ w.T


def test_tied_readout_used_functionally():
    x = (torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0)),)
    # the readout use cannot be hooked, the embedding module can: Lemma J.1 moves the tensor to
    # Table 3's readout form (init ~ 1/fan_in relative, Adam LR 1/fan_in) and the embedding gets
    # the multiplier width_mult instead
    mf, of = apply_mup(lambda n: TiedLM(n), BASE, example_inputs=x, widths=W,
                       optimizer_cls=torch.optim.Adam, lr=1e-2)
    r = mf.rules.params["emb.weight"]
    assert [h.module for h in mf.rules.hooks] == ["emb"]
    assert r.init_factor_exp == -1 and r.lr_exp == -1
    rep = analyze(mf, W, example_inputs=x, make_optimizer=of)
    assert rep.parametrization == "muP" and rep.stable and rep.every_layer_maximal, str(rep)
    # both uses functional: no module to hook -> a clear error naming the uses
    with pytest.raises(TensorprogError, match=r"emb\.weight.*embedding in `<top>`.*matmul in `<top>`"):
        apply_mup(lambda n: TiedLM(n, functional_embedding=True), BASE, example_inputs=x, widths=W)


def test_bad_inputs():
    ex = example("mlp", param="sp")
    with pytest.raises(TensorprogError, match="convention"):
        apply_mup(ex.factory, BASE, example_inputs=ex.example_inputs, convention="table5")
    with pytest.raises(TensorprogError, match="weight_decay_scaling"):
        apply_mup(ex.factory, BASE, example_inputs=ex.example_inputs, weight_decay_scaling="x")
    with pytest.raises(TensorprogError, match="base_width"):
        apply_mup(ex.factory, 0, example_inputs=ex.example_inputs)
    mf, of = apply_mup(ex.factory, BASE, example_inputs=ex.example_inputs, widths=W)
    with pytest.raises(TensorprogError, match="model_factory"):
        of(ex.factory(BASE))
    with pytest.raises(TensorprogError, match="already"):
        apply_mup(mf, BASE, example_inputs=ex.example_inputs, widths=W)
