"""Real model families, named as the papers name them.

Every expected verdict here comes from the papers, not from the code under test:

* HuggingFace models at their defaults (every weight ~ N(0, initializer_range) with a constant
  std, no width-dependent multiplier, one global AdamW learning rate, attention scale
  1/sqrt(d_head)) are the standard parametrization (SP). Under Adam at a width-independent LR,
  SP is unstable as the width grows (TP4 Thm 3.8 / TP5 §3: SP with a constant LR blows up).
* A model built with the ``mup`` package (MuReadout's 1/width readout multiplier, set_base_shapes,
  MuAdam's 1/width LR on hidden matrices, attention 1/d) is muP by construction (TP5 Table 8).
* nanoGPT with the common "nanoGPT-mup" recipe behind a ``mup_enabled`` flag (hidden init std
  / sqrt(width_mult), readout multiplier 1/width_mult, attention 1/d, Adam LR / width_mult on
  hidden matrices) is muP with the flag (TP5 Table 3 / Table 8) and SP without.
* Granite (HF's own width multipliers): attention_multiplier = 1/head_dim, logits_scaling =
  width/base_width and LR / width_mult on hidden matrices are muP's multipliers and LRs (TP5
  Table 8), but Granite initialises every weight with one constant std (initializer_range), which
  for hidden weights is not muP's fan_in^-1/2 (TP5 Table 3): the model is neither SP (1/d
  attention, a 1/width readout) nor muP, i.e. "mixed", until the hidden init is scaled too.
  With constant multipliers and Llama's attention scale (attention_multiplier = head_dim^-1/2)
  Granite is Llama, i.e. SP; its default attention_multiplier 1.0 keeps the attention scale
  constant as d_head grows, which is neither SP's 1/sqrt(d) nor muP's 1/d: "mixed".

Widths (64, 128, 256), 4 heads (so d_head grows with the width), 2 layers, vocab 256.
"""
import math
import warnings

import pytest
import sympy as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from tensorprog import analyze

R = sp.Rational
WIDTHS = (64, 128, 256)
BASE = 64  # the base width of the width multipliers
HEADS, LAYERS, VOCAB, SEQ = 4, 2, 256, 16
IDS = (torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0)),)
IMAGES = (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


def adamw(m):
    return torch.optim.AdamW(m.parameters(), lr=1e-3)


def _transformers():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    return transformers


# ----------------------------------------------------------------------------- HF models in SP


def _hf_factory(kind):
    T = _transformers()
    common = dict(num_hidden_layers=LAYERS, num_attention_heads=HEADS, vocab_size=VOCAB)
    if kind == "gpt2":
        return lambda n: T.GPT2LMHeadModel(T.GPT2Config(
            n_embd=n, n_inner=4 * n, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=32,
            use_cache=False))
    if kind == "llama":
        return lambda n: T.LlamaForCausalLM(T.LlamaConfig(
            hidden_size=n, intermediate_size=2 * n, num_key_value_heads=HEADS,
            max_position_embeddings=32, use_cache=False, **common))
    if kind == "bert":
        return lambda n: T.BertForMaskedLM(T.BertConfig(
            hidden_size=n, intermediate_size=4 * n, max_position_embeddings=32, **common))
    if kind == "opt":
        return lambda n: T.OPTForCausalLM(T.OPTConfig(
            hidden_size=n, ffn_dim=4 * n, word_embed_proj_dim=n, max_position_embeddings=32,
            use_cache=False, **common))
    if kind == "falcon":  # fused qkv, parallel attention + MLP (4n intermediate)
        return lambda n: T.FalconForCausalLM(T.FalconConfig(hidden_size=n, use_cache=False, **common))
    if kind == "qwen2":
        return lambda n: T.Qwen2ForCausalLM(T.Qwen2Config(
            hidden_size=n, intermediate_size=2 * n, num_key_value_heads=HEADS,
            max_position_embeddings=32, use_cache=False, **common))
    if kind == "gpt_neox":
        return lambda n: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
            hidden_size=n, intermediate_size=4 * n, max_position_embeddings=32, use_cache=False,
            **common))
    if kind == "vit":
        common.pop("vocab_size")
        return lambda n: T.ViTForImageClassification(T.ViTConfig(
            hidden_size=n, intermediate_size=4 * n, image_size=16, patch_size=4, num_labels=10,
            **common))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert", "opt", "falcon", "qwen2", "gpt_neox", "vit"])
def test_hf_model_at_its_defaults_is_sp(kind):
    rep = analyze(_hf_factory(kind), WIDTHS, example_inputs=IMAGES if kind == "vit" else IDS,
                  make_optimizer=adamw)
    assert rep.parametrization == "SP", str(rep)
    assert rep.attention and all(a.kind == "1/sqrt(d)" for a in rep.attention), str(rep)
    assert rep.stable is False  # SP under Adam at a width-independent LR (TP4, TP5 §3)
    assert not rep.undetermined and not rep.unknown_ops
    hidden = [p for p in rep.params.values() if p.role == "hidden"]
    assert hidden and all("muP" not in p.classes and p.fixes for p in hidden)
    # no width-dependent multiplier on any weight: SP has none
    assert all(u.mult_exp == 0 for p in rep.params.values() for u in p.uses), str(rep)


# ----------------------------------------------------------------------------- the mup package


class MuGPT(nn.Module):
    """A small GPT written for the mup package: MuReadout, attention scale 1/d (mup's README)."""

    def __init__(self, n, readout=None, attn_mult=8.0):
        super().__init__()
        from mup import MuReadout

        self.n, self.d, self.attn_mult = n, n // HEADS, attn_mult
        self.wte, self.wpe = nn.Embedding(VOCAB, n), nn.Embedding(SEQ, n)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln1=nn.LayerNorm(n), q=nn.Linear(n, n), k=nn.Linear(n, n), v=nn.Linear(n, n),
            o=nn.Linear(n, n), ln2=nn.LayerNorm(n), fc=nn.Linear(n, 4 * n), proj=nn.Linear(4 * n, n)))
            for _ in range(LAYERS))
        self.lnf = nn.LayerNorm(n)
        self.head = (readout or MuReadout)(n, VOCAB)

    def forward(self, idx):
        B, T = idx.shape
        h = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        heads = (lambda t: t.view(B, T, HEADS, self.d).transpose(1, 2))
        for b in self.blocks:
            x = b["ln1"](h)
            a = F.scaled_dot_product_attention(heads(b["q"](x)), heads(b["k"](x)), heads(b["v"](x)),
                                               is_causal=True, scale=self.attn_mult / self.d)
            h = h + b["o"](a.transpose(1, 2).reshape(B, T, self.n))
            h = h + b["proj"](F.gelu(b["fc"](b["ln2"](h))))
        return self.head(self.lnf(h))


def _mugpt(n):
    from mup import set_base_shapes

    m = MuGPT(n)
    set_base_shapes(m, MuGPT(BASE), delta=MuGPT(2 * BASE))
    return m


def test_mup_package_transformer_is_mup():
    """MuReadout (1/width readout), MuAdam (LR / width_mult on hidden matrices), attention 1/d:
    TP5 Table 8's muP."""
    mup = pytest.importorskip("mup")
    rep = analyze(_mugpt, WIDTHS, example_inputs=IDS,
                  make_optimizer=lambda m: mup.MuAdam(m.parameters(), lr=1e-2))
    assert rep.parametrization == "muP", str(rep)
    assert rep.stable and rep.feature_learning
    assert all(a.kind == "1/d" for a in rep.attention)
    assert rep.params["head.weight"].role == "output" and rep.params["head.weight"].mult_exp == -1
    assert rep.params["blocks.0.fc.weight"].lr_exp == -1


# ----------------------------------------------------------------------------- nanoGPT-mup


class NanoGPTConfig:
    def __init__(self, n_embd, mup_enabled=False, mup_base_width=BASE, mup_input_alpha=1.0,
                 mup_output_alpha=1.0, init_std=0.02):
        self.n_embd, self.n_layer, self.n_head = n_embd, LAYERS, HEADS
        self.vocab_size, self.block_size = VOCAB, SEQ
        self.mup_enabled = mup_enabled
        self.mup_width_multiplier = n_embd / mup_base_width
        self.mup_input_alpha, self.mup_output_alpha, self.init_std = mup_input_alpha, mup_output_alpha, init_std


class NanoBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.c_attn, self.attn_proj = nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(c.n_embd, 4 * c.n_embd), nn.Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        d = C // self.c.n_head
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.c.n_head, d).transpose(1, 2) for t in (q, k, v))
        # muP: 1/d attention (TP5 Def 4.1); nanoGPT: 1/sqrt(d)
        scale = 1.0 / d if self.c.mup_enabled else 1.0 / math.sqrt(d)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    """nanoGPT (tied wte / lm_head, std 0.02 init, c_proj std / sqrt(2 L)) with the nanoGPT-mup
    recipe behind ``mup_enabled``: hidden init std / sqrt(width_mult), input alpha, readout
    output_alpha / width_mult, 1/d attention, LR / width_mult on hidden matrices."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(NanoBlock(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            std = c.init_std
            if c.mup_enabled and name.startswith("h."):
                std /= math.sqrt(c.mup_width_multiplier)
            if name.endswith("proj.weight"):
                std /= math.sqrt(2 * c.n_layer)
            nn.init.normal_(p, mean=0.0, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        if self.c.mup_enabled:
            x = x * self.c.mup_input_alpha
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if self.c.mup_enabled:
            x = x * (self.c.mup_output_alpha / self.c.mup_width_multiplier)
        return self.lm_head(x)

    def configure_optimizers(self, lr=6e-4, weight_decay=0.1):
        hidden = [p for n, p in self.named_parameters() if p.dim() >= 2 and n.startswith("h.")]
        other = [p for n, p in self.named_parameters() if p.dim() >= 2 and not n.startswith("h.")]
        nodecay = [p for p in self.parameters() if p.dim() < 2]
        scale = 1.0 / self.c.mup_width_multiplier if self.c.mup_enabled else 1.0
        return torch.optim.AdamW([
            {"params": hidden, "weight_decay": weight_decay, "lr": lr * scale},
            {"params": other, "weight_decay": weight_decay, "lr": lr},
            {"params": nodecay, "weight_decay": 0.0, "lr": lr}], lr=lr, betas=(0.9, 0.95))


@pytest.mark.parametrize("mup_enabled,expected", [(True, "muP"), (False, "SP")])
def test_nanogpt_mup_enabled_flag(mup_enabled, expected):
    rep = analyze(lambda n: NanoGPT(NanoGPTConfig(n, mup_enabled=mup_enabled)), WIDTHS,
                  example_inputs=IDS, make_optimizer=lambda m: m.configure_optimizers())
    assert rep.parametrization == expected, str(rep)
    assert all(a.kind == ("1/d" if mup_enabled else "1/sqrt(d)") for a in rep.attention)
    if mup_enabled:
        assert rep.stable and rep.feature_learning
    else:
        assert rep.stable is False


# ----------------------------------------------------------------------------- Granite


def _granite(n, mup=False, hidden_init=False, **kw):
    T = _transformers()
    if mup:  # the multipliers as functions of the width, the way a muP user sets them
        kw.update(attention_multiplier=1.0 / (n // HEADS), logits_scaling=n / BASE,
                  embedding_multiplier=12.0, residual_multiplier=0.22)
    m = T.GraniteForCausalLM(T.GraniteConfig(
        hidden_size=n, intermediate_size=2 * n, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, vocab_size=VOCAB, max_position_embeddings=32, use_cache=False,
        **kw))
    if hidden_init:  # TP5 Table 3: hidden weights std ~ fan_in^-1/2 (initializer_range at BASE)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() == 2 and ".layers." in name:
                    p.normal_(0.0, m.config.initializer_range * math.sqrt(BASE / n))
    return m


def _granite_adam(mup):
    def make(m):
        if not mup:
            return adamw(m)
        width_mult = m.config.hidden_size / BASE
        hidden = [p for n, p in m.named_parameters() if p.dim() == 2 and ".layers." in n]
        other = [p for n, p in m.named_parameters() if not (p.dim() == 2 and ".layers." in n)]
        return torch.optim.AdamW([{"params": hidden, "lr": 1e-3 / width_mult},
                                  {"params": other, "lr": 1e-3}])
    return make


def test_granite_at_its_defaults_has_sp_weights_and_a_constant_attention_scale():
    """Granite's default attention_multiplier is 1.0: sdpa's scale stays 1 while d_head grows,
    which is neither SP's 1/sqrt(d) nor muP's 1/d (TP5 Def 4.1), so the logits grow like
    sqrt(d) at init. Every weight is in SP (constant-std init, no width-dependent multiplier,
    one LR); the attention alone makes the model "mixed"."""
    rep = analyze(_granite, WIDTHS, example_inputs=IDS, make_optimizer=_granite_adam(False))
    assert [a.kind for a in rep.attention] == ["1"] * LAYERS, str(rep)
    assert all("SP" in p.classes for p in rep.params.values() if p.trainable), str(rep)
    assert rep.parametrization == "mixed"
    assert not rep.constants


def test_granite_with_the_sp_attention_scale_is_sp():
    """attention_multiplier = head_dim^-1/2 (Llama's scale), the other multipliers constant:
    Granite is Llama, i.e. SP."""
    rep = analyze(lambda n: _granite(n, attention_multiplier=(n // HEADS) ** -0.5), WIDTHS,
                  example_inputs=IDS, make_optimizer=_granite_adam(False))
    assert rep.parametrization == "SP", str(rep)
    assert all(a.kind == "1/sqrt(d)" for a in rep.attention)
    assert all(u.mult_exp == 0 for p in rep.params.values() for u in p.uses), str(rep)


def test_granite_with_mup_multipliers_names_them_and_its_constant_init_makes_it_mixed():
    rep = analyze(lambda n: _granite(n, mup=True), WIDTHS, example_inputs=IDS,
                  make_optimizer=_granite_adam(True))
    # attention_multiplier = 1/head_dim: the 1/d attention of muP (TP5 Def 4.1)
    assert rep.attention and all(a.kind == "1/d" for a in rep.attention), str(rep)
    # logits_scaling = width / base: a 1/width multiplier on the readout (TP5 Table 8)
    assert rep.params["lm_head.weight"].mult_exp == -1, str(rep)
    consts = {(c["op"], c["exp"]) for c in rep.constants}
    assert consts == {("scaled_dot_product_attention", -1), ("div", 1)}, rep.constants
    assert rep.stable is False  # hidden preactivations ~ sqrt(n) at init (0.02 * sqrt(fan_in))
    # one constant init std for hidden weights is not muP's fan_in^-1/2 (TP5 Table 3)
    assert rep.parametrization == "mixed", str(rep)
    q = rep.params["model.layers.0.self_attn.q_proj.weight"]
    assert q.init_exp == 0 and "muP" not in q.classes and q.fixes


def test_granite_with_mup_multipliers_and_mup_hidden_init_is_mup():
    rep = analyze(lambda n: _granite(n, mup=True, hidden_init=True), WIDTHS, example_inputs=IDS,
                  make_optimizer=_granite_adam(True))
    assert rep.parametrization == "muP", str(rep)
    assert rep.stable and rep.feature_learning
