"""Tests for tensorprog.zoo: the built-in SP / NTK / muP models.

Expected values come from the init and LR formulas (TP4 §2, TP5 Tables 3 and 8, and PyTorch's documented
defaults), written out here, never from the code under test.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from tensorprog import zoo
from tensorprog.zoo import CNN, EXAMPLES, GPT, MLP, OPTIMIZERS, PARAMS, example, make_optimizer

warnings.filterwarnings("ignore", category=FutureWarning)

BASE = 64
# PyTorch's nn.Linear / nn.Conv2d default init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
def sp_std(fan_in):
    return 1.0 / math.sqrt(3 * fan_in)


def std(t):
    return t.detach().float().std().item()


def rel(a, b):
    return abs(a - b) / abs(b)


def lr_of(opt):
    """Parameter object id -> learning rate of its group (each param must be in exactly one)."""
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            assert id(p) not in out, "parameter in two optimizer groups"
            out[id(p)] = group["lr"]
    return out


# ---------------------------------------------------------------- every example runs and exports

@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains_and_exports(name, param):
    ex = example(name, param=param, optimizer=OPTIMIZERS[PARAMS.index(param) % 3])
    assert ex.name == f"{name}-{param}" and ex.param == param and ex.base_width == BASE
    graphs = []
    for width in (64, 128):
        torch.manual_seed(0)
        model = ex.factory(width)
        inputs = ex.example_inputs(width)
        out = model(*inputs)
        loss = ex.loss(out, inputs)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        before = [p.detach().clone() for p in model.parameters()]
        ex.make_optimizer(model).step()
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        ep = torch.export.export(model, inputs, strict=False)
        assert torch.allclose(ep.module()(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)
        graphs.append([str(n.target) for n in ep.graph.nodes if n.op == "call_function"])
    # same op sequence at both widths (multipliers are emitted at the base width too)
    assert graphs[0] == graphs[1]


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_all_optimizers_step(kind):
    ex = example("mlp", "mup", kind)
    model = ex.factory(128)
    x = ex.example_inputs(128)
    ex.loss(model(*x), x).backward()
    opt = ex.make_optimizer(model)
    assert type(opt) is {"adam": torch.optim.Adam, "sgd": torch.optim.SGD,
                         "adamw": torch.optim.AdamW}[kind]
    opt.step()


def test_example_inputs_do_not_depend_on_width_and_are_small():
    for name in EXAMPLES:
        ex = example(name)
        a, b = ex.example_inputs(64), ex.example_inputs(256)
        assert len(a) == len(b) == 1
        assert torch.equal(a[0], b[0])
        assert 4 <= a[0].shape[0] <= 8
    assert example("mlp").example_inputs(64)[0].shape == (8, 32)
    assert example("cnn").example_inputs(64)[0].shape == (4, 3, 8, 8)
    tokens = example("gpt").example_inputs(64)[0]
    assert tokens.shape == (4, 16) and tokens.dtype == torch.long and int(tokens.max()) < 64


def test_loss_targets_fixed():
    ex = example("mlp")
    out = torch.zeros(8, 10)
    assert ex.loss(out, ()) == ex.loss(out, ())
    gpt = example("gpt")
    idx = gpt.example_inputs(64)
    uniform = torch.zeros(4, 16, 64)
    assert math.isclose(gpt.loss(uniform, idx).item(), math.log(64), rel_tol=1e-6)


# ---------------------------------------------------------------- init distributions

def test_mlp_sp_init():
    torch.manual_seed(0)
    m = MLP(256, param="sp")
    assert len(m.hidden) == 2  # depth 3 = input + 2 hidden + readout
    assert rel(std(m.input.weight), sp_std(32)) < 0.05
    assert rel(std(m.hidden[0].weight), sp_std(256)) < 0.03
    assert m.hidden[0].weight.abs().max() <= 1 / math.sqrt(256)
    assert rel(std(m.readout.weight), sp_std(256)) < 0.05
    assert all(l.multiplier is None for l in (m.input, m.readout, *m.hidden))


def test_mlp_mup_init():
    torch.manual_seed(0)
    width = 512
    m = MLP(width, param="mup")
    assert rel(std(m.input.weight), sp_std(32)) < 0.05
    assert rel(std(m.hidden[0].weight), sp_std(width)) < 0.03
    # readout std = SP std * sqrt(base / width)
    assert rel(std(m.readout.weight), sp_std(width) * math.sqrt(BASE / width)) < 0.05
    assert m.readout.multiplier is None


def test_mlp_mup_table8_init():
    torch.manual_seed(0)
    width = 512
    m = MLP(width, param="mup_table8")
    # readout: variance held at its base-width SP value, forward multiplier base / width
    assert rel(std(m.readout.weight), sp_std(BASE)) < 0.05
    assert m.readout.multiplier == pytest.approx(BASE / width)
    assert m.hidden[0].multiplier is None and m.input.multiplier is None
    h = torch.randn(3, width)
    expected = (h @ m.readout.weight.T) * (BASE / width) + m.readout.bias
    assert torch.allclose(m.readout(h), expected, atol=1e-6)


def test_mlp_ntk_init():
    torch.manual_seed(0)
    width = 256
    m = MLP(width, param="ntk")
    for layer in (m.input, m.hidden[0], m.readout):
        assert rel(std(layer.weight), 1.0) < 0.05
        assert abs(layer.weight.mean().item()) < 0.1
    assert rel(std(m.hidden[0].bias), 1.0) < 0.2
    assert m.input.multiplier == pytest.approx(1 / math.sqrt(32))
    assert m.hidden[0].multiplier == pytest.approx(1 / math.sqrt(width))
    assert m.readout.multiplier == pytest.approx(1 / math.sqrt(width))
    h = torch.randn(3, width)
    expected = h @ m.hidden[0].weight.T / math.sqrt(width) + m.hidden[0].bias
    assert torch.allclose(m.hidden[0](h), expected, atol=1e-5)


def test_readout_zero_init():
    for param in ("mup", "mup_table8"):
        m = MLP(128, param=param, readout_zero_init=True)
        assert torch.all(m.readout.weight == 0) and torch.all(m.readout.bias == 0)
        assert std(m.hidden[0].weight) > 0
    g = GPT(128, param="mup", readout_zero_init=True)
    assert torch.all(g.readout.weight == 0)


def test_cnn_init():
    torch.manual_seed(0)
    width = 256
    sp, mup, ntk = (CNN(width, param=p) for p in ("sp", "mup", "ntk"))
    assert rel(std(sp.conv1.weight), sp_std(3 * 9)) < 0.05
    assert rel(std(sp.conv2.weight), sp_std(9 * width)) < 0.03
    assert rel(std(mup.conv3.weight), sp_std(9 * width)) < 0.03
    assert rel(std(mup.readout.weight), sp_std(width) * math.sqrt(BASE / width)) < 0.07
    assert rel(std(ntk.conv2.weight), 1.0) < 0.03
    assert ntk.conv1.multiplier == pytest.approx(1 / math.sqrt(27))
    assert ntk.conv2.multiplier == pytest.approx(1 / math.sqrt(9 * width))
    assert sp.norm1.num_groups == 4 and CNN(128).norm1.num_groups == 4
    assert torch.all(sp.norm2.weight == 1) and torch.all(sp.norm1.bias == 0)
    x = torch.randn(2, width, 4, 4)
    expected = F.conv2d(x, ntk.conv2.weight, padding=1) / math.sqrt(9 * width) \
        + ntk.conv2.bias.view(1, -1, 1, 1)
    assert torch.allclose(ntk.conv2(x), expected, atol=1e-4)


def test_gpt_init():
    torch.manual_seed(0)
    width = 256
    sp, mup = GPT(width, param="sp"), GPT(width, param="mup")
    for m in (sp, mup):
        assert rel(std(m.tok_emb.weight), 1.0) < 0.05      # nn.Embedding: N(0, 1)
        assert rel(std(m.pos_emb.weight), 1.0) < 0.07
        assert torch.all(m.ln_f.weight == 1) and torch.all(m.ln_f.bias == 0)
        assert rel(std(m.blocks[0].attn.query.weight), sp_std(width)) < 0.03
        assert rel(std(m.blocks[0].mlp.proj.weight), sp_std(4 * width)) < 0.03
    assert rel(std(sp.readout.weight), sp_std(width)) < 0.05
    assert rel(std(mup.readout.weight), sp_std(width) * math.sqrt(BASE / width)) < 0.05
    assert sp.readout.bias is None
    ntk = GPT(width, param="ntk")
    assert rel(std(ntk.blocks[0].mlp.proj.weight), 1.0) < 0.03
    assert ntk.blocks[0].mlp.proj.multiplier == pytest.approx(1 / math.sqrt(4 * width))
    assert ntk.readout.multiplier == pytest.approx(1 / math.sqrt(width))


def test_query_zero_init():
    g = GPT(128, param="mup", query_zero_init=True)
    for block in g.blocks:
        assert torch.all(block.attn.query.weight == 0) and torch.all(block.attn.query.bias == 0)
        assert std(block.attn.key.weight) > 0
    assert std(GPT(128, param="mup").blocks[0].attn.query.weight) > 0


@pytest.mark.parametrize("name", EXAMPLES)
def test_mup_equals_sp_at_base_width(name):
    outs, params = {}, {}
    for param in ("sp", "mup", "mup_table8"):
        ex = example(name, param)
        torch.manual_seed(123)
        model = ex.factory(BASE)
        outs[param] = model(*ex.example_inputs(BASE))
        params[param] = [p.detach() for p in model.parameters()]
        opt = ex.make_optimizer(model)
        assert all(g["lr"] == pytest.approx(zoo.DEFAULT_LR["adam"]) for g in opt.param_groups)
    for param in ("mup", "mup_table8"):
        assert torch.allclose(outs["sp"], outs[param], rtol=1e-6, atol=1e-7)
        assert all(torch.equal(a, b) for a, b in zip(params["sp"], params[param]))
    # ...and they differ away from the base width
    torch.manual_seed(123)
    a = example(name, "sp").factory(2 * BASE)
    torch.manual_seed(123)
    b = example(name, "mup").factory(2 * BASE)
    assert torch.allclose(b.readout.weight, a.readout.weight / math.sqrt(2))


# ---------------------------------------------------------------- learning rates

def test_sp_and_ntk_one_global_lr():
    for param in ("sp", "ntk"):
        for kind in OPTIMIZERS:
            m = MLP(256, param=param)
            opt = make_optimizer(m, kind, lr=0.1)
            assert len(opt.param_groups) == 1
            assert opt.param_groups[0]["lr"] == 0.1
            assert len(opt.param_groups[0]["params"]) == len(list(m.parameters()))


@pytest.mark.parametrize("param", ["mup", "mup_table8"])
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_mlp_mup_lrs(param, kind):
    width, lr = 256, 0.01
    m = MLP(width, param=param)
    opt = make_optimizer(m, kind, lr=lr)
    lrs = lr_of(opt)
    assert len(lrs) == len(list(m.parameters()))
    mult = width / BASE  # 4
    named = dict(m.named_parameters())
    if kind == "sgd":
        expected = {"input.weight": lr * mult, "input.bias": lr * mult,
                    "hidden.0.weight": lr, "hidden.0.bias": lr * mult,
                    "readout.weight": lr / mult if param == "mup" else lr * mult,
                    "readout.bias": lr}
    else:
        expected = {"input.weight": lr, "input.bias": lr,
                    "hidden.0.weight": lr / mult, "hidden.1.weight": lr / mult,
                    "hidden.0.bias": lr,
                    "readout.weight": lr / mult if param == "mup" else lr,
                    "readout.bias": lr}
    for name, value in expected.items():
        assert lrs[id(named[name])] == pytest.approx(value), name
    if kind == "adamw":
        assert {g["weight_decay"] for g in opt.param_groups} == {zoo.DEFAULT_WEIGHT_DECAY}


def test_gpt_and_cnn_mup_adam_lrs():
    lr = 1e-3
    g = GPT(256, param="mup")
    lrs, named = lr_of(make_optimizer(g, "adam", lr=lr)), dict(g.named_parameters())
    assert len(lrs) == len(named)
    for name in ("blocks.0.attn.query.weight", "blocks.1.attn.proj.weight",
                 "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight", "readout.weight"):
        assert lrs[id(named[name])] == pytest.approx(lr / 4), name
    for name in ("tok_emb.weight", "pos_emb.weight", "ln_f.weight", "blocks.0.ln1.bias",
                 "blocks.0.attn.query.bias", "blocks.0.mlp.fc.bias"):
        assert lrs[id(named[name])] == pytest.approx(lr), name
    c = CNN(256, param="mup")
    lrs, named = lr_of(make_optimizer(c, "sgd", lr=lr)), dict(c.named_parameters())
    assert lrs[id(named["conv1.weight"])] == pytest.approx(4 * lr)
    assert lrs[id(named["conv2.weight"])] == pytest.approx(lr)
    assert lrs[id(named["norm1.weight"])] == pytest.approx(4 * lr)
    assert lrs[id(named["norm2.bias"])] == pytest.approx(4 * lr)
    assert lrs[id(named["readout.weight"])] == pytest.approx(lr / 4)


def test_param_roles():
    assert MLP(64).param_roles() == {
        "input.weight": "input", "input.bias": "vector",
        "hidden.0.weight": "hidden", "hidden.0.bias": "vector",
        "hidden.1.weight": "hidden", "hidden.1.bias": "vector",
        "readout.weight": "readout", "readout.bias": "scalar"}
    for m in (CNN(64), GPT(64), GPT(64, tie=True)):
        assert list(m.param_roles()) == [n for n, _ in m.named_parameters()]


# ---------------------------------------------------------------- attention

def _captured_scales(model, monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model(example("gpt").example_inputs(model.width)[0])
    return seen


@pytest.mark.parametrize("width", [64, 256])
def test_attention_scale(width, monkeypatch):
    d_head = width // 4
    for param in ("sp", "ntk"):
        m = GPT(width, param=param)
        assert _captured_scales(m, monkeypatch) == [None, None]  # SDPA default 1/sqrt(d_head)
        assert m.blocks[0].attn.effective_scale == pytest.approx(1 / math.sqrt(d_head))
    for param in ("mup", "mup_table8"):
        m = GPT(width, param=param)
        expected = (1 / math.sqrt(16)) * (16 / d_head)  # base d_head = 64 / 4 = 16
        assert _captured_scales(m, monkeypatch) == pytest.approx([expected, expected])
        assert m.blocks[1].attn.scale == pytest.approx(expected)
    assert GPT(256, param="mup").blocks[0].attn.scale == pytest.approx(1 / 16)


def test_attention_scale_in_exported_graph():
    ex = example("gpt", "mup")
    ep = torch.export.export(ex.factory(256), ex.example_inputs(256), strict=False)
    scales = [n.kwargs.get("scale") for n in ep.graph.nodes
              if n.target == torch.ops.aten.scaled_dot_product_attention.default]
    assert scales == pytest.approx([1 / 16, 1 / 16])


def test_grow_heads(monkeypatch):
    for width in (64, 128, 256):
        m = GPT(width, param="mup", grow="heads")
        attn = m.blocks[0].attn
        assert attn.d_head == 16 and attn.n_head == width // 16
        assert _captured_scales(m, monkeypatch) == pytest.approx([0.25, 0.25])
        d = GPT(width, param="mup")
        assert d.blocks[0].attn.n_head == 4 and d.blocks[0].attn.d_head == width // 4
    ex = example("gpt", "mup", grow="heads")
    x = ex.example_inputs(128)
    assert ex.factory(128)(*x).shape == (4, 16, 64)


# ---------------------------------------------------------------- weight tying

@pytest.mark.parametrize("param", PARAMS)
def test_tie(param):
    width = 128
    m = GPT(width, param=param, tie=True)
    assert m.readout.weight is m.tok_emb.weight
    assert len(list(m.parameters())) == len(list(GPT(width, param=param).parameters())) - 1
    expected_mult = {"sp": None, "ntk": 1 / math.sqrt(width),
                     "mup": BASE / width, "mup_table8": BASE / width}[param]
    if expected_mult is None:
        assert m.readout.multiplier is None
    else:
        assert m.readout.multiplier == pytest.approx(expected_mult)
    ex = example("gpt", param, "sgd", tie=True)
    x = ex.example_inputs(width)
    m = ex.factory(width)
    opt = ex.make_optimizer(m)
    lr = lr_of(opt)[id(m.tok_emb.weight)]
    assert lr == pytest.approx(zoo.DEFAULT_LR["sgd"] * (width / BASE if param.startswith("mup") else 1))
    ex.loss(m(*x), x).backward()
    opt.step()
    assert m.readout.weight is m.tok_emb.weight
    torch.export.export(m, x, strict=False)


# ---------------------------------------------------------------- meta device

@pytest.mark.parametrize("name", EXAMPLES)
def test_builds_on_meta(name):
    for param in PARAMS:
        ex = example(name, param)
        with torch.device("meta"):
            m = ex.factory(256)
        assert all(p.is_meta for p in m.parameters())
        out = m(*(t.to("meta") for t in ex.example_inputs(256)))
        assert out.is_meta
        ex.make_optimizer(m)
    with torch.device("meta"):
        GPT(128, param="mup", tie=True, query_zero_init=True)
        MLP(128, param="mup_table8", readout_zero_init=True)


# ---------------------------------------------------------------- bad input

def test_bad_names_raise():
    with pytest.raises(ValueError, match="mlp, cnn, gpt"):
        example("resnet")
    with pytest.raises(ValueError, match="mup_table8"):
        example("mlp", param="mean_field")
    with pytest.raises(ValueError, match="adamw"):
        example("mlp", optimizer="lion")
    with pytest.raises(ValueError, match="depth"):
        example("mlp", dept=4)
    with pytest.raises(ValueError, match="tanh"):
        MLP(64, nonlinearity="swish")
    with pytest.raises(ValueError, match="ntk"):
        GPT(64, param="NTK")
    with pytest.raises(ValueError, match="heads"):
        GPT(64, grow="depth")
    with pytest.raises(ValueError):
        GPT(66)  # not a multiple of n_head
    with pytest.raises(ValueError):
        GPT(72, grow="heads")  # not a multiple of d_head
    with pytest.raises(ValueError):
        MLP(64, param="sp", readout_zero_init=True)
    with pytest.raises(ValueError):
        GPT(64, param="ntk", query_zero_init=True)
    with pytest.raises(ValueError, match="sgd"):
        make_optimizer(MLP(64), "rmsprop")
