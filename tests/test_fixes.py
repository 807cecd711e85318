"""The printed muP fixes are complete alternatives: applying any one of them (all its changes
together) puts the parameter in muP.

Expected alternatives are TP5's, written out here (not read from the code under test):
* Table 3 (Adam): hidden init std fan_in^-1/2, LR 1/fan_in; output init std 1/fan_in (var
  1/fan_in^2), LR 1/fan_in; input and biases: init constant, LR constant.
* Table 3 (SGD): input and biases LR fan_out, hidden LR 1, output LR 1/fan_in.
* Table 8: output multiplier 1/fan_in, init constant (any init with A >= 1 works), LR constant
  (Adam) / fan_in (SGD).
* abc symmetry (TP4 Eq. 5): keeping an NTK multiplier fan_in^-1/2 on a hidden weight, Adam's LR
  must be n^-1/2 (U = a + c = 1) and SGD's n (U = 2a + c = 0).
"""
from __future__ import annotations

import pytest
import sympy as sp

from tensorprog import analyze
from tensorprog.zoo import example

h = sp.Rational(1, 2)


def _analyze(ex, factory=None, make_optimizer=None):
    return analyze(factory or ex.factory, ex.widths, example_inputs=ex.example_inputs,
                   make_optimizer=make_optimizer or ex.make_optimizer)


def _sets(pv):
    return {fs.name: {c.what: c.to for c in fs.changes} for fs in pv.fix_sets}


def _apply(ex, choice, graph):
    """factory / make_optimizer with the chosen fix set of each parameter applied:
    init rescaled after construction, multipliers on the zoo Linear, per-parameter LR groups."""
    def factory(width):
        model = ex.factory(width)
        r = width / ex.base_width
        params = dict(model.named_parameters())
        model._lr_factor = {}
        for name, fs in choice.items():
            for c in fs.changes:
                f = r ** float(c.factor_exp)
                if c.what == "init":
                    params[name].data.mul_(f)
                elif c.what == "multiplier":
                    layer = model.get_submodule(graph.node(c.node)["module"])  # the use's module
                    layer.multiplier = (layer.multiplier or 1.0) * f
                else:
                    model._lr_factor[id(params[name])] = f
        return model

    def make_optimizer(model):
        opt = ex.make_optimizer(model)
        groups = []
        for g in opt.param_groups:
            for p in g["params"]:
                groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": [p],
                               "lr": g["lr"] * model._lr_factor.get(id(p), 1.0)})
        return type(opt)(groups)

    return factory, make_optimizer


CASES = [("mlp", "sp", "adam", {}), ("mlp", "ntk", "adam", {}), ("mlp", "sp", "sgd", {}),
         ("mlp", "ntk", "sgd", {}), ("gpt", "sp", "adam", {}), ("gpt", "ntk", "adam", {}),
         ("gpt", "sp", "adam", {"tie": True}), ("gpt", "ntk", "adam", {"tie": True})]


@pytest.mark.parametrize("name,param,opt,kw", CASES)
def test_every_alternative_makes_the_parameter_mup(name, param, opt, kw):
    ex = example(name, param=param, optimizer=opt, **kw)
    rep = _analyze(ex)
    broken = {k: pv for k, pv in rep.params.items() if pv.trainable and "muP" not in pv.classes}
    assert broken
    assert all(pv.fix_sets and pv.fixes == [fs.text for fs in pv.fix_sets] for pv in broken.values())
    for k in range(max(len(pv.fix_sets) for pv in broken.values())):
        choice = {n: pv.fix_sets[min(k, len(pv.fix_sets) - 1)] for n, pv in broken.items()}
        factory, make_opt = _apply(ex, choice, rep.graph)
        after = _analyze(ex, factory, make_opt)
        for n, fs in choice.items():
            assert "muP" in after.params[n].classes, (n, fs.text, after.params[n])
        # parameters that were muP stay muP
        assert all("muP" in after.params[n].classes for n in rep.params if n not in broken
                   and rep.params[n].trainable)


def test_sp_adam_alternatives_are_tp5s():
    rep = _analyze(example("mlp", param="sp"))
    # readout: Table 8 (multiplier 1/fan_in, SP's init n^-1/2 already has A >= 1, LR constant)
    # or Table 3 (init 1/fan_in, LR 1/fan_in) - never both mixed
    assert _sets(rep.params["readout.weight"]) == {
        "Table 8": {"multiplier": -1}, "Table 3": {"init": -1, "lr": -1}}
    assert _sets(rep.params["hidden.0.weight"]) == {"Table 3": {"lr": -1}}
    text = str(rep)
    assert "one of:" in text and "either TP5 Table 8" in text and "or TP5 Table 3" in text


def test_ntk_alternatives_are_tp5s():
    rep = _analyze(example("mlp", param="ntk"))
    assert _sets(rep.params["hidden.0.weight"]) == {
        "keep the multiplier (abc symmetry)": {"lr": -h},
        "Table 3": {"multiplier": 0, "init": -h, "lr": -1}}
    assert _sets(rep.params["readout.weight"]) == {
        "keep the multiplier (abc symmetry)": {"init": -h, "lr": -h},
        "Table 8": {"multiplier": -1},  # NTK init is constant already: Table 8 exactly
        "Table 3": {"multiplier": 0, "init": -1, "lr": -1}}
    sgd = _analyze(example("mlp", param="ntk", optimizer="sgd"))
    assert _sets(sgd.params["hidden.0.weight"]) == {
        "keep the multiplier (abc symmetry)": {"lr": 1},
        "Table 3": {"multiplier": 0, "init": -h}}
    assert _sets(sgd.params["readout.weight"])["Table 8"] == {"multiplier": -1, "lr": 1}
    d = rep.to_dict()["params"]["readout.weight"]["fix_sets"]
    assert [f["name"] for f in d] == [fs.name for fs in rep.params["readout.weight"].fix_sets]


def test_fix_for_a_muon_parameter_is_in_muons_lr():
    """Muon "match_rms_adamw" steps an n x n weight by entries ~ lr n^-1/2 (finite-rank
    gradient), so with a constant LR the fix is LR ~ n^-1/2 (Adam-equivalent 1/fan_in)."""
    from test_optimizers import MLP, WIDTHS, X, hybrid

    rep = analyze(MLP, WIDTHS, example_inputs=(X,), make_optimizer=hybrid("match_rms_adamw"))
    pv = rep.params["h1.weight"]
    assert _sets(pv) == {"Table 3": {"lr": -h}}
    assert "Muon LR ∝ fan_in^-1/2" in pv.fixes[0]


def test_tied_embedding_has_only_table8():
    """A weight shared by the embedding (input) and the readout has one init and one LR: only
    Table 8's readout multiplier (TP5 Table 8; the zoo GPT's tie=True docstring) keeps both uses
    muP; Table 3's 1/fan_in readout init would shrink the embedding."""
    rep = _analyze(example("gpt", param="sp", tie=True))
    assert _sets(rep.params["tok_emb.weight"]) == {"Table 8": {"multiplier": -1}}
