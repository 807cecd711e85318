"""Out of memory (issue 11, item 2): the estimate from the traced graph, the refusal before
training, and allocation failures reported with their width.

Expected numbers are counted by hand for a known MLP (parameters and activations at a width far
above the traced ones), never read from the estimate itself."""
import pytest
import torch
import torch.nn as nn

from tensorprog.errors import CheckError
from tensorprog.graph.trace import trace
from tensorprog.measure.check import check
from tensorprog.measure.memory import available_memory, memory_estimate, out_of_memory

D_IN, D_OUT, BATCH = 8, 3, 5


def mlp(w):
    return nn.Sequential(nn.Linear(D_IN, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                         nn.Linear(w, D_OUT))


def inputs(w):
    return (torch.randn(BATCH, D_IN),)


@pytest.fixture(scope="module")
def graph():
    return trace(mlp, (16, 32, 64), example_inputs=inputs)


def test_estimate_counts_parameters_state_and_activations_by_hand(graph):
    w = 4096  # extrapolated from widths 16..64 by the width exponents of every dim
    params = D_IN * w + w + w * w + w + w * D_OUT + D_OUT
    # forward: the input, linear, relu, linear, relu (B x w each) and the readout (B x d_out)
    acts = BATCH * D_IN + 4 * BATCH * w + BATCH * D_OUT
    est = memory_estimate(graph, w, torch.float32, "adam")
    assert est["parameters"] == 4 * params and est["gradients"] == 4 * params
    assert est["optimizer_state"] == 2 * 4 * params  # Adam's two moments
    assert est["activations"] == 4 * acts
    assert est["total"] == 4 * (4 * params + acts)
    est64 = memory_estimate(graph, w, torch.float64, "sgd")
    assert est64["parameters"] == 8 * params and est64["optimizer_state"] == 0


def test_check_refuses_a_width_over_the_limit_naming_it(graph):
    w = 128
    need = memory_estimate(graph, w, torch.float32, "adam")["total"]
    with pytest.raises(CheckError, match=rf"width {w} needs an estimated .* more than the .* "
                                         r"given as max_memory.*max_memory=None"):
        check(mlp, (16, 32, 64, w), example_inputs=inputs, steps=1, seeds=1, device="cpu",
              progress=False, graph=graph, max_memory=need - 1)
    # just enough: it runs
    rep = check(mlp, (16, 32, 64, w), example_inputs=inputs, steps=1, seeds=1, device="cpu",
                progress=False, graph=graph, max_memory=need)
    assert rep.widths == (16, 32, 64, w)


def test_default_limit_is_the_free_memory():
    limit, where = available_memory(torch.device("cpu"))
    meminfo = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            meminfo[k] = int(v.split()[0]) * 1024
    # the same quantity (the kernel's MemAvailable) read twice a moment apart
    assert limit == pytest.approx(meminfo["MemAvailable"], rel=0.2) and "available" in where


def test_allocation_failures_name_the_width():
    for err in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                MemoryError(), RuntimeError("DefaultCPUAllocator: not enough memory: you tried "
                                            "to allocate 123 bytes. out of memory")):
        with pytest.raises(CheckError, match="out of memory at width 2048"):
            with out_of_memory(2048, torch.device("cpu")):
                raise err
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors pass through
        with out_of_memory(2048, torch.device("cpu")):
            raise RuntimeError("shape mismatch")


class Huge(nn.Module):
    def __init__(self, w):
        super().__init__()
        if w >= 128:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        self.lin = nn.Linear(D_IN, w)

    def forward(self, x):
        return self.lin(x)


def test_factory_out_of_memory_is_a_check_error_naming_the_width():
    with pytest.raises(CheckError, match="out of memory at width 128"):
        check(Huge, (16, 32, 64, 128), example_inputs=inputs, steps=1, seeds=1, device="cpu",
              progress=False, max_memory=None)
