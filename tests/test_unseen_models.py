"""Architectures written from scratch (benchmarks/unseen_models.py, UNSEEN_MODELS_FINDINGS.md):
each test pins one engine fix against a closed form or a measurement made inside the test.

* A conv bias before a training-mode BatchNorm never trains: BN subtracts each channel's batch
  mean, so the gradient into the conv output sums to zero over (batch, H, W) and the bias
  gradient, that sum, is exactly 0 (Ioffe & Szegedy 2015, arXiv 1502.03167, Sec. 3.2: "the
  bias b can be ignored").
* ``zeros`` / ``zeros_like`` are exactly zero (an RNN's initial state, an MoE accumulator).
* Fused recurrent cells (``aten.gru`` / ``aten.lstm``) and ``_weight_norm`` are decomposed into
  ATen ops the engine sizes; PyTorch's default GRU init U(+-1/sqrt(hidden)) is fan_in^-1/2 and
  one global Adam LR is SP (TP5, arXiv 2203.03466, Table 3).
* A LoRA B behind A x (vanishing at init, Theta(1) once A moves) learns features through
  dW dz: LoRA in muP by hand is muP, feature learning (measured in the test).
"""
import sympy as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from tensorprog import analyze

WIDTHS = (16, 32, 64)
IMAGES = (torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)),)
IDS = (torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(0)),)


def adam(m):
    return torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)


class ConvBN(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, n, 3, padding=1), nn.BatchNorm2d(n)
        self.head = nn.Linear(n, 4)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.c1(x))).mean((2, 3)))


def test_conv_bias_before_batchnorm_gets_exactly_zero_gradient():
    # the measurement: one backward in training mode
    m = ConvBN(32)
    m(*IMAGES).pow(2).sum().backward()
    assert m.c1.bias.grad.abs().max() < 1e-5 * m.c1.weight.grad.abs().max()
    # the engine: the bias's gradient and change are exactly zero; the conv weight still trains
    rep = analyze(ConvBN, WIDTHS, example_inputs=IMAGES, make_optimizer=adam)
    final = rep.propagation.final
    assert final["p_c1_bias"].dx == -sp.oo
    assert final["p_c1_weight"].dx != -sp.oo
    assert rep.propagation.steps[0]["p_c1_weight"].g != -sp.oo


class Accumulate(nn.Module):
    """out = zeros_like(h) + W h: the zeros add nothing, so out ~ W h at every width."""

    def __init__(self, n):
        super().__init__()
        self.inp, self.hid, self.head = nn.Linear(8, n), nn.Linear(n, n, bias=False), nn.Linear(n, 4)

    def forward(self, x):
        h = self.inp(x)
        out = torch.zeros_like(h) + self.hid(h) * 0.0 + torch.zeros(h.shape)
        return self.head(out + h)


def test_zeros_are_exactly_zero():
    rep = analyze(Accumulate, WIDTHS, example_inputs=(torch.randn(3, 8),), make_optimizer=adam)
    steps = rep.propagation.steps[0]
    for node, a in rep.graph.nx.nodes(data=True):
        if a.get("op") in ("zeros_like", "zeros"):
            assert steps[node].x == -sp.oo, node


class RNN(nn.Module):
    def __init__(self, n, cell=nn.GRU):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(32, n), cell(n, n, batch_first=True), nn.Linear(n, 32)

    def forward(self, t):
        return self.head(self.rnn(self.emb(t))[0])


def test_gru_is_decomposed_and_named_sp():
    rep = analyze(RNN, WIDTHS, example_inputs=IDS, make_optimizer=adam)
    assert rep.parametrization == "SP"
    hh = rep.params["rnn.weight_hh_l0"]
    assert hh.role == "hidden" and hh.fan_in_exp == 1 and hh.init_exp == sp.Rational(-1, 2)
    assert not any(n for n, a in rep.graph.nx.nodes(data=True) if a.get("op") == "gru")


def test_lstm_with_mup_learning_rates_is_mup():
    """muP by hand (TP5 Table 8 form): hidden matrices' Adam LR ~ 1/width, readout multiplier
    1/width; input weights and vectors keep their LR."""
    base = WIDTHS[0]

    class Model(RNN):
        def __init__(self, n):
            super().__init__(n, nn.LSTM)
            self.n = n

        def forward(self, t):
            h = self.rnn(self.emb(t))[0]
            return self.head(h * (base / self.n))

    def opt(m):
        hidden = [m.rnn.weight_ih_l0, m.rnn.weight_hh_l0]
        rest = [p for p in m.parameters() if all(p is not q for q in hidden)]
        return torch.optim.Adam([{"params": hidden, "lr": 1e-2 * base / m.n},
                                 {"params": rest, "lr": 1e-2}])

    rep = analyze(Model, WIDTHS, example_inputs=IDS, make_optimizer=opt)
    assert rep.parametrization == "muP", rep.notes


class LoRA(nn.Module):
    """Frozen W0 x + B A x (Hu et al. 2021, arXiv 2106.09685), A (r x n) and B (n x r) trained,
    in muP by hand (TP5 Table 3): A is output-like (fan-in n: init 1/n, Adam LR 1/n), B is
    input-like (zero init, LR 1); the readout is multiplied by base/n."""

    def __init__(self, n, r=4):
        super().__init__()
        self.inp, self.base, self.head = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 4)
        self.inp.requires_grad_(False)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, n) / n)
        self.B = nn.Parameter(torch.zeros(n, r))
        self.n = n

    def forward(self, x):
        h = F.relu(self.inp(x))
        h = F.relu(self.base(h) + (h @ self.A.t()) @ self.B.t())
        return self.head(h * (WIDTHS[0] / self.n))


def test_lora_in_mup_learns_features_through_its_second_step():
    """A x ~ n^-1/2 at init (CLT of 1/n entries), Theta(1) once A moves (Adam: dA x ~ n * lr/n);
    A moves at step 2 (B = 0 before), so after two steps the branch B A x has changed by
    dB_1 dA_2 x = Theta(lr^2) in width: muP, feature learning. The measurement: that change
    does not fall with the width (lr 0.1, so the lr^2 term beats dB A_0 x ~ lr n^-1/2 at these
    widths; at lr 1e-2 the crossover is n ~ 1e4, FUZZ_FINDINGS class C)."""
    base, lr = WIDTHS[0], 0.1

    def opt(m):
        return torch.optim.Adam([{"params": [m.A], "lr": lr * base / m.n},
                                 {"params": [m.B, m.head.weight, m.head.bias], "lr": lr}])

    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    changes = []
    for n in (64, 1024):
        torch.manual_seed(0)
        m = LoRA(n)
        o = opt(m)
        h0 = F.relu(m.inp(x))
        before = ((h0 @ m.A.t()) @ m.B.t()).detach()
        for _ in range(2):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
        changes.append(((h0 @ m.A.t()) @ m.B.t() - before).abs().mean().item())
    assert changes[1] > 0.25 * changes[0]  # n^-1/2 would give 0.25 over a 16x width ratio

    rep = analyze(LoRA, WIDTHS, example_inputs=(x,), make_optimizer=opt)
    assert rep.params["A"].role == "output" and rep.params["B"].role == "input"
    assert rep.r == 0 and rep.regime == "feature learning"
    assert rep.parametrization == "muP", rep.notes
