"""A lookup table is never a readout (issue 11 item 1).

A lookup reads one row per id: there is no sum over the vocabulary, so the vocabulary is neither a
fan-in nor a fan-out, whatever its size (TP5 App B / Table 3: an embedding is an input weight,
fan_in 1 like a bias). Before, a vocabulary that grew with width made ``nn.Embedding`` an "output"
(readout fix: multiplier 1/fan_in) or, with d_model growing too, a "hidden" weight (init
1/sqrt(fan_in), which would shrink the table with the vocabulary); a table gathered by
``W[ids]`` / ``index_select`` / ``gather`` counted its rows in its fan-out."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tensorprog import analyze, rules

V0, D0 = 32, 16
IDS = (torch.randint(0, 16, (4, 6), generator=torch.Generator().manual_seed(0)),)
WIDTHS = (32, 64, 128)


class Table(nn.Module):
    """ids -> table lookup (one of four ways) -> Linear(d, n) -> tanh -> Linear(n, 3)."""

    def __init__(self, n, how, vocab_grows, d_grows):
        super().__init__()
        V, d = (n if vocab_grows else V0), (n if d_grows else D0)
        self.how = how
        self.table = nn.Parameter(torch.randn(V, d))
        self.hid, self.out = nn.Linear(d, n), nn.Linear(n, 3)

    def forward(self, ids):
        W = self.table
        if self.how == "embedding":
            e = nn.functional.embedding(ids, W)
        elif self.how == "index":
            e = W[ids]
        elif self.how == "index_select":
            e = torch.index_select(W, 0, ids.reshape(-1)).reshape(*ids.shape, -1)
        else:  # gather rows
            flat = ids.reshape(-1, 1).expand(-1, W.shape[1])
            e = torch.gather(W, 0, flat).reshape(*ids.shape, -1)
        return self.out(torch.tanh(self.hid(e)))


HOW = ["embedding", "index", "index_select", "gather"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("vocab_grows, d_grows, role", [
    (False, True, None),  # the usual embedding: an input weight (input-like, one infinite dim)
    (True, True, None),  # vocabulary ~ d_model ~ n: still input-like, the vocabulary is no fan-in
    (True, False, "scalar"),  # only the vocabulary grows: every entry is used alone, scalar-like
])
def test_lookup_roles(how, vocab_grows, d_grows, role):
    rep = analyze(lambda n: Table(n, how, vocab_grows, d_grows), WIDTHS, example_inputs=IDS)
    p = rep.params["table"]
    if role is None:  # embedding: TP5's "input"; the index ops: a vector-like table (same rules)
        role = "input" if how == "embedding" else "vector"
    assert p.role == role
    assert p.fan_in_exp == 0
    assert p.fan_out_exp == (1 if d_grows else 0)  # d_model only, never the vocabulary
    assert not p.fixes, p.fixes


@pytest.mark.parametrize("how", ["embedding", "index"])
def test_growing_vocabulary_gets_no_readout_rule(how):
    """muP rules (Table 8, Adam) of a table N(0, 1) whose vocabulary grows with d_model: as an
    input weight, init Theta(1), multiplier 1, Adam LR 1 (TP5 Table 3 / 8, first column): every
    exponent 0. A readout would get a multiplier 1/fan_in (exponent -1), a hidden weight an init
    1/sqrt(fan_in) (exponent -1/2)."""
    r = rules(lambda n: Table(n, how, True, True), WIDTHS, example_inputs=IDS, optimizer="adam",
              convention="table8")
    p = r.params["table"]
    assert p.kind == "input-like"
    assert (p.init_exp, p.mult_exp, p.lr_exp) == (0, 0, 0)
    assert all(u.mult_exp == 0 for u in p.uses)
