"""Depth: the zoo's residual networks named right in depth (TP6, arXiv 2310.02244; CompleteP,
arXiv 2505.01618), their depth exponents measured at depths up to 32, and the clear errors.

Expected exponents come from the papers, not from the code under test: the branch multiplier
L^-alpha with alpha = 0 / 1/2 / 1 (standard / Depth-muP / CompleteP), the Adam learning rate
L^{alpha - 1} (TP6: eta / sqrt(L); CompleteP Table 1: no depth factor), the SGD learning rate
constant at alpha = 1/2 (TP6), and the closed forms at init for pre-norm branches: branch outputs
~ L^-alpha, stream ~ L^{max(0, 1/2 - alpha)} (variance 1 + L * L^-2alpha).
"""
import pytest
import sympy as sp
import torch

from tensorprog.errors import CheckError, TraceError
from tensorprog.measure.depth import check_depth
from tensorprog.predict.depth import analyze_depth, depth_rules
from tensorprog.zoo import MLP, ResidualMLP, depth_example

HALF = sp.Rational(1, 2)
PAPER_ALPHA = {"standard": sp.Integer(0), "depth_mup": HALF, "completep": sp.Integer(1)}
FAMILY = {"standard": "standard", "depth_mup": "depth_mup", "completep": "completep"}


def _analyze(ex, depths=(2, 4), width=16):
    return analyze_depth(ex.factory, depths, width=width, example_inputs=ex.example_inputs,
                         make_optimizer=ex.make_optimizer)


@pytest.mark.parametrize("name", ["resmlp", "gpt"])
@pytest.mark.parametrize("form", ["standard", "depth_mup", "completep"])
def test_zoo_named_right_in_depth(name, form):
    rep = _analyze(depth_example(name, form))
    alpha = PAPER_ALPHA[form]
    assert rep.applies and rep.family == FAMILY[form]
    assert rep.optimizer == "adam"
    for v in rep.kinds.values():
        assert v.alpha == alpha
        # the zoo's Adam LR is L^{alpha - 1} in Depth-muP / CompleteP, constant in standard
        assert v.gamma == (1 - alpha if form != "standard" else 0)
    assert rep.stable_init is bool(alpha >= HALF)
    assert rep.stable_train is (form != "standard")
    assert rep.nontrivial is True
    assert len(rep.kinds) == (2 if name == "gpt" else 1)  # attention and MLP branches
    if form == "standard":
        assert rep.fix, "a standard residual network gets a fix"
        assert rep.stream_init_exp == HALF  # pre-norm branches: |h| ~ L^{1/2}
    else:
        assert not rep.fix and rep.stream_init_exp == 0
    assert "depth" in str(rep)


@pytest.mark.parametrize("form", ["depth_mup", "completep"])
def test_sgd_gamma_carries_the_multiplier(form):
    """SGD's step is the gradient, which carries the branch multiplier: gamma = alpha + c; TP6's
    Depth-muP SGD learning rate is constant in depth."""
    rep = _analyze(depth_example("resmlp", form, optimizer="sgd"))
    (v,) = rep.kinds.values()
    assert v.alpha + v.gamma == 1
    if form == "depth_mup":
        assert v.lr_exp == 0
    assert v.eps_scaled is None  # no eps in SGD


def test_standard_sgd_fix_names_the_learning_rate():
    rep = analyze_depth(depth_example("resmlp", "standard", optimizer="sgd").factory, (2, 4),
                        width=16, example_inputs=depth_example("resmlp").example_inputs,
                        make_optimizer=depth_example("resmlp", optimizer="sgd").make_optimizer,
                        family="depth_mup")
    assert any("multiplier (L/L0)^-1/2" in f for f in rep.fix)
    assert not any("learning rate" in f for f in rep.fix)  # Depth-muP SGD: LR constant (TP6)


def test_depth_rules_from_the_papers():
    tp6 = depth_rules("depth_mup", base_depth=4, optimizer="adam")
    assert (tp6.mult_exp, tp6.lr_exp) == (-HALF, -HALF)  # 1/sqrt(L), eta/sqrt(L)
    cp = depth_rules("completep", base_depth=4, optimizer="adam")
    assert (cp.mult_exp, cp.lr_exp, cp.eps_exp) == (-1, 0, -1)  # CompleteP Table 1
    assert depth_rules("depth_mup", optimizer="sgd").lr_exp == 0  # TP6: SGD LR constant
    f = cp.at(16)
    assert f["branch_multiplier"] == pytest.approx(0.25) and f["lr"] == 1
    assert f["eps"] == pytest.approx(0.25)
    assert tp6.at(4) == {"branch_multiplier": 1.0, "lr": 1.0, "eps": 1.0}
    with pytest.raises(TraceError, match="unknown depth family"):
        depth_rules("sp")


def test_standard_stream_variance_grows_linearly_in_depth():
    """Closed form, measured directly (no tensorprog code): pre-norm branches are independent
    of the stream and of one another at init, so E|x_L|^2 - E|x_0|^2 = L E|g|^2: linear in L;
    with a 1/sqrt(L) multiplier it stays bounded."""
    def increment(form, depth, seeds=6):
        out = []
        for s in range(seeds):
            torch.manual_seed(s)
            m = ResidualMLP(128, depth=depth, depth_param=form, base_depth=1)
            x = torch.randn(64, 16, generator=torch.Generator().manual_seed(100 + s))
            with torch.no_grad():
                h0 = m.input(x)
                h = h0
                for b in m.blocks:
                    h = h + (1 if m.branch_multiplier is None else m.branch_multiplier) * b(h)
            out.append((h.pow(2).mean() - h0.pow(2).mean()).item())
        return sum(out) / len(out)
    std = {L: increment("standard", L) for L in (4, 16)}
    assert std[16] / std[4] == pytest.approx(4, rel=0.2)
    dmup = {L: increment("depth_mup", L) for L in (4, 16)}
    assert dmup[16] / dmup[4] == pytest.approx(1, rel=0.2)


@pytest.mark.parametrize("form", ["standard", "depth_mup", "completep"])
def test_check_confirms_resmlp_depth_exponents_up_to_32(form):
    ex = depth_example("resmlp", form)
    c = check_depth(ex.factory, (2, 4, 8, 16, 32), width=16, example_inputs=ex.example_inputs,
                    make_optimizer=ex.make_optimizer, loss=ex.loss, steps=1, seeds=2)
    assert c.verdict == "confirmed", str(c)
    alpha = float(PAPER_ALPHA[form])
    block = c.get("blocks.*.linear", "size")
    assert block.slope == pytest.approx(-alpha, abs=0.15)  # branch output ~ L^-alpha
    stream = c.get("stream", "size")
    if form == "standard":
        assert stream.slope > 0.2  # growing towards L^{1/2}
    else:
        assert abs(stream.slope) < 0.15


@pytest.mark.slow
@pytest.mark.parametrize("form", ["standard", "depth_mup", "completep"])
def test_check_gpt_depth_exponents_up_to_32(form):
    """~12 s each: three exports of GPTs of up to 32 blocks (64 branches) plus two steps."""
    ex = depth_example("gpt", form)
    c = check_depth(ex.factory, (2, 8, 32), width=16, example_inputs=ex.example_inputs,
                    make_optimizer=ex.make_optimizer, loss=ex.loss, steps=1, seeds=2)
    alpha = float(PAPER_ALPHA[form])
    for kind in ("blocks.*.attn.proj", "blocks.*.mlp.proj"):
        r = c.get(kind, "size")
        assert r.status == "confirmed" and r.slope == pytest.approx(-alpha, abs=0.15)
    if form == "standard":
        # the N(0, 1) embeddings dominate the stream up to depth 32: only its growth in
        # training (L^{1 - alpha - gamma} = L) is testable here
        assert c.get("stream", "change").status == "confirmed"
        assert c.get("stream", "change").slope > 0.5
    else:
        assert c.verdict == "confirmed", str(c)


def test_block_count_growing_with_width_is_a_clear_error():
    ex = depth_example("resmlp")
    with pytest.raises(TraceError, match="block count grows with its width"):
        analyze_depth(lambda n, L: ResidualMLP(n, depth=L * n // 16), (2, 4), width=16,
                      example_inputs=ex.example_inputs)


def test_no_residual_branches_depth_does_not_apply():
    ex = depth_example("resmlp")
    rep = analyze_depth(lambda n, L: MLP(n, depth=L, d_in=16), (2, 4), width=16,
                        example_inputs=ex.example_inputs)
    assert not rep.applies and "does not apply" in str(rep)
    with pytest.raises(CheckError, match="does not apply"):
        check_depth(lambda n, L: MLP(n, depth=L, d_in=16), (2, 4), width=16,
                    example_inputs=ex.example_inputs)


def test_factory_errors_are_clear():
    ex = depth_example("resmlp")
    with pytest.raises(TraceError, match="does not use its depth"):
        analyze_depth(lambda n, L: ResidualMLP(n, depth=3), (2, 4), width=16,
                      example_inputs=ex.example_inputs)
    with pytest.raises(TraceError, match=r"factory taking \(width, depth\)"):
        analyze_depth(lambda n: ResidualMLP(n), (2, 4), width=16, example_inputs=ex.example_inputs)


def test_rules_give_the_depth_factors():
    from tensorprog import rules
    ex = depth_example("resmlp")
    r = rules(lambda n: ex.factory(n, 2), (32, 64), example_inputs=ex.example_inputs,
              base_depth=4, depth_family="depth_mup")
    assert (r.depth.mult_exp, r.depth.lr_exp) == (-HALF, -HALF)  # TP6 with Adam
    assert r.depth.at(16)["branch_multiplier"] == pytest.approx(0.5)
    assert any(n.startswith("depth: Depth-muP") for n in r.notes)
    assert rules(lambda n: ex.factory(n, 2), (32, 64), example_inputs=ex.example_inputs,
                 optimizer="sgd", base_depth=4).depth.lr_exp == 1  # CompleteP, SGD: L^{2a - 1}


class _PlainResidual(torch.nn.Module):
    """A standard pre-LN residual MLP as people write it: SP, no branch multiplier."""

    def __init__(self, width, depth):
        super().__init__()
        nn = torch.nn
        self.inp = nn.Linear(16, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width),
                                                  nn.ReLU(), nn.Linear(width, width))
                                    for _ in range(depth))
        self.out = nn.Linear(width, 4)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


@pytest.mark.parametrize("family", ["completep", "depth_mup"])
def test_apply_mup_in_depth_puts_a_plain_resnet_in_the_family(family):
    from tensorprog import analyze, apply_mup
    x = (torch.randn(8, 16, generator=torch.Generator().manual_seed(0)),)
    mf, of = apply_mup(_PlainResidual, 32, example_inputs=x, optimizer_cls=torch.optim.Adam,
                       lr=1e-3, base_depth=2, depth_family=family)
    rep = analyze_depth(mf, (2, 4, 8), width=32, example_inputs=x, make_optimizer=of)
    (v,) = rep.kinds.values()
    assert rep.family == family and not rep.fix, str(rep)
    assert v.alpha == PAPER_ALPHA[family] and v.alpha + v.gamma == 1
    assert v.eps_exp == -PAPER_ALPHA[family]  # CompleteP Table 1: eps ~ L^-alpha
    # every depth factor is exactly 1 at the base depth
    assert mf(32, 2).tensorprog_depth == {"depth": 2, "branch_multiplier": 1.0, "lr": 1.0,
                                          "eps": 1.0}
    # deeper blocks take block 0's width rules: muP in width at a depth never traced
    assert analyze(lambda n: mf(n, 8), (32, 64, 128), example_inputs=x,
                   make_optimizer=of).parametrization == "muP"


def test_width_trace_names_a_block_count_that_grows_with_width():
    from tensorprog import trace
    ex = depth_example("resmlp")
    with pytest.raises(TraceError, match="block count that grows"):
        trace(lambda n: ResidualMLP(n, depth=n // 16), (32, 64), example_inputs=ex.example_inputs)


class _NoNormResidual(torch.nn.Module):
    """x + m W relu(x), He init, no normalisation: each block multiplies the stream's mean
    square by 1 + m^2 (the branch is independent of the stream at init)."""

    def __init__(self, width, depth, alpha=0.0):
        super().__init__()
        self.m = depth ** -alpha
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width, bias=False)
                                          for _ in range(depth))
        for b in self.blocks:
            torch.nn.init.normal_(b.weight, std=(2 / width) ** 0.5)

    def forward(self, x):
        for b in self.blocks:
            x = x + self.m * b(torch.relu(x))
        return x


def test_unnormalised_standard_residual_grows_exponentially():
    def x(width):
        return (torch.randn(16, width, generator=torch.Generator().manual_seed(0)),)
    rep = analyze_depth(lambda n, L: _NoNormResidual(n, L), (2, 4), width=32, example_inputs=x)
    (v,) = rep.kinds.values()
    assert v.alpha == 0 and rep.stable_init is False
    assert v.stream_init_exp is None  # (1 + 1)^L: no power law
    assert any("exponential growth" in n for n in rep.notes)
    # with alpha = 1/2: (1 + 1/L)^L -> e, bounded
    rep = analyze_depth(lambda n, L: _NoNormResidual(n, L, 0.5), (2, 4), width=32, example_inputs=x)
    (v,) = rep.kinds.values()
    assert v.alpha == HALF and rep.stable_init is True and v.stream_init_exp == 0
    assert rep.stable_train is None  # no optimizer given: training undetermined


def test_depth_report_json_round_trip():
    import json
    ex = depth_example("resmlp", "depth_mup")
    rep = _analyze(ex)
    d = json.loads(rep.to_json())
    assert d["family"] == "depth_mup" and d["kinds"]["blocks.*.linear"]["alpha"] == "1/2"
    assert d["depths"] == [2, 4]
    # read back: an equal report, its exponents exact again, printing as the original
    from tensorprog.predict.depth import DepthReport
    for r in (rep, _analyze(depth_example("resmlp", "standard"))):  # the second with a fix
        back = DepthReport.from_json(r.to_json())
        assert back == r and str(back) == str(r) and back.rules == r.rules
        assert back.stream_init_exp == r.stream_init_exp and back.trace is None
        for name, v in r.kinds.items():
            assert back.kinds[name].__dict__ == v.__dict__
    assert DepthReport.from_json(rep.to_json()).kinds["blocks.*.linear"].alpha == HALF
    other = _analyze(depth_example("resmlp", "completep"))
    assert DepthReport.from_json(other.to_json()) != rep  # equality can fail


def test_depth_check_json_round_trip():
    """A measured depth check (one with a non-finite value, as a diverged run leaves) reads
    back equal, its records' values and exponents as written."""
    from tensorprog.measure.depth import DepthCheck
    ex = depth_example("resmlp", "completep")
    c = check_depth(ex.factory, (2, 4), width=8, example_inputs=ex.example_inputs,
                    make_optimizer=ex.make_optimizer, loss=ex.loss, steps=1, seeds=1)
    c.records[0].values[4] = [float("nan")]
    back = DepthCheck.from_json(c.to_json())
    assert back == c and str(back) == str(c) and back.verdict == c.verdict
    for a, b in zip(back.records, c.records):
        assert (a.node, a.kind, a.step, a.predicted, a.status) == (b.node, b.kind, b.step,
                                                                   b.predicted, b.status)
        assert a.mean_values.keys() == b.mean_values.keys()
    assert back.records[0].values[4][0] != back.records[0].values[4][0]  # NaN kept
    assert back.records[1].predicted == sp.Integer(0)  # the stream's change: CompleteP, L^0


@pytest.mark.slow
def test_hf_gpt2_depth_scaled_init_is_a_multiplier_at_init_only():
    """GPT-2 (Radford et al. 2019) initialises the residual projections with std 0.02 /
    sqrt(2 n_layer): L^-1/2 at init, alpha = 0 in training. ~10 s."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()

    def factory(width, depth):
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=width, n_layer=depth, n_head=4, vocab_size=64, n_positions=16, use_cache=False))
    gen = torch.Generator().manual_seed(0)
    rep = analyze_depth(factory, (2, 4, 8), width=32,
                        example_inputs=(torch.randint(0, 64, (2, 8), generator=gen),),
                        make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=3e-4))
    assert set(rep.kinds) == {"transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_proj"}
    for v in rep.kinds.values():
        assert v.init_exp == -HALF and v.alpha == 0 and v.stream_init_exp == 0
    assert rep.stable_init is True and rep.stable_train is False and rep.family == "standard"
    assert any("without a depth factor" in f for f in rep.fix)


class _GatedResidual(torch.nn.Module):
    """ReZero-style: x + g * W x with a learnable scalar gate g (a tensor, not a float)."""

    def __init__(self, width, depth):
        super().__init__()
        self.inp = torch.nn.Linear(16, width)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.gates = torch.nn.Parameter(torch.full((depth,), 0.1))

    def forward(self, x):
        h = self.inp(x)
        for i, b in enumerate(self.blocks):
            h = h + self.gates[i] * b(h)
        return h


def test_tensor_multiplier_is_undetermined_not_guessed():
    ex = depth_example("resmlp")
    rep = analyze_depth(_GatedResidual, (2, 4), width=16, example_inputs=ex.example_inputs,
                        make_optimizer=lambda m: torch.optim.Adam(m.parameters()))
    (v,) = rep.kinds.values()
    assert v.alpha is None and rep.family == "undetermined" and rep.stable_init is None
    assert any("one-element tensor" in n for n in rep.notes)


class _InlineBranch(torch.nn.Module):
    """The branch's weight is applied functionally inside the block's own forward."""

    def __init__(self, width):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(width, width) / width ** 0.5)

    def forward(self, x):
        return x + torch.nn.functional.linear(torch.relu(x), self.w)


def test_apply_mup_in_depth_refuses_a_branch_it_cannot_hook():
    from tensorprog import apply_mup
    from tensorprog.errors import TensorprogError

    class Net(torch.nn.Module):
        def __init__(self, width, depth):
            super().__init__()
            self.inp = torch.nn.Linear(16, width)
            self.blocks = torch.nn.ModuleList(_InlineBranch(width) for _ in range(depth))
            self.out = torch.nn.Linear(width, 4)

        def forward(self, x):
            h = self.inp(x)
            for b in self.blocks:
                h = b(h)
            return self.out(h)
    x = (torch.randn(8, 16),)
    with pytest.raises(TensorprogError, match="cannot hook"):
        apply_mup(Net, 32, example_inputs=x, optimizer_cls=torch.optim.Adam, base_depth=2)


def test_depth_mup_multiplier_without_its_learning_rate_grows_in_training():
    """1/sqrt(L) branches with a depth-constant Adam LR: alpha + gamma = 1/2 < 1, so the
    blocks' correlated updates add up to L^{1 - alpha - gamma} = L^{1/2} (TP6's training
    condition), measured; at init the stream stays Theta(1)."""
    from tensorprog.zoo import make_optimizer
    ex = depth_example("resmlp", "depth_mup")

    def mk(m):
        return make_optimizer(m, "adam")
    rep = analyze_depth(ex.factory, (2, 4), width=16, example_inputs=ex.example_inputs,
                        make_optimizer=mk)
    assert rep.stable_init is True and rep.stable_train is False
    assert any("x (L/L0)^-1/2" in f for f in rep.fix)  # the fix: TP6's eta / sqrt(L)
    c = check_depth(ex.factory, (2, 4, 8, 16, 32), width=16, example_inputs=ex.example_inputs,
                    make_optimizer=mk, loss=ex.loss, steps=1, seeds=2, report=rep)
    change = c.get("stream", "change")
    assert change.status == "confirmed" and change.slope == pytest.approx(0.5, abs=0.2)
    assert abs(c.get("stream", "size").slope) < 0.15


def test_apply_mup_in_depth_hybrid_muon_adamw_keeps_each_block_with_its_optimizer():
    """Muon on the hidden matrices, AdamW on the rest, at depth 6 > base depth 2: the blocks
    the base-depth trace never saw go to the optimizer of their block-0 counterpart, and the
    branch groups of both optimizers take TP6's Adam-like depth factors, LR and eps x
    (L / L0)^-1/2 = 3^-1/2 (Depth-muP; Muon's step is scale-invariant like Adam's)."""
    from tensorprog import apply_mup
    x = (torch.randn(8, 16, generator=torch.Generator().manual_seed(0)),)
    lr = 1e-3
    mf, of = apply_mup(_PlainResidual, 32, example_inputs=x, lr=lr, base_depth=2,
                       depth_family="depth_mup",
                       optimizer_cls={"hidden": torch.optim.Muon, "default": torch.optim.AdamW})
    model = mf(32, 6)
    opts = of(model)
    assert sorted(type(o).__name__ for o in opts) == ["AdamW", "Muon"]
    owner = {}
    for o in opts:
        for g in o.param_groups:
            for p in g["params"]:
                assert id(p) not in owner, "a parameter in two optimizers"
                owner[id(p)] = (type(o).__name__, g["lr"], g.get("eps"))
    names = dict(model.named_parameters())
    assert set(owner) == {id(p) for p in names.values()}
    # the hidden matrices, read off the module itself: the blocks' width x width weights
    hidden = {n for n, p in names.items() if n.startswith("blocks.") and tuple(p.shape) == (32, 32)}
    assert len(hidden) == 12  # 6 blocks, 2 matrices each
    assert {n for n, p in names.items() if owner[id(p)][0] == "Muon"} == hidden
    f = 3 ** -0.5
    muon_eps = 1e-7  # torch.optim.Muon's default eps
    for n, p in names.items():
        cls, glr, eps = owner[id(p)]
        in_block = n.startswith("blocks.")
        assert glr == pytest.approx(lr * f if in_block else lr), n  # width factors: 1 at base
        if cls == "Muon":
            assert eps == pytest.approx(muon_eps * f)
        elif in_block:
            assert eps == pytest.approx(1e-8 * f)
    assert model.tensorprog_depth["branch_multiplier"] == pytest.approx(f)
    # apply_mup's default optimizer, AdamW alone (its defaults hold decoupled_weight_decay, which
    # its constructor does not take): the same factors on its branch groups
    mf, of = apply_mup(_PlainResidual, 32, example_inputs=x, lr=lr, base_depth=2,
                       depth_family="depth_mup")
    model = mf(32, 6)
    opt = of(model)
    assert type(opt) is torch.optim.AdamW
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        assert lrs[id(p)] == pytest.approx(lr * f if n.startswith("blocks.") else lr), n
