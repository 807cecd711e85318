"""Optimizers by the geometry of their update (issue: Muon, Adafactor, several optimizers).

Expected values: Muon's orthogonalised step of a finite-rank gradient has entries
~ sqrt(max(1, A/B)) / sqrt(A B) ("original") or 0.2 sqrt(max(A, B)) / sqrt(A B)
("match_rms_adamw") for an A x B weight (torch.optim.Muon's ``adjust_lr_fn``), so with a
constant lr the hidden features of an n x n layer change by Theta(1) with "original" (the
spectral condition of Yang, Simon, Bernstein 2023, arXiv 2310.17813) and grow like sqrt(n) with
"match_rms_adamw"; ``check`` measures both.
"""
import pytest
import sympy as sp
import torch
import torch.nn as nn

from tensorprog import TensorprogError, analyze, check

X = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
WIDTHS = (64, 128, 256)


class MLP(nn.Module):
    """Input (AdamW), two hidden n x n layers (Muon), a zero-init readout with a 64/n multiplier
    (AdamW): muP's readout (TP5 App. D.2, Table 8)."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.inp = nn.Linear(16, n, bias=False)
        self.h1, self.h2 = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
        self.out = nn.Linear(n, 4, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = torch.relu(self.h1(h))
        h = torch.relu(self.h2(h))
        return self.out(h) * (64 / self.n)


def hybrid(adjust, weight_decay=0.0, lr=0.02):
    def make(m):
        return [torch.optim.Muon([m.h1.weight, m.h2.weight], lr=lr, adjust_lr_fn=adjust,
                                 weight_decay=weight_decay),
                torch.optim.AdamW([m.inp.weight, m.out.weight], lr=1e-3, weight_decay=weight_decay)]
    return make


def test_muon_geometry_is_read_from_the_optimizer_object():
    rep = analyze(MLP, WIDTHS, example_inputs=(X,), make_optimizer=hybrid("original"))
    g = rep.graph
    assert g.optimizer == "Muon+AdamW"
    assert g.params["h1.weight"].step.geometry == "orthogonalised"
    assert g.params["inp.weight"].step.geometry == "entrywise"


@pytest.mark.parametrize("adjust,name", [("original", "muP"), ("match_rms_adamw", "mixed")])
def test_muon_adjust_lr_fn_decides_the_verdict(adjust, name):
    rep = analyze(MLP, WIDTHS, example_inputs=(X,), make_optimizer=hybrid(adjust))
    assert rep.parametrization == name
    assert rep.stable == (adjust == "original")
    if adjust == "original":
        assert rep.feature_learning


@pytest.mark.slow
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_check_confirms_muon_predictions(adjust):
    # to width 1024 here (2-6 s); width 2048 costs 40-100 s (Newton-Schulz on 2048 x 2048), so
    # benchmarks/muon_check.py runs it and README's Figures records it (nothing refuted either)
    rep = check(MLP, (64, 128, 256, 512, 1024), example_inputs=(X,), make_optimizer=hybrid(adjust),
                steps=3, seeds=2, progress=False)
    assert not rep.refuted(), [(r.node, r.kind, r.step, r.predicted, r.slope) for r in rep.refuted()]
    h = rep.get("linear_2", "change", 3)  # the second hidden layer's output after 3 steps
    assert h.status in ("confirmed", "inconclusive")
    assert (h.slope < 0.15) if adjust == "original" else (h.slope > 0.15)


def test_decoupled_weight_decay_moves_a_parameter_without_gradient():
    """AdamW's p *= 1 - lr wd changes the zero-gradient input layer at step 1 (its gradient is
    zero there: the readout starts at zero); the engine predicts the change p's own size."""
    rep = analyze(MLP, WIDTHS, example_inputs=(X,), make_optimizer=hybrid("original", 0.1))
    s1 = rep.propagation.steps[1]
    node = rep.graph.params["inp.weight"].node
    assert s1[node].dx == rep.graph.params["inp.weight"].init_exp


def test_a_parameter_in_two_optimizers_is_an_error():
    def make(m):
        return [torch.optim.Muon([m.h1.weight, m.h2.weight]), torch.optim.AdamW(m.parameters())]
    with pytest.raises(TensorprogError, match="more than one optimizer"):
        analyze(MLP, WIDTHS, example_inputs=(X,), make_optimizer=make)


def test_an_unknown_optimizer_names_the_geometries_and_how_to_declare_one():
    class Mine(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 1e-3})

        def step(self, closure=None):
            pass

    with pytest.raises(TensorprogError, match="register_optimizer"):
        analyze(MLP, WIDTHS, example_inputs=(X,), make_optimizer=lambda m: Mine(m.parameters()))


# --- Adam's eps (issue: in muP the hidden gradient shrinks like 1/fan_in; a constant eps
# eventually dominates it and the step becomes SGD-like, lr g / eps)

class MLP3(nn.Module):
    """muP, TP5 Table 3: input var 1/16 (lr 1), hidden var 1/n (Adam lr 1/n), readout var 1/n^2
    (Adam lr 1/n)."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.inp = nn.Linear(16, n, bias=False)
        self.h1 = nn.Linear(n, n, bias=False)
        self.out = nn.Linear(n, 4, bias=False)
        nn.init.normal_(self.inp.weight, std=16 ** -0.5)
        nn.init.normal_(self.h1.weight, std=n ** -0.5)
        nn.init.normal_(self.out.weight, std=1 / n)

    def forward(self, x):
        return self.out(torch.relu(self.h1(torch.relu(self.inp(x)))))


def adam_eps(scaled):
    """Adam with eps = 1e-3 (constant) or 1e-3 * 64 / n (like the hidden gradient)."""
    def make(m):
        return torch.optim.Adam([{"params": [m.inp.weight], "lr": 1e-2},
                                 {"params": [m.h1.weight, m.out.weight], "lr": 1e-2 * 64 / m.n}],
                                eps=1e-3 * 64 / m.n if scaled else 1e-3)
    return make


@pytest.mark.parametrize("scaled", [False, True])
def test_adam_eps_is_read_per_width_with_its_exponent(scaled):
    rep = analyze(MLP3, WIDTHS, example_inputs=(X,), make_optimizer=adam_eps(scaled))
    assert rep.graph.params["h1.weight"].eps_exp == (-1 if scaled else 0)
    # the default is the eps -> 0 limit: muP either way, with a note for the constant eps
    assert rep.parametrization == "muP" and rep.feature_learning
    notes = [n for n in rep.notes if "Adam's eps" in n]
    assert bool(notes) == (not scaled)
    if notes:  # eps = 1e-3 is above the hidden gradient's RMS (~3e-4) already at width 256
        assert "'h1.weight' (eps ~ 1, gradient ~ n^-1, already above the gradient's RMS)" in notes[0]
        assert "1/fan_in" in notes[0]


def constant_eps(eps):
    def make(m):
        return torch.optim.Adam([{"params": [m.inp.weight], "lr": 1e-2},
                                 {"params": [m.h1.weight, m.out.weight], "lr": 1e-2 * 64 / m.n}],
                                eps=eps)
    return make


def test_default_adam_eps_is_not_noted():
    # eps = 1e-8 meets a ~3e-4 gradient falling like 1/n only near width 256 * 3e4: far
    # beyond the analysed widths, so no note
    rep = analyze(MLP3, WIDTHS, example_inputs=(X,), make_optimizer=constant_eps(1e-8))
    assert not [n for n in rep.notes if "eps" in n]


def test_eps_note_names_the_width_where_eps_meets_the_gradient():
    import re

    rep = analyze(MLP3, WIDTHS, example_inputs=(X,), make_optimizer=constant_eps(1e-4))
    (note,) = [n for n in rep.notes if "Adam's eps" in n]
    m = re.search(r"'h1.weight' \(eps ~ 1, gradient ~ n\^-1, reaching the gradient's RMS near "
                  r"width ([0-9.e+]+)\)", note)
    assert m, note
    cross = round(float(m.group(1)))
    assert 256 < cross < 256 * 100
    # measured here, at that width: the hidden weight's RMS gradient under the proxy loss
    # (0.5 mean((y - t)^2), t fixed N(0, 1) targets, seed 1234) is eps, within a factor 2
    torch.manual_seed(0)
    model = MLP3(cross)
    y = model(X)
    t = torch.randn(tuple(y.shape), generator=torch.Generator().manual_seed(1234))
    (0.5 * ((y - t) ** 2).mean()).backward()
    rms = float(model.h1.weight.grad.pow(2).mean().sqrt())
    assert 0.5 < rms / 1e-4 < 2, rms


@pytest.mark.parametrize("scaled", [False, True])
def test_adam_eps_asymptotic_shrinks_the_update_when_eps_dominates(scaled):
    rep = analyze(MLP3, WIDTHS, example_inputs=(X,), make_optimizer=adam_eps(scaled),
                  adam_eps="asymptotic")
    hidden = rep.propagation.final["linear_1"].dx  # the hidden layer's output change
    assert hidden == (0 if scaled else -1)  # lr g / eps = n^-1 n^-1 / 1 per entry, times n
    assert rep.feature_learning == scaled


def test_adam_eps_option_is_validated():
    with pytest.raises(ValueError, match="adam_eps"):
        analyze(MLP3, WIDTHS, example_inputs=(X,), make_optimizer=adam_eps(True), adam_eps="zero")


@pytest.mark.slow
@pytest.mark.parametrize("scaled", [False, True])
def test_check_measures_the_eps_crossover(scaled):
    """Measured (CPU, widths 64..2048, 2 seeds): the hidden output's change after 3 steps has
    slope ~ -0.71 with eps = 1e-3 (between the limit's 0 and the asymptote's -1: the crossover,
    gradient ~ eps, lies inside these widths) and ~ 0.01 with eps ~ 1/n."""
    rep = check(MLP3, (64, 128, 256, 512, 1024, 2048), example_inputs=(X,),
                make_optimizer=adam_eps(scaled), steps=3, seeds=2, progress=False, device="cpu",
                adam_eps="asymptotic")
    h = rep.get("linear_1", "change", 3)
    if scaled:
        assert not rep.refuted()
        assert abs(h.slope) < 0.15
    else:
        assert h.predicted == -1 and h.slope < -0.4


# --- Adafactor (parameter-scaled: a step's entries are lr * RMS(W)); at the Adam-equivalent
# learning rates lr * RMS(W) of muP (Table 3): input 1 * 1, hidden n^-1/2 * n^-1/2 = 1/n,
# readout 1 * 1/n. eps2 (the floor on RMS(W)) is set below every RMS here.

def adafactor(hidden_lr_exp):
    def make(m):
        s = 64 / m.n
        return torch.optim.Adafactor([
            {"params": [m.inp.weight], "lr": 1e-2},
            {"params": [m.h1.weight], "lr": 1e-2 * s ** -hidden_lr_exp},
            {"params": [m.out.weight], "lr": 1e-2}], eps=(None, 1e-6))
    return make


@pytest.mark.parametrize("hidden_lr_exp,stable", [("-1/2", True), ("0", False)])
def test_adafactor_at_its_mup_learning_rates(hidden_lr_exp, stable):
    e = {"-1/2": -0.5, "0": 0.0}[hidden_lr_exp]
    rep = analyze(MLP3, WIDTHS, example_inputs=(X,), make_optimizer=adafactor(e))
    assert rep.graph.params["h1.weight"].step.geometry == "parameter-scaled"
    assert rep.stable == stable
    if stable:
        assert rep.parametrization == "muP" and rep.feature_learning
    else:  # a constant lr moves each hidden entry by n^-1/2: the features grow like n^1/2
        assert rep.propagation.final["linear_1"].dx == sp.Rational(1, 2)


@pytest.mark.slow
def test_check_confirms_adafactor_mup():
    rep = check(MLP3, (64, 128, 256, 512, 1024, 2048), example_inputs=(X,),
                make_optimizer=adafactor(-0.5), steps=3, seeds=2, progress=False, device="cpu")
    assert not rep.refuted(), [(r.node, r.kind, r.step, r.predicted, r.slope) for r in rep.refuted()]
    h = rep.get("linear_1", "change", 3)
    assert h.status == "confirmed" and abs(h.slope) < 0.15


# --- the readout decision: b > c (update outgrows the init) is a note, the output decides

def test_table8_readout_with_pytorch_default_init_is_stable_with_a_note():
    """mup's MuReadout convention (1/width multiplier, constant Adam lr) with nn.Linear's default
    init (b = 1/2 > c = 0): the output's change is Theta(1) (measured flat to width 4096), so
    the readout outgrowing its init is a note, not an instability (theory note 9)."""
    import math
    from tensorprog.zoo import example
    ex = example("mlp", param="mup_table8", optimizer="adam")

    def factory(n):
        m = ex.factory(n)
        bound = 1 / math.sqrt(m.readout.weight.shape[1])  # nn.Linear's default init
        nn.init.uniform_(m.readout.weight, -bound, bound)
        return m

    rep = analyze(factory, ex.widths, example_inputs=ex.example_inputs,
                  make_optimizer=ex.make_optimizer)
    assert rep.params["readout.weight"].init_exp == sp.Rational(-1, 2)
    assert rep.stable and rep.parametrization in ("muP", "mixed")
    assert not any("outgrows" in p.what for p in rep.problems)
    assert any("readout 'readout.weight' has an update that outgrows its init" in n
               for n in rep.notes)


# --- coupled (L2) weight decay: g + wd p. At step 1 the zero readout gives the hidden layers a
# zero gradient, so only the decay moves them.

def test_coupled_weight_decay_under_sgd_is_a_relative_shrink():
    # SGD: p - lr (g + wd p) = (1 - lr wd) p when g = 0, so h1 = W z changes by lr wd h1:
    # by h1's own size, not by an aligned (law of large numbers) step n^{1/2} larger
    rep = analyze(MLP, WIDTHS, example_inputs=(X,),
                  make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=0.1))
    s1 = rep.propagation.steps[1]["linear_1"]
    assert s1.dx == s1.x == 0
    assert not [n for n in rep.notes if "coupled" in n]


def test_coupled_weight_decay_under_adam_is_an_upper_bound():
    # Adam: the step is lr (g + wd p) / |g + wd p| = lr sign(p) when g = 0: entries lr, aligned
    # with the init W0, not with the features z, so h1 changes by lr sign(W0) z ~ lr n^{1/2}
    # (central limit). The engine counts the step as gradient-aligned, lr n (law of large
    # numbers): an upper bound, which its note says; measured here, the change grows slower.
    make = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=0.1)  # noqa: E731
    rep = analyze(MLP, WIDTHS, example_inputs=(X,), make_optimizer=make)
    (note,) = [n for n in rep.notes if "coupled (L2) weight decay" in n]
    assert "upper bound" in note and "'h1.weight'" in note
    predicted = rep.propagation.steps[1]["linear_1"].dx
    assert predicted == 1
    changes = []
    for n in (64, 256, 1024):
        torch.manual_seed(0)
        model = MLP(n)
        before = model.h1(torch.relu(model.inp(X))).detach()
        opt = make(model)
        y = model(X)
        (0.5 * (y - torch.ones_like(y)).pow(2).mean()).backward()
        opt.step()
        after = model.h1(torch.relu(model.inp(X))).detach()
        changes.append(float((after - before).pow(2).mean().sqrt()))
    import math
    slope = math.log(changes[-1] / changes[0]) / math.log(1024 / 64)
    assert abs(slope - 0.5) < 0.15, slope  # lr sign(W0) z: CLT
    assert slope < float(predicted)


# --- torch.optim's other optimizers (their step, torch 2.13): the geometry each resolves to,
# and a measurement of it: one step's size when the gradient is 1000x larger is 1000x larger
# (gradient) or unchanged (entrywise: normalised entry by entry; Rprop: -sign(g) x lr)

def _step_size(cls, scale, steps=1, **kwargs):
    """Norm of the last of ``steps`` updates of an 8 x 8 weight under a fixed gradient x scale."""
    p = nn.Parameter(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    g = torch.randn(8, 8, generator=torch.Generator().manual_seed(1)) * scale
    opt = cls([p], **kwargs)
    for _ in range(steps):
        before = p.detach().clone()
        p.grad = g.to_sparse() if cls is torch.optim.SparseAdam else g.clone()
        opt.step()
    return float((p.detach() - before).norm())


@pytest.mark.parametrize("cls, geometry", [
    (torch.optim.RMSprop, "entrywise"), (torch.optim.Adagrad, "entrywise"),
    (torch.optim.Adamax, "entrywise"), (torch.optim.NAdam, "entrywise"),
    (torch.optim.SparseAdam, "entrywise"), (torch.optim.Rprop, "entrywise"),
    (torch.optim.ASGD, "gradient"),
])
def test_torch_optimizers_resolve_to_the_geometry_their_step_has(cls, geometry):
    from tensorprog.graph.optimizers import geometry_of

    w = [nn.Parameter(torch.zeros(2, 2))]
    assert geometry_of(cls(w)).name == geometry
    ratio = _step_size(cls, 1000.0) / _step_size(cls, 1.0)
    assert ratio == pytest.approx(1000.0 if geometry == "gradient" else 1.0, rel=1e-2)


def test_radam_is_refused_its_first_steps_follow_the_gradient():
    from tensorprog.graph.optimizers import geometry_of

    # measured: step 1 scales with the gradient (SGD-like), step 7 does not (Adam-like)
    assert _step_size(torch.optim.RAdam, 1000.0) / _step_size(torch.optim.RAdam, 1.0) == \
        pytest.approx(1000.0, rel=1e-2)
    assert _step_size(torch.optim.RAdam, 1000.0, 7) / _step_size(torch.optim.RAdam, 1.0, 7) == \
        pytest.approx(1.0, rel=1e-2)
    with pytest.raises(TensorprogError, match="RAdam has no update geometry.*first 5 steps"):
        geometry_of(torch.optim.RAdam)
    with pytest.raises(TensorprogError, match="RAdam has no update geometry"):
        analyze(MLP3, WIDTHS, example_inputs=(X,),
                make_optimizer=lambda m: torch.optim.RAdam(m.parameters()))
    with pytest.raises(TensorprogError, match="RAdam has no update geometry"):
        from tensorprog.theory.abc import optimizer_class
        optimizer_class("radam")


def test_lbfgs_is_refused_its_step_couples_every_parameter():
    from tensorprog.graph.optimizers import geometry_of

    # measured: LBFGS's first iteration moves one parameter by an amount that depends on another
    # parameter's gradient (lr / ||g||_1 over all of them), so no per-parameter exponent exists
    def first_move(other_scale):
        a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
        ga, gb = torch.ones(4), torch.ones(4) * other_scale
        opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=1)

        def closure():
            a.grad, b.grad = ga.clone(), gb.clone()
            return torch.tensor(0.0)

        opt.step(closure)
        return float(a.detach().norm())

    assert first_move(1000.0) < first_move(1.0) / 100
    with pytest.raises(TensorprogError, match="LBFGS has no update geometry.*first-order"):
        geometry_of(torch.optim.LBFGS([nn.Parameter(torch.zeros(2))]))
