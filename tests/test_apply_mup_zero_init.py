"""apply_mup(..., zero_init=("readout", "query")): TP5 (arXiv 2203.03466) App. D.2's zero readout
and zero query, at every width.

Expected values come from the models' own layouts, not from the code under test: the zoo GPT has
separate ``query`` / ``key`` / ``value`` Linears; HF GPT-2's ``c_attn`` is a Conv1D with weight
[n_embd, 3 n_embd] whose output is split into q | k | v along the last dim (q = columns
[0, n_embd)); the fused test model below lays its Linear(n, 3n) rows out per head as
[q_h | k_h | v_h] (q rows of head h: [3 h d, 3 h d + d)). Every other entry must equal, bit for
bit, the same model (same seed) built without zero_init.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tensorprog import analyze
from tensorprog.errors import TensorprogError
from tensorprog.transform.mup import apply_mup
from tensorprog.zoo import GPT

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

BASE = 32
W = (32, 64, 128)
VOCAB = 64
TOKENS = (torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0)),)


def _pair(factory, zero_init, width, x=TOKENS, widths=W, **kw):
    """The model at ``width`` built with and without zero_init from the same seed."""
    built = []
    for zi in ((), zero_init):
        mf, of = apply_mup(factory, BASE, example_inputs=x, widths=widths, lr=1e-2, zero_init=zi, **kw)
        torch.manual_seed(0)
        built.append((mf(width), mf, of))
    return built


def _same_except(a, b, zeroed):
    """Every parameter of a and b equal, except the names in ``zeroed`` (checked by the caller)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for n in pa:
        if n not in zeroed:
            assert torch.equal(pa[n], pb[n]), n


def _trains(model, of, x, logits=lambda out: out, steps=6):
    """Loss after ``steps`` Adam steps on a fixed batch is below the loss at init."""
    opt = of(model)
    target = torch.roll(x[0], 1, dims=1)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(logits(model(*x)).flatten(0, 1), target.flatten())
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.05, losses


# ============================================================================ zoo GPT


def test_zoo_gpt_readout_and_query_start_at_zero_and_train():
    factory = lambda n: GPT(n, param="sp", vocab_size=VOCAB, block_size=8)  # noqa: E731
    (plain, _, _), (model, mf, of) = _pair(factory, ("readout", "query"), 2 * BASE)
    zeroed = {"readout.weight"} | {f"blocks.{i}.attn.query.{k}" for i in (0, 1) for k in ("weight", "bias")}
    ps = dict(model.named_parameters())
    for n in zeroed:
        assert ps[n].count_nonzero() == 0, n
        assert dict(plain.named_parameters())[n].count_nonzero() > 0, n  # zero_init did it
    _same_except(plain, model, zeroed)
    assert torch.count_nonzero(model(*TOKENS)) == 0  # a zero readout: zero logits (TP5 App. D.2)
    # at the base width too (where the muP model otherwise equals the original)
    torch.manual_seed(1)
    base = mf(BASE)
    assert base.readout.weight.count_nonzero() == 0 and base.blocks[0].attn.query.weight.count_nonzero() == 0
    _trains(model, of, TOKENS)
    # the verdict is still muP with the zeroed weights read as exact zeros (b = oo), and it is
    # the verdict of the zoo's own muP GPT with readout_zero_init and query_zero_init (written
    # independently of apply_mup); both see the key's first update only after the query's, past
    # analyze's 3-step horizon (key r = oo there, so not every layer is maximal in either)
    rep = analyze(mf, W, example_inputs=TOKENS, make_optimizer=of)
    assert rep.parametrization == "muP" and rep.stable and rep.feature_learning, str(rep)
    from tensorprog.zoo import example
    ex = example("gpt", param="mup", widths=W, base_width=BASE, vocab_size=VOCAB, block_size=8,
                 readout_zero_init=True, query_zero_init=True)
    ref = analyze(ex.factory, W, example_inputs=TOKENS, make_optimizer=ex.make_optimizer)
    flags = ("parametrization", "stable", "nontrivial", "feature_learning", "every_layer_maximal")
    assert [getattr(rep, f) for f in flags] == [getattr(ref, f) for f in flags], (str(rep), str(ref))
    text = str(rep)
    row = next(line for line in text.splitlines() if line.strip().startswith("readout.weight"))
    assert row.split()[3:5] == ["0", "(exact)"]


def test_deeper_than_traced_blocks_start_at_zero_too():
    mf, _ = apply_mup(lambda n, d: GPT(n, param="sp", vocab_size=VOCAB, block_size=8, n_layer=d), BASE,
                      example_inputs=TOKENS, widths=W[:2], base_depth=2, zero_init=("query",))
    model = mf(2 * BASE, 4)  # blocks 2 and 3 were never traced
    for block in model.blocks:
        assert block.attn.query.weight.count_nonzero() == 0 and block.attn.query.bias.count_nonzero() == 0
        assert block.attn.key.weight.count_nonzero() > 0
    assert model.readout.weight.count_nonzero() > 0  # only what was asked


def test_tied_readout_is_refused():
    with pytest.raises(TensorprogError, match=r"tok_emb\.weight is the readout and is also used as "
                                              r"input .*tied.*would zero that use too"):
        apply_mup(lambda n: GPT(n, param="sp", vocab_size=VOCAB, block_size=8, tie=True), BASE,
                  example_inputs=TOKENS, widths=W[:2], zero_init=("readout",))


# ============================================================================ fused qkv


class FusedAttention(nn.Module):
    """One attention layer with a fused Linear(n, 3n): rows per head [q_h | k_h | v_h] ("heads")
    or [q | k | v] ("blocks"). ``share_qk``: the key is the query (q and k both from the q rows).
    ``rope``: q and k rotated as in RoFormer (arXiv 2104.09864): x cos + rotate_half(x) sin.
    ``q_op``: a function applied to q before the attention (paths that cannot be followed)."""

    def __init__(self, n, layout="blocks", share_qk=False, rope=False, n_head=2, q_op=None):
        super().__init__()
        self.q_op = q_op
        n_head = n // 16 if n_head == "grow" else n_head
        self.n, self.h, self.layout, self.share_qk, self.rope = n, n_head, layout, share_qk, rope
        self.emb = nn.Embedding(VOCAB, n)
        self.qkv = nn.Linear(n, 3 * n)
        self.out = nn.Linear(n, VOCAB)

    def forward(self, idx):
        x = self.emb(idx)
        B, T, n = x.shape
        d = n // self.h
        y = self.qkv(x)
        if self.layout == "heads":
            q, k, v = y.view(B, T, self.h, 3 * d).split(d, dim=-1)
        else:
            q, k, v = (t.view(B, T, self.h, d) for t in y.split(n, dim=-1))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.share_qk:
            k = q
        if self.rope:
            angle = torch.arange(T, dtype=q.dtype)[:, None] * torch.arange(d, dtype=q.dtype)[None]
            cos, sin = torch.cos(angle), torch.sin(angle)

            def rotate(t):
                return t * cos + torch.cat((-t[..., d // 2:], t[..., :d // 2]), dim=-1) * sin
            q, k = rotate(q), rotate(k)
        if self.q_op is not None:
            q = self.q_op(q)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(a.transpose(1, 2).reshape(B, T, n))


@pytest.mark.parametrize("layout,rope", [("blocks", False), ("heads", False), ("blocks", True)])
def test_fused_qkv_zeroes_only_the_query_rows(layout, rope):
    width = 48  # not a traced width: the rows extend from the traced ones (d = 24 per head)
    (plain, _, _), (model, mf, of) = _pair(lambda n: FusedAttention(n, layout, rope=rope),
                                           ("readout", "query"), width)
    d = width // 2
    q_rows = (list(range(0, width)) if layout == "blocks"
              else [r for h in range(2) for r in range(3 * h * d, 3 * h * d + d)])
    other = [r for r in range(3 * width) if r not in q_rows]
    for name in ("weight", "bias"):
        z, p = getattr(model.qkv, name), getattr(plain.qkv, name)
        assert z[q_rows].count_nonzero() == 0 and p[q_rows].count_nonzero() > 0
        assert torch.equal(z[other], p[other])
    assert model.out.weight.count_nonzero() == 0 and model.out.bias.count_nonzero() == 0
    _same_except(plain, model, {"qkv.weight", "qkv.bias", "out.weight", "out.bias"})
    _trains(model, of, TOKENS)


def test_hf_gpt2_fused_c_attn():
    transformers = pytest.importorskip("transformers")

    def factory(n):
        c = transformers.GPT2Config(n_embd=n, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=8,
                                    use_cache=False, tie_word_embeddings=False)
        c._attn_implementation = "sdpa"
        return transformers.GPT2LMHeadModel(c)

    width = 48
    (plain, _, _), (model, mf, of) = _pair(factory, ("readout", "query"), width, widths=(16, 32, 64))
    za, pa = model.transformer.h[0].attn.c_attn, plain.transformer.h[0].attn.c_attn
    assert za.weight.shape == (width, 3 * width)  # Conv1D: [in, 3 out], q | k | v columns
    assert za.weight[:, :width].count_nonzero() == 0 and za.bias[:width].count_nonzero() == 0
    assert pa.weight[:, :width].count_nonzero() > 0
    assert torch.equal(za.weight[:, width:], pa.weight[:, width:])
    assert torch.equal(za.bias[width:], pa.bias[width:])
    assert model.lm_head.weight.count_nonzero() == 0
    _same_except(plain, model, {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
                                "lm_head.weight"})
    model.eval()  # no dropout: a fixed batch
    _trains(model, of, TOKENS, logits=lambda out: out.logits)


class ExplicitAttention(nn.Module):
    """Hand-written single-head attention softmax(q k^T / n) v from a fused Linear(n, 3n) [q|k|v]."""

    def __init__(self, n):
        super().__init__()
        self.emb, self.qkv, self.out = nn.Embedding(VOCAB, n), nn.Linear(n, 3 * n), nn.Linear(n, VOCAB)

    def forward(self, idx):
        x = self.emb(idx)
        q, k, v = self.qkv(x).split(x.shape[-1], dim=-1)
        return self.out(torch.softmax((q @ k.transpose(-2, -1)) / x.shape[-1], dim=-1) @ v)


def test_explicit_q_at_k_attention():
    (plain, _, _), (model, _, _) = _pair(ExplicitAttention, ("query",), 48)
    for name in ("weight", "bias"):
        z, p = getattr(model.qkv, name), getattr(plain.qkv, name)
        assert z[:48].count_nonzero() == 0 and p[:48].count_nonzero() > 0
        assert torch.equal(z[48:], p[48:])
    _same_except(plain, model, {"qkv.weight", "qkv.bias"})


def test_hf_llama_query_through_rope_and_gqa():
    transformers = pytest.importorskip("transformers")

    def factory(n):
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=n, intermediate_size=2 * n, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=8, use_cache=False))

    (plain, _, _), (model, _, _) = _pair(factory, ("readout", "query"), 96, widths=(32, 64))
    att = model.model.layers[0].self_attn
    assert att.q_proj.weight.count_nonzero() == 0 and model.lm_head.weight.count_nonzero() == 0
    _same_except(plain, model, {"model.layers.0.self_attn.q_proj.weight", "lm_head.weight"})


# ============================================================================ errors


@pytest.mark.parametrize("bad", ["readout", ("readout", "keys"), None, {"readout"}])
def test_bad_zero_init_values(bad):
    with pytest.raises(TensorprogError, match=r"readout.*query"):
        apply_mup(lambda n: FusedAttention(n), BASE, example_inputs=TOKENS, widths=W[:2], zero_init=bad)


def test_query_without_attention():
    class MLP(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.a, self.b = nn.Linear(4, n), nn.Linear(n, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    x = (torch.randn(2, 4),)
    with pytest.raises(TensorprogError, match="no attention call"):
        apply_mup(MLP, BASE, example_inputs=x, widths=W[:2], zero_init=("query",))
    mf, _ = apply_mup(MLP, BASE, example_inputs=x, widths=W[:2], zero_init=("readout",))
    m = mf(64)  # the readout's bias too; nothing else
    assert m.b.weight.count_nonzero() == 0 and m.b.bias.count_nonzero() == 0
    assert m.a.weight.count_nonzero() > 0 and m.a.bias.count_nonzero() > 0

    def frozen(n):
        m = MLP(n)
        m.b.weight.requires_grad_(False)
        return m
    with pytest.raises(TensorprogError, match=r"b\.weight is frozen.*stay zero"):
        apply_mup(frozen, BASE, example_inputs=x, widths=W[:2], zero_init=("readout",))


@pytest.mark.parametrize("kw,match", [
    ({"share_qk": True}, r"also read by `scaled_dot_product_attention`.*argument 1"),
    ({"layout": "heads", "n_head": "grow"}, r"form \{32: 2, 64: 4\} index ranges at the traced widths"),
    ({"q_op": lambda q: q + 1.0},
     r"query of attention `scaled_dot_product_attention` .* comes from `add`.*not supported"),
    ({"q_op": lambda q: F.layer_norm(q, q.shape[-1:])}, r"comes from `layer_norm`.*not supported"),
    ({"q_op": lambda q: q + torch.ones_like(q)}, r"comes from `ones_like`.*not supported"),
])
def test_query_path_that_cannot_be_followed(kw, match):
    with pytest.raises(TensorprogError, match=match):
        apply_mup(lambda n: FusedAttention(n, **kw), BASE, example_inputs=TOKENS, widths=W[:2],
                  zero_init=("query",))


# ============================================================================ generated code, CLI


def test_to_pytorch_zero_init_matches_the_layout():
    from tensorprog import rules

    r = rules(lambda n: FusedAttention(n, "heads"), W, example_inputs=TOKENS, base_width=BASE)
    assert "mup_zero_init_" not in r.to_pytorch()
    ns: dict = {}
    exec(r.to_pytorch(zero_init=("readout", "query")), ns)
    width, d = 48, 24
    torch.manual_seed(0)
    model = FusedAttention(width, "heads")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ns["mup_zero_init_"](model, width)
    q_rows = [r for h in range(2) for r in range(3 * h * d, 3 * h * d + d)]
    other = [r for r in range(3 * width) if r not in q_rows]
    for name in ("weight", "bias"):
        p = getattr(model.qkv, name)
        assert p[q_rows].count_nonzero() == 0 and torch.equal(p[other], before[f"qkv.{name}"][other])
    assert model.out.weight.count_nonzero() == 0 and torch.equal(model.emb.weight, before["emb.weight"])
    with pytest.raises(AssertionError, match="not whole"):  # width 47: d_head 23.5
        ns["mup_zero_init_"](model, 47)


def test_cli_rules_zero_init(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "tensorprog", "rules", "--example", "gpt", "--param", "sp",
           "--widths", "32", "64"]
    out = subprocess.run(cmd + ["--pytorch", str(tmp_path / "r.py"), "--zero-init", "readout", "query"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    code = (tmp_path / "r.py").read_text()
    assert "def mup_zero_init_" in code and "'readout.weight').zero_()" in code
    body = code.split("def mup_zero_init_")[1].split("\ndef ")[0]
    assert "'blocks.1.attn.query.weight').narrow(0" in body and "key.weight" not in body
    bad = subprocess.run(cmd + ["--zero-init", "readout"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--pytorch" in bad.stderr
