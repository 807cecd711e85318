"""Higher-order ops (no_grad blocks, torch.cond, map), data-dependent control flow in library
code (specialised trace) and data-dependent (unbacked) sizes."""
import pytest
import torch
import torch.nn as nn

import tensorprog

WIDTHS = (64, 128, 256)


def adam(m):
    return torch.optim.Adam(m.parameters(), lr=1e-3)


def inputs(n):
    return (torch.randn(4, 8),)


def run(factory, **kw):
    return tensorprog.analyze(factory, WIDTHS, example_inputs=inputs, make_optimizer=adam, **kw)


class NoGradBlock(nn.Module):
    """A reversible-style layer: part of the forward under torch.no_grad()."""

    def __init__(self, n):
        super().__init__()
        self.a, self.f, self.o = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 1)

    def forward(self, x):
        h = self.a(x)
        with torch.no_grad():
            y = self.f(h).relu()
        return self.o(h + y)


class CondBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.a, self.f, self.g, self.o = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, 1)

    def forward(self, x):
        h = self.a(x)
        y = torch.cond(x.sum() > 0, lambda h: self.f(h), lambda h: self.g(h), (h,))
        return self.o(y)


class CondMismatch(CondBlock):
    """One branch multiplies by the width: the branches' sizes differ."""

    def forward(self, x):
        h = self.a(x)
        n = h.shape[-1]
        y = torch.cond(x.sum() > 0, lambda h: self.f(h), lambda h: self.g(h) * n, (h,))
        return self.o(y)


class MapBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.a, self.f, self.o = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 1)

    def forward(self, x):
        from torch._higher_order_ops.map import map as hmap

        h = self.a(x)
        return self.o(hmap(lambda r: self.f(r), h))


class WhileBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.a, self.f, self.o = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 1)

    def forward(self, x):
        from torch._higher_order_ops.while_loop import while_loop

        h = self.a(x)
        _, y = while_loop(lambda i, h: i < 2, lambda i, h: (i + 1, self.f(h)), (torch.tensor(0), h))
        return self.o(y)


def test_no_grad_block_is_inlined():
    r = run(NoGradBlock)
    g = r.graph
    assert g.params["f.weight"].role == "hidden" and g.params["f.bias"].role == "vector"
    assert r.parametrization == "SP"
    inlined = [n for n in g.order if g.node(n)["hop"]]
    assert inlined and all(n.startswith(g.node(n)["hop"] + "__") for n in inlined)
    assert any(g.node(n)["op"] == "linear" for n in inlined)
    # no gradient flows back through a no_grad block: its weights never move
    assert str(r.propagation.updates[-1]["f.weight"]) == "-oo"
    assert str(r.propagation.updates[-1]["a.weight"]) != "-oo"


def test_cond_both_branches_inlined():
    r = run(CondBlock)
    roles = {k: p.role for k, p in r.graph.params.items()}
    assert roles["f.weight"] == roles["g.weight"] == "hidden"
    assert r.parametrization == "SP"


def test_cond_branches_of_different_sizes_undetermined():
    r = run(CondMismatch)
    assert r.parametrization == "undetermined"
    assert any("torch.cond" in u["reason"] for u in r.undetermined)


def test_map_body_inlined():
    r = run(MapBlock)
    assert r.graph.params["f.weight"].role == "hidden"
    assert r.parametrization == "SP"


def test_unhandled_hop_is_undetermined_by_name():
    r = run(WhileBlock)
    assert r.parametrization == "undetermined"
    assert "while_loop" in r.notes[0]


def test_check_runs_with_inlined_hop():
    rep = tensorprog.check(NoGradBlock, WIDTHS, example_inputs=inputs, steps=1, seeds=1,
                           progress=False)
    measured = {rec.node for rec in rep.records}
    g = rep.graph
    assert "getitem" in measured  # the HOP's output, matched by position in the program
    assert not any(g.node(n)["hop"] for n in measured)
    assert any(why.startswith("inside higher-order op") for why in rep.skipped.values())
    assert all(rec.values for rec in rep.records if rec.node == "getitem")


# ----------------------------------------------------------------------------- data-dependent


class MoE(nn.Module):
    """Top-1 routing over Linear(n, n) experts; empty experts are skipped (a Python branch on
    data, as in HuggingFace's MoE blocks): torch.export refuses it."""

    def __init__(self, n, experts=4):
        super().__init__()
        self.inp, self.router = nn.Linear(8, n), nn.Linear(n, experts)
        self.experts = nn.ModuleList(nn.Linear(n, n) for _ in range(experts))
        self.out = nn.Linear(n, 1)

    def forward(self, x):
        h = self.inp(x)
        top = self.router(h).argmax(-1)
        y = torch.zeros_like(h)
        for i, expert in enumerate(self.experts):
            idx = torch.where(top == i)[0]
            if idx.numel() == 0:
                continue
            y = y.index_add(0, idx, expert(h[idx]))
        return self.out(torch.relu(y) + h)


def moe_inputs(n):
    return (torch.randn(64, 8),)


def test_data_dependent_branch_is_traced_specialised():
    r = tensorprog.analyze(MoE, WIDTHS, example_inputs=moe_inputs, make_optimizer=adam)
    assert r.parametrization == "SP"
    assert r.graph.params["experts.0.weight"].role == "hidden"
    note = [n for n in r.notes if n.startswith("the model branches on data")]
    assert note and "specialised to the example inputs" in note[0] and "test_hop.py" in note[0]


def test_check_refuses_specialised_trace():
    with pytest.raises(tensorprog.errors.CheckError, match="specialised to the example inputs"):
        tensorprog.check(MoE, WIDTHS, example_inputs=moe_inputs, steps=1, seeds=1, progress=False)


class Masked(nn.Module):
    """x[mask]: a data-dependent (unbacked) row count, then summed over."""

    def __init__(self, n):
        super().__init__()
        self.a, self.o = nn.Linear(8, n), nn.Linear(n, 1)

    def forward(self, x):
        h = self.a(x)
        sel = h[x[:, 0] > 0]
        return self.o(sel.sum(0, keepdim=True))


class MaskedNarrow(nn.Module):
    """nonzero on a width-free tensor: the unbacked size never meets a width dim."""

    def __init__(self, n):
        super().__init__()
        self.a, self.o = nn.Linear(8, n), nn.Linear(n, 1)

    def forward(self, x):
        k = torch.nonzero(x[:, 0] > 0).sum().float()
        return self.o(self.a(x)) * torch.tanh(k)


def test_unbacked_sizes_do_not_crash_and_are_undetermined():
    r = run(Masked)
    assert r.parametrization == "undetermined"
    assert any("data-dependent size" in u["reason"] for u in r.undetermined)
    g = r.graph
    assert any(g.node(n).get("unbacked") for n in g.order)


def test_unbacked_sizes_away_from_width_dims():
    r = run(MaskedNarrow)
    assert r.parametrization == "SP"
