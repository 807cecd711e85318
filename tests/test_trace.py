"""Tests for tensorprog.trace: dims, roles, fans, init / multiplier / LR exponents, export, errors.

Every expected value is worked out by hand from the model's known init rule or from the
definitions of TP5 Table 3 and App B (arXiv 2203.03466), never read back from the code under test:

* nn.Linear / nn.Conv2d default init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so
  RMS = 1/sqrt(3 fan_in): exponent -1/2 when fan_in grows with n, 0 when fan_in is finite.
* nn.Embedding: N(0, 1) -> 0.  HF GPT-2 / Llama / BERT: N(0, 0.02) -> 0 (GPT-2's residual
  projections N(0, 0.02 / sqrt(2 n_layer)) -> 0 too).  Norm gains: ones -> 0; biases zeros -> "zero".
* mup: MuReadout multiplies its input by 1/width_mult -> mult_exp -1; set_base_shapes rescales the
  readout by width_mult^{1/2}, cancelling the default n^{-1/2} -> 0.  MuAdam divides the hidden
  (two infinite dims) LR by width_mult -> -1; MuSGD multiplies vector-like LRs (one infinite dim)
  by width_mult -> +1 and leaves square hidden matrices alone -> 0.
* Exponent sign convention: ``*_exp`` = e with quantity ~ n^e.
"""
from __future__ import annotations

import json
import math

import pytest
import sympy as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

import tensorprog as tp
from tensorprog import TraceError, TensorprogError

# torch.export and transformers warn about things unrelated to what is tested here
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: on a busy machine with few cores, torch's intra-op threads mostly wait on
    each other (parallel elementwise ops stall), so run this module single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


R = sp.Rational
HALF = R(1, 2)


def uniform_rms(fan_in):
    """RMS of U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's Linear / Conv default)."""
    return 1.0 / math.sqrt(3 * fan_in)


def use_of(p, op):
    """The one use of parameter ``p`` through op ``op``."""
    uses = [u for u in p.uses if u.op == op]
    assert len(uses) == 1, f"{p.name}: expected one {op} use, got {[u.op for u in p.uses]}"
    return uses[0]


# ============================================================================ MLP

D_IN, K_OUT, BASE = 8, 4, 64
MLP_WIDTHS = (64, 128, 256)


class MLP(nn.Module):
    """input Linear(d, n) -> hidden Linear(n, n) -> readout Linear(n, k), readout multiplier.

    mode selects how the width-dependent readout multiplier base/n is written.
    """

    def __init__(self, n, mode="pre", d=D_IN, k=K_OUT):
        super().__init__()
        self.n, self.mode = n, mode
        self.inp = nn.Linear(d, n)
        self.hid = nn.Linear(n, n)
        self.out = nn.Linear(n, k)
        self.register_buffer("mult", torch.tensor(BASE / n))

    def forward(self, x):
        h = torch.relu(self.hid(torch.relu(self.inp(x))))
        if self.mode == "pre":
            return self.out(h * (BASE / self.n))
        if self.mode == "post":
            return self.out(h) * (BASE / self.n)
        if self.mode == "div":
            return self.out(h / (self.n / BASE))
        if self.mode == "buffer":
            return self.out(h * self.mult)
        if self.mode == "sqrt":
            return self.out(h) / math.sqrt(self.n)
        return self.out(h)


def mlp_optimizer(model):
    """Hand-built groups: hidden LR 0.1 * 64 / n (exponent -1), weight decay 1e-2 * n / 64 (+1);
    input and readout LR constant (0), readout weight decay 0 ("zero")."""
    n = model.n
    return torch.optim.AdamW([
        {"params": [model.inp.weight, model.inp.bias], "lr": 0.1, "weight_decay": 1e-2},
        {"params": [model.hid.weight, model.hid.bias], "lr": 0.1 * BASE / n,
         "weight_decay": 1e-2 * n / BASE},
        {"params": [model.out.weight, model.out.bias], "lr": 0.1, "weight_decay": 0.0},
    ])


X_MLP = (torch.randn(4, D_IN),)


@pytest.fixture(scope="module")
def mlp():
    return tp.trace(MLP, MLP_WIDTHS, example_inputs=X_MLP, make_optimizer=mlp_optimizer)


def test_mlp_traces_all_params_once(mlp):
    assert set(mlp.params) == {"inp.weight", "inp.bias", "hid.weight", "hid.bias",
                               "out.weight", "out.bias"}
    assert mlp.widths == MLP_WIDTHS
    assert mlp.params["hid.weight"].shapes == {64: (64, 64), 128: (128, 128), 256: (256, 256)}
    assert mlp.params["inp.weight"].shapes[128] == (128, D_IN)


@pytest.mark.parametrize("name, dims, role, fan_in, fan_out", [
    ("inp.weight", (1, 0), "input", (1,), (0,)),
    ("hid.weight", (1, 1), "hidden", (1,), (0,)),
    ("out.weight", (0, 1), "output", (1,), (0,)),
    ("inp.bias", (1,), "vector", (), (0,)),
    ("hid.bias", (1,), "vector", (), (0,)),
    ("out.bias", (0,), "scalar", (), (0,)),  # its only dim (k classes) is finite
])
def test_mlp_dims_roles_fans(mlp, name, dims, role, fan_in, fan_out):
    p = mlp.params[name]
    assert p.dims == dims
    assert p.role == role
    assert p.fan_in == fan_in and p.fan_out == fan_out
    assert p.trainable


@pytest.mark.parametrize("name, fan_in_exp, fan_out_exp", [
    ("inp.weight", 0, 1), ("hid.weight", 1, 1), ("out.weight", 1, 0)])
def test_mlp_fan_exponents(mlp, name, fan_in_exp, fan_out_exp):
    p = mlp.params[name]
    assert p.fan_in_exp == fan_in_exp and p.fan_out_exp == fan_out_exp


@pytest.mark.parametrize("name, init_exp, fan_in", [
    ("inp.weight", 0, lambda n: D_IN),       # U(+-1/sqrt(8)): constant
    ("inp.bias", 0, lambda n: D_IN),
    ("hid.weight", -HALF, lambda n: n),      # U(+-1/sqrt(n))
    ("hid.bias", -HALF, lambda n: n),
    ("out.weight", -HALF, lambda n: n),
    ("out.bias", -HALF, lambda n: n),
])
def test_mlp_init_exponents_and_rms(mlp, name, init_exp, fan_in):
    p = mlp.params[name]
    assert p.init_exp == init_exp
    assert abs(p.init_fit - float(init_exp)) < 0.1
    for w in MLP_WIDTHS:
        # pooled over seeds; out.bias has only 4 values per instance, so a loose tolerance there
        tol = 0.25 if name == "out.bias" else 0.05
        assert p.init_rms[w] == pytest.approx(uniform_rms(fan_in(w)), rel=tol)


def test_mlp_readout_multiplier(mlp):
    # out(h * (64 / n)): the readout's data operand is scaled by n^-1 -> a = 1
    assert mlp.params["out.weight"].mult_exp == -1
    assert use_of(mlp.params["out.weight"], "linear").mult_exp == -1
    for name in ("inp.weight", "inp.bias", "hid.weight", "hid.bias", "out.bias"):
        assert mlp.params[name].mult_exp == 0, name
    muls = [n for n in mlp.order if mlp.node(n)["op"] == "mul"]
    assert len(muls) == 1
    (scalar,) = mlp.node(muls[0])["scalars"].values()
    assert scalar["values"] == pytest.approx([1.0, 0.5, 0.25])
    assert scalar["exp"] == -1


@pytest.mark.parametrize("name, lr_exp, wd_exp", [
    ("inp.weight", 0, 0), ("inp.bias", 0, 0), ("hid.weight", -1, 1), ("hid.bias", -1, 1),
    ("out.weight", 0, "zero"), ("out.bias", 0, "zero")])
def test_mlp_lr_and_weight_decay_exponents(mlp, name, lr_exp, wd_exp):
    p = mlp.params[name]
    assert p.lr_exp == lr_exp
    assert p.wd_exp == wd_exp
    assert mlp.optimizer == "AdamW"
    if name.startswith("hid"):
        assert p.lr == pytest.approx({64: 0.1, 128: 0.05, 256: 0.025})


def test_mlp_node_dims(mlp):
    ops = {n: mlp.node(n) for n in mlp.order}
    x = next(n for n, a in ops.items() if a["input"] == 0)
    assert ops[x]["dims"] == (0, 0)  # batch x d: nothing scales
    linears = [n for n, a in ops.items() if a["op"] == "linear"]
    assert [ops[n]["dims"] for n in linears] == [(0, 1), (0, 1), (0, 0)]
    assert ops[linears[1]]["module"] == "hid"
    assert mlp.unknown_power_laws() == []


@pytest.mark.parametrize("mode, out_w, out_b", [
    ("post", -1, -1),       # out(h) * c scales the bias too
    ("div", -1, 0),         # out(h / (n / 64))
    ("buffer", -1, 0),      # out(h * buffer) with buffer = 64 / n
    ("sqrt", -HALF, -HALF),  # out(h) / sqrt(n)
    ("none", 0, 0),
])
def test_multiplier_spellings(mode, out_w, out_b):
    g = tp.trace(lambda n: MLP(n, mode), (64, 128), example_inputs=X_MLP, init_seeds=1)
    assert g.params["out.weight"].mult_exp == out_w
    assert g.params["out.bias"].mult_exp == out_b
    assert g.params["hid.weight"].mult_exp == 0
    assert g.params["out.weight"].lr_exp is None and g.optimizer is None  # no optimizer given


def test_widths_are_sorted_and_repeats_refused():
    g = tp.trace(MLP, (128, 64), example_inputs=X_MLP, init_seeds=1)
    assert g.widths == (64, 128)
    assert g.params["hid.weight"].dims == (1, 1)
    with pytest.raises(TraceError, match="repeated values"):  # a typo, not silently merged
        tp.trace(MLP, (128, 64, 128), example_inputs=X_MLP)


def test_example_inputs_as_callable_and_model_method():
    g = tp.trace(MLP, (64, 128), example_inputs=lambda n: (torch.randn(3, D_IN),), init_seeds=1)
    assert g.params["inp.weight"].role == "input"

    class WithInputs(MLP):
        def example_inputs(self):
            return (torch.randn(3, D_IN),)

    g = tp.trace(WithInputs, (64, 128), init_seeds=1)
    assert g.params["out.weight"].role == "output"
    assert g.params["out.weight"].mult_exp == -1


# ============================================================================ raw parameters


class RawParams(nn.Module):
    """Parameters used without nn.Linear: fans must come from the consuming op."""

    def __init__(self, n, d=D_IN, k=5):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d, n))   # x @ W_in: contracts dim 0 (finite)
        self.W_h = nn.Parameter(torch.randn(2 * n, n) / math.sqrt(n))  # h @ W_h.transpose(0, 1)
        self.gain = nn.Parameter(torch.ones(n))
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.W_out = nn.Parameter(torch.zeros(n, k))  # h @ W_out: contracts dim 0 (infinite)

    def forward(self, x):
        h = torch.tanh(x @ self.W_in)
        h = torch.tanh(h @ self.W_h.transpose(0, 1))[..., :h.shape[-1]] * self.gain * self.alpha
        return h @ self.W_out


def test_raw_parameters_fans_from_the_op():
    g = tp.trace(RawParams, (64, 128), example_inputs=X_MLP, init_seeds=1)
    w_in, w_out = g.params["W_in"], g.params["W_out"]
    assert (w_in.dims, w_in.fan_in, w_in.fan_out, w_in.role) == ((0, 1), (0,), (1,), "input")
    assert (w_out.dims, w_out.fan_in, w_out.fan_out, w_out.role) == ((1, 0), (0,), (1,), "output")
    assert w_in.init_exp == 0          # randn
    w_h = g.params["W_h"]  # stored (out, in), used through transpose: contracts dim 1
    assert (w_h.dims, w_h.fan_in, w_h.fan_out, w_h.role) == ((1, 1), (1,), (0,), "hidden")
    assert w_h.init_exp == -HALF       # randn / sqrt(n)
    assert w_out.init_exp == "zero"    # zeros
    assert g.params["gain"].role == "vector" and g.params["gain"].init_exp == 0
    assert g.params["alpha"].dims == () and g.params["alpha"].role == "scalar"


# ============================================================================ CNN

N_CLASSES = 10


class CNN(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv1 = nn.Conv2d(3, n, 3, padding=1)
        self.gn = nn.GroupNorm(4, n)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(n)
        self.fc = nn.Linear(n, N_CLASSES)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.gn(self.conv1(x))), 2)
        h = F.relu(self.bn(self.conv2(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


CNN_WIDTHS = (16, 32, 64)


@pytest.fixture(scope="module")
def cnn():
    return tp.trace(CNN, CNN_WIDTHS, example_inputs=(torch.randn(2, 3, 8, 8),))


def test_cnn_conv_weights(cnn):
    c1, c2 = cnn.params["conv1.weight"], cnn.params["conv2.weight"]
    # (out, in, kh, kw): kernel dims are finite
    assert c1.dims == (1, 0, 0, 0) and c2.dims == (1, 1, 0, 0)
    assert c1.fan_in == (1, 2, 3) and c1.fan_out == (0,)
    assert c2.fan_in == (1, 2, 3) and c2.fan_out == (0,)
    assert c1.role == "input" and c2.role == "hidden"
    assert use_of(c2, "conv2d").kind == "matrix"
    # default init U(+-1/sqrt(in * 3 * 3)): fan_in 27 (constant) for conv1, 9n for conv2
    assert c1.init_exp == 0 and c2.init_exp == -HALF
    assert c2.init_rms[32] == pytest.approx(uniform_rms(9 * 32), rel=0.05)
    assert cnn.params["conv1.bias"].role == "vector" and cnn.params["conv1.bias"].init_exp == 0


def test_cnn_norms_and_readout(cnn):
    for norm in ("gn", "bn"):
        w, b = cnn.params[f"{norm}.weight"], cnn.params[f"{norm}.bias"]
        assert w.dims == (1,) and w.role == "vector" and w.init_exp == 0  # ones
        assert b.role == "vector" and b.init_exp == "zero"  # zeros
    fc = cnn.params["fc.weight"]
    assert fc.dims == (0, 1) and fc.role == "output" and fc.init_exp == -HALF
    assert cnn.params["fc.bias"].role == "scalar"
    assert "bn.running_mean" not in cnn.params  # buffers are not parameters


def test_cnn_activation_dims(cnn):
    by_op = {}
    for n in cnn.order:
        by_op.setdefault(cnn.node(n)["op"], []).append(cnn.node(n)["dims"])
    assert by_op["conv2d"] == [(0, 1, 0, 0)] * 2       # channels scale, space does not
    assert by_op["max_pool2d"] == [(0, 1, 0, 0)]
    assert by_op["linear"] == [(0, 0)]                 # batch x classes


# ============================================================================ HF transformers

VOCAB, SEQ = 128, 16
IDS = (torch.randint(0, VOCAB, (2, SEQ)),)
HF_WIDTHS = (64, 128)


def _quiet_hf():
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass


def gpt2_factory(n, n_layer=2):
    from transformers import GPT2Config, GPT2LMHeadModel
    _quiet_hf()
    return GPT2LMHeadModel(GPT2Config(n_embd=n, n_layer=n_layer, n_head=4, vocab_size=VOCAB,
                                      n_positions=SEQ, use_cache=False, bos_token_id=0,
                                      eos_token_id=0))


@pytest.fixture(scope="module")
def gpt2():
    pytest.importorskip("transformers")
    return tp.trace(gpt2_factory, HF_WIDTHS, example_inputs=IDS)


def sdpa_nodes(g):
    return [n for n in g.order if g.node(n)["op"] == "scaled_dot_product_attention"]


def test_gpt2_conv1d_transposed_storage(gpt2):
    # HF Conv1D stores (in, out) and computes addmm(b, x, W): dim 0 contracted
    for name, shape in (("transformer.h.0.attn.c_attn.weight", (64, 3 * 64)),  # (in, out)
                        ("transformer.h.1.mlp.c_fc.weight", (64, 4 * 64)),
                        ("transformer.h.0.mlp.c_proj.weight", (4 * 64, 64))):
        p = gpt2.params[name]
        assert p.shapes[64] == shape
        assert p.dims == (1, 1)
        assert p.fan_in == (0,) and p.fan_out == (1,)
        assert p.role == "hidden"
        assert use_of(p, "addmm").kind == "matrix"
        assert p.init_exp == 0  # N(0, 0.02)
    assert gpt2.params["transformer.h.0.attn.c_attn.bias"].role == "vector"
    assert gpt2.params["transformer.h.0.attn.c_attn.bias"].init_exp == "zero"


def test_gpt2_tied_embedding(gpt2):
    assert "lm_head.weight" not in gpt2.params
    wte = gpt2.params["transformer.wte.weight"]
    assert wte.aliases == ["lm_head.weight"]
    assert wte.role == "input+output"
    assert wte.dims == (0, 1)
    emb, lin = use_of(wte, "embedding"), use_of(wte, "linear")
    # a lookup sums over nothing: fan-in 1 (the one-hot id), the vocabulary is no fan-in (TP5 App B)
    assert (emb.role, emb.fan_in, emb.fan_out) == ("input", (), (1,))
    assert (lin.role, lin.fan_in, lin.fan_out) == ("output", (1,), (0,))
    assert wte.init_exp == 0
    assert wte.init_rms[64] == pytest.approx(0.02, rel=0.05)
    assert gpt2.params["transformer.wpe.weight"].role == "input"


def test_gpt2_init_scales(gpt2):
    # residual projections: N(0, 0.02 / sqrt(2 * n_layer)) = N(0, 0.01)
    p = gpt2.params["transformer.h.1.attn.c_proj.weight"]
    assert p.init_exp == 0
    assert p.init_rms[128] == pytest.approx(0.01, rel=0.05)
    ln_w, ln_b = gpt2.params["transformer.h.0.ln_1.weight"], gpt2.params["transformer.h.0.ln_1.bias"]
    assert (ln_w.role, ln_w.init_exp, ln_w.init_rms[64]) == ("vector", 0, 1.0)
    assert (ln_b.role, ln_b.init_exp) == ("vector", "zero")


def test_gpt2_attention_scale(gpt2):
    nodes = sdpa_nodes(gpt2)
    assert len(nodes) == 2
    for n in nodes:
        a = gpt2.node(n)
        # 4 heads fixed: d_head = n / 4, scale 1/sqrt(d_head) ~ n^-1/2
        assert a["scalars"]["scale"]["exp"] == -HALF
        assert a["scalars"]["scale"]["values"] == pytest.approx([1 / math.sqrt(16), 1 / math.sqrt(32)])
        q = gpt2.inputs(n)[0]
        assert gpt2.node(q)["dims"] == (0, 0, 0, 1)  # batch, heads, seq, head size
        assert gpt2.node(q)["shapes"][64] == (2, 4, SEQ, 16)


def test_gpt2_all_params_classified(gpt2):
    roles = {p.role for p in gpt2.params.values()}
    assert roles <= {"input", "hidden", "vector", "input+output"}
    assert all(p.init_exp is not None for p in gpt2.params.values())
    assert gpt2.unknown_power_laws() == []


def llama_factory(n):
    from transformers import LlamaConfig, LlamaForCausalLM
    _quiet_hf()
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=n, intermediate_size=2 * n, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=SEQ, use_cache=False,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0))


@pytest.fixture(scope="module")
def llama():
    pytest.importorskip("transformers")
    return tp.trace(llama_factory, (64, 128, 256), example_inputs=IDS)


def test_llama_roles_and_dims(llama):
    P = llama.params
    assert (P["model.embed_tokens.weight"].role, P["model.embed_tokens.weight"].dims) == ("input", (0, 1))
    assert (P["lm_head.weight"].role, P["lm_head.weight"].dims) == ("output", (0, 1))
    q, k = P["model.layers.0.self_attn.q_proj.weight"], P["model.layers.0.self_attn.k_proj.weight"]
    assert q.shapes[128] == (128, 128)
    assert k.shapes[128] == (64, 128)  # GQA: 2 kv heads of size 128 / 4
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        p = P[f"model.layers.1.self_attn.{name}.weight"]
        assert (p.dims, p.role, p.fan_in, p.fan_out) == ((1, 1), "hidden", (1,), (0,))
        assert p.init_exp == 0  # N(0, 0.02)
    down = P["model.layers.0.mlp.down_proj.weight"]
    assert down.shapes[64] == (64, 128) and down.dims == (1, 1) and down.role == "hidden"


def test_llama_rmsnorm_gain_is_vector(llama):
    for name in ("model.layers.0.input_layernorm.weight", "model.norm.weight"):
        p = llama.params[name]
        assert p.dims == (1,) and p.role == "vector" and p.init_exp == 0
        assert use_of(p, "mul").kind == "vector"


def test_llama_attention_scale(llama):
    for n in sdpa_nodes(llama):
        assert llama.node(n)["scalars"]["scale"]["exp"] == -HALF
        assert llama.node(llama.inputs(n)[0])["dims"] == (0, 0, 0, 1)


def bert_factory(n):
    from transformers import BertConfig, BertForMaskedLM
    _quiet_hf()
    return BertForMaskedLM(BertConfig(
        hidden_size=n, intermediate_size=2 * n, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, max_position_embeddings=SEQ))


@pytest.fixture(scope="module")
def bert():
    pytest.importorskip("transformers")
    # keyword inputs (a dict) exercise the kwargs path of the tracer
    return tp.trace(bert_factory, HF_WIDTHS,
                    example_inputs={"input_ids": IDS[0], "attention_mask": torch.ones_like(IDS[0])})


def test_bert_roles_and_dims(bert):
    P = bert.params
    word = P["bert.embeddings.word_embeddings.weight"]
    assert word.role == "input+output" and word.dims == (0, 1)
    assert "cls.predictions.decoder.weight" in word.aliases
    tt = P["bert.embeddings.token_type_embeddings.weight"]
    assert tt.shapes[64] == (2, 64) and tt.dims == (0, 1) and tt.role == "input"
    q = P["bert.encoder.layer.0.attention.self.query.weight"]
    assert (q.dims, q.role, q.init_exp) == ((1, 1), "hidden", 0)
    inter = P["bert.encoder.layer.1.intermediate.dense.weight"]
    assert inter.shapes[64] == (128, 64) and inter.role == "hidden"
    ln = P["bert.encoder.layer.0.output.LayerNorm.weight"]
    assert (ln.role, ln.init_exp) == ("vector", 0)
    assert P["bert.encoder.layer.0.output.LayerNorm.bias"].init_exp == "zero"
    assert P["cls.predictions.bias"].dims == (0,) and P["cls.predictions.bias"].role == "scalar"
    for n in sdpa_nodes(bert):
        assert bert.node(n)["scalars"]["scale"]["exp"] == -HALF
    inputs = {bert.node(n)["input"] for n in bert.order if bert.node(n)["input"] is not None}
    assert len(inputs) == 2  # input_ids and attention_mask both reached the graph


# ============================================================================ heads grow with width

HEAD_SIZE, TINY_VOCAB = 16, 50


class HeadsGrow(nn.Module):
    """n / 16 heads of fixed size 16, tied embedding / readout."""

    def __init__(self, n, explicit_scale=True):
        super().__init__()
        self.heads, self.explicit = n // HEAD_SIZE, explicit_scale
        self.emb = nn.Embedding(TINY_VOCAB, n)
        self.qkv = nn.Linear(n, 3 * n, bias=False)
        self.proj = nn.Linear(n, n)
        self.head = nn.Linear(n, TINY_VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        B, T, n = x.shape
        q, k, v = (t.view(B, T, self.heads, HEAD_SIZE).transpose(1, 2)
                   for t in self.qkv(x).split(n, dim=-1))
        scale = HEAD_SIZE ** -0.5 if self.explicit else None
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, n))
        return self.head(x)


TOKENS = (torch.randint(0, TINY_VOCAB, (2, 12)),)


@pytest.fixture(scope="module")
def heads_grow():
    return tp.trace(HeadsGrow, (64, 128, 256), example_inputs=TOKENS)


def test_heads_grow_scale_and_q_dims(heads_grow):
    (n,) = sdpa_nodes(heads_grow)
    a = heads_grow.node(n)
    assert a["scalars"]["scale"]["exp"] == 0
    assert a["scalars"]["scale"]["values"] == pytest.approx([0.25] * 3)
    q = heads_grow.inputs(n)[0]
    assert heads_grow.node(q)["dims"] == (0, 1, 0, 0)  # heads axis scales, head size does not
    assert heads_grow.node(q)["shapes"][256] == (2, 16, 12, HEAD_SIZE)
    assert a["dims"] == (0, 1, 0, 0)


def test_heads_grow_default_scale_left_to_engine():
    g = tp.trace(lambda n: HeadsGrow(n, explicit_scale=False), (64, 128), example_inputs=TOKENS,
                 init_seeds=1)
    (n,) = sdpa_nodes(g)
    assert "scale" not in g.node(n)["scalars"]  # None: default 1/sqrt(head size)
    assert g.node(g.inputs(n)[0])["dims"] == (0, 1, 0, 0)


def test_hand_written_tying(heads_grow):
    P = heads_grow.params
    assert set(P) == {"emb.weight", "qkv.weight", "proj.weight", "proj.bias"}
    emb = P["emb.weight"]
    assert emb.aliases == ["head.weight"]
    assert len(emb.nodes) == 2  # export gives each name its own placeholder
    assert emb.role == "input+output"
    assert emb.dims == (0, 1)  # vocab finite, width infinite
    assert [u.role for u in emb.uses] == ["input", "output"]
    assert use_of(emb, "linear").fan_in == (1,)
    assert emb.init_exp == 0  # nn.Embedding N(0, 1)
    assert emb.init_rms[64] == pytest.approx(1.0, rel=0.05)
    qkv = P["qkv.weight"]
    assert qkv.shapes[64] == (192, 64) and qkv.dims == (1, 1) and qkv.role == "hidden"
    assert qkv.init_exp == -HALF


# ============================================================================ mup package


def _mup():
    return pytest.importorskip("mup")


class MupNet(nn.Module):
    def __init__(self, n, d=D_IN, k=K_OUT):
        super().__init__()
        from mup import MuReadout
        self.inp = nn.Linear(d, n)
        self.hid = nn.Linear(n, n)
        self.out = MuReadout(n, k)

    def forward(self, x):
        return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))


def mup_factory(n):
    from mup import set_base_shapes
    model = MupNet(n)
    set_base_shapes(model, MupNet(64), delta=MupNet(128))
    return model


def test_mup_needs_strict_export_fallback():
    _mup()
    model = mup_factory(128)
    # non-strict export drops weight.infshape, so MuReadout.width_mult asserts: the tracer must
    # fall back to strict export for this model to trace at all
    with pytest.raises(AssertionError, match="set_base_shapes"):
        torch.export.export(model, X_MLP, strict=False)


@pytest.fixture(scope="module")
def mup_adam():
    mup = _mup()
    return tp.trace(mup_factory, MLP_WIDTHS, example_inputs=X_MLP,
                    make_optimizer=lambda m: mup.MuAdam(m.parameters(), lr=1e-3))


def test_mup_readout_multiplier_and_init(mup_adam):
    P = mup_adam.params
    assert P["out.weight"].mult_exp == -1  # x / width_mult
    assert P["out.weight"].role == "output"
    assert P["out.weight"].init_exp == 0  # U(1/sqrt(n)) * width_mult^1/2
    assert P["out.bias"].init_exp == 0
    assert P["hid.weight"].init_exp == -HALF
    assert P["hid.bias"].init_exp == 0  # rescale_linear_bias: * fanin_mult^1/2
    for name in ("inp.weight", "hid.weight", "out.bias"):
        assert P[name].mult_exp == 0


@pytest.mark.parametrize("name, lr_exp", [
    ("inp.weight", 0), ("inp.bias", 0), ("hid.weight", -1), ("hid.bias", 0),
    ("out.weight", 0), ("out.bias", 0)])
def test_mup_adam_lr(mup_adam, name, lr_exp):
    assert mup_adam.optimizer == "Adam"
    assert mup_adam.params[name].lr_exp == lr_exp


def test_mup_sgd_lr():
    mup = _mup()
    g = tp.trace(mup_factory, (64, 128), example_inputs=X_MLP, init_seeds=1,
                 make_optimizer=lambda m: mup.MuSGD(m.parameters(), lr=0.1))
    assert g.optimizer == "SGD"
    expected = {"inp.weight": 1, "inp.bias": 1, "hid.weight": 0, "hid.bias": 1,
                "out.weight": 1, "out.bias": 0}
    assert {k: p.lr_exp for k, p in g.params.items()} == expected
    assert g.params["inp.weight"].lr == pytest.approx({64: 0.1, 128: 0.2})


# ============================================================================ meta device


@pytest.fixture(scope="module")
def gpt2_meta():
    pytest.importorskip("transformers")
    return tp.trace(gpt2_factory, HF_WIDTHS, example_inputs=IDS, device="meta",
                    init_widths=(32, 64))


def test_meta_matches_cpu(gpt2, gpt2_meta):
    assert set(gpt2_meta.params) == set(gpt2.params)
    for name, p in gpt2.params.items():
        m = gpt2_meta.params[name]
        assert (m.dims, m.role, m.fan_in, m.fan_out, m.aliases) == \
            (p.dims, p.role, p.fan_in, p.fan_out, p.aliases), name
        assert m.mult_exp == p.mult_exp
        assert m.init_exp == p.init_exp, name
    for a, b in zip(sdpa_nodes(gpt2), sdpa_nodes(gpt2_meta)):
        assert gpt2_meta.node(b)["scalars"]["scale"]["exp"] == gpt2.node(a)["scalars"]["scale"]["exp"]


def test_meta_init_from_init_widths(gpt2_meta):
    wte = gpt2_meta.params["transformer.wte.weight"]
    assert set(wte.init_rms) == {32, 64}
    assert wte.init_rms[32] == pytest.approx(0.02, rel=0.05)
    assert set(wte.shapes) == set(HF_WIDTHS)


# ============================================================================ export


def test_to_json_round_trip(mlp, tmp_path):
    path = tmp_path / "g.json"
    text = mlp.to_json(str(path))
    assert path.read_text() == text
    d = json.loads(text)
    assert d["widths"] == list(MLP_WIDTHS)
    assert d["optimizer"] == "AdamW"
    assert len(d["nodes"]) == len(mlp.order)
    hid, out = d["params"]["hid.weight"], d["params"]["out.weight"]
    assert hid["dims"] == ["1", "1"] and hid["role"] == "hidden"
    assert hid["fan_in"] == [1] and hid["fan_out"] == [0]
    assert sp.Rational(hid["init_exp"]) == -HALF
    assert sp.Rational(hid["lr_exp"]) == -1
    assert out["mult_exp"] == "-1" and out["shape"] == [K_OUT, 256]
    assert d["params"]["out.weight"]["uses"][0]["op"] == "linear"
    assert set(hid["init_rms"]) == {"64", "128", "256"}
    for name, p in mlp.params.items():
        assert [sp.Rational(x) for x in d["params"][name]["dims"]] == list(p.dims)


def test_to_json_with_tying_and_zero(gpt2):
    d = json.loads(gpt2.to_json())
    assert d["params"]["transformer.wte.weight"]["role"] == "input+output"
    assert d["params"]["transformer.h.0.ln_1.bias"]["init_exp"] == "zero"
    assert d["params"]["transformer.h.0.ln_1.bias"]["lr_exp"] is None


def test_to_dot(mlp, tmp_path):
    text = mlp.to_dot(str(tmp_path / "g.dot"))
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    assert (tmp_path / "g.dot").read_text() == text
    for name in mlp.params:
        assert f'label="{name}\\n' in text
    assert text.count("->") == mlp.nx.number_of_edges()
    assert "shape=box" in text


# ============================================================================ bad input


def test_factory_not_callable():
    with pytest.raises(TraceError, match="callable") as e:
        tp.trace(42, (64, 128), example_inputs=X_MLP)
    assert "int" in str(e.value) and "lambda n" in str(e.value)


def test_factory_is_a_model_instance():
    with pytest.raises(TraceError, match="callable") as e:
        tp.trace(MLP(64), (64, 128), example_inputs=X_MLP)
    assert "MLP" in str(e.value) and "instance" in str(e.value)


def test_factory_raising():
    def bad(n):
        raise ValueError(f"hidden size {n} not supported by this block")

    with pytest.raises(TraceError) as e:
        tp.trace(bad, (64, 128), example_inputs=X_MLP)
    msg = str(e.value)
    assert "ValueError" in msg and "hidden size 64 not supported by this block" in msg
    assert "factory(64)" in msg
    assert isinstance(e.value.__cause__, ValueError)


def test_factory_returns_non_module():
    with pytest.raises(TraceError, match="not an nn.Module"):
        tp.trace(lambda n: (MLP(n), None), (64, 128), example_inputs=X_MLP)


@pytest.mark.parametrize("widths, message", [((64,), "at least two distinct positive widths"),
                                              ((64, 64), "repeated"),
                                              ((), "at least two distinct positive widths"),
                                              ((0, 64), "must be positive")])
def test_too_few_widths(widths, message):
    with pytest.raises(TraceError, match=message):
        tp.trace(MLP, widths, example_inputs=X_MLP)


class Fixed(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(D_IN, D_IN)  # ignores n

    def forward(self, x):
        return self.lin(x)


def test_widths_change_nothing():
    with pytest.raises(TraceError) as e:
        tp.trace(Fixed, (64, 128), example_inputs=X_MLP)
    msg = str(e.value)
    assert "no tensor" in msg and "changes size" in msg and "ignores its width" in msg


class Gate(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)

    def forward(self, h):
        if h.sum() > 0:  # data-dependent branch
            return self.lin(h)
        return h


class Branchy(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.inp = nn.Linear(D_IN, n)
        self.blocks = nn.Sequential(nn.ReLU(), Gate(n))
        self.out = nn.Linear(n, K_OUT)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


def test_data_dependent_control_flow():
    with pytest.raises(TraceError) as e:
        tp.trace(Branchy, (64, 128), example_inputs=X_MLP)
    msg = str(e.value)
    assert "data-dependent control flow" in msg
    assert "in module `blocks.1`" in msg  # the module path
    assert "torch.where" in msg or "torch.cond" in msg


class DeepWithWidth(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.inp = nn.Linear(D_IN, n)
        self.layers = nn.ModuleList(nn.Linear(n, n) for _ in range(n // 64))  # depth grows
        self.out = nn.Linear(n, K_OUT)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.out(h)


def test_structure_differs_between_widths():
    with pytest.raises(TraceError) as e:
        tp.trace(DeepWithWidth, (64, 128), example_inputs=X_MLP)
    msg = str(e.value)
    assert "differs between width 64 and width 128" in msg
    assert "must not depend on the width" in msg


def test_nan_in_initial_weights():
    def nan_factory(n):
        m = MLP(n)
        with torch.no_grad():
            m.hid.weight[0, 0] = float("nan")
        return m

    with pytest.raises(TraceError) as e:
        tp.trace(nan_factory, (64, 128), example_inputs=X_MLP)
    assert "'hid.weight'" in str(e.value) and "NaN" in str(e.value)
    # on meta the traced weights hold no values: the init models must catch it
    with pytest.raises(TraceError, match="'hid.weight'.*NaN"):
        tp.trace(nan_factory, (64, 128), example_inputs=X_MLP, device="meta")


def test_optimizer_missing_parameters():
    def partial(model):
        return torch.optim.SGD([p for k, p in model.named_parameters()
                                if k not in ("out.bias", "hid.bias")], lr=0.1)

    with pytest.raises(TraceError) as e:
        tp.trace(MLP, (64, 128), example_inputs=X_MLP, make_optimizer=partial)
    msg = str(e.value)
    assert "'hid.bias'" in msg and "'out.bias'" in msg and "'hid.weight'" not in msg
    assert "requires_grad=False" in msg


def test_optimizer_frozen_params_are_fine():
    def frozen(n):
        m = MLP(n)
        m.out.bias.requires_grad_(False)
        return m

    g = tp.trace(frozen, (64, 128), example_inputs=X_MLP, init_seeds=1,
                 make_optimizer=lambda m: torch.optim.SGD(
                     [p for p in m.parameters() if p.requires_grad], lr=0.1))
    assert not g.params["out.bias"].trainable
    assert g.params["out.bias"].lr_exp is None and g.params["out.weight"].lr_exp == 0


def test_optimizer_factory_errors():
    with pytest.raises(TraceError, match="make_optimizer.*ZeroDivisionError"):
        tp.trace(MLP, (64, 128), example_inputs=X_MLP, make_optimizer=lambda m: 1 / 0)
    with pytest.raises(TraceError, match="torch.optim.Optimizer"):
        tp.trace(MLP, (64, 128), example_inputs=X_MLP, make_optimizer=lambda m: "adam")


def test_example_inputs_missing():
    with pytest.raises(TraceError) as e:
        tp.trace(MLP, (64, 128))
    msg = str(e.value)
    assert "no example_inputs" in msg and "example_inputs=" in msg


def test_example_inputs_bad():
    with pytest.raises(TraceError, match="example_inputs.*ZeroDivisionError"):
        tp.trace(MLP, (64, 128), example_inputs=lambda n: 1 / 0)
    with pytest.raises(TraceError, match="tuple of tensors or a dict"):
        tp.trace(MLP, (64, 128), example_inputs=3)


def test_errors_share_one_base_class():
    assert issubclass(TraceError, TensorprogError)


def test_parameter_records_are_node_attributes_too():
    """WidthGraph.nx carries each parameter's record on its placeholder (networkx users)."""
    g = tp.trace(lambda n: nn.Sequential(nn.Linear(8, n), nn.Tanh(), nn.Linear(n, n), nn.Tanh(),
                                         nn.Linear(n, 3)),
                 (64, 128, 256), example_inputs=(torch.randn(4, 8),))
    node = g.nx.nodes[g.params["2.weight"].node]
    # nn.Linear(n, n): fan-in dim 1 (~n), fan-out dim 0; uniform(+-1/sqrt(n)) init -> n^-1/2
    assert node["role"] == "hidden" and node["fan_in"] == (1,) and node["fan_out"] == (0,)
    assert node["init_exp"] == sp.Rational(-1, 2) and node["fan_in_exp"] == 1
