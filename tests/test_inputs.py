"""Bad widths, base widths and step counts are one clear error at every public entry point, and
the caller's random state survives a call (issue 11 item 1, "inputs coerced without a word").

Today's coercions these tests catch: ``widths="128"`` iterates as "1", "2", "8"; ``int(128.5)``
truncates; ``True`` is an int; repeated widths are merged; ``base_width=0`` is accepted;
``analyze(steps=0)`` gives a verdict; ``trace`` reseeds torch's global generator."""
import os
import random
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from tensorprog import TensorprogError, analyze, apply_mup, check, rules, trace
from tensorprog.errors import CheckError, TraceError, TransferError
from tensorprog.validate import as_int, check_widths


class Tiny(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.a, self.b = nn.Linear(4, n), nn.Linear(n, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


EX = (torch.ones(2, 4),)

BAD_WIDTHS = [
    ("128", "sequence of positive integers"),
    (b"128", "sequence of positive integers"),
    (128, "sequence of positive integers"),
    ((64, 128.5), "whole numbers"),
    ((True, 64), "bool"),
    ((64, 64, 128), "repeated"),
    ((64,), "at least 2"),
    ((), "at least 2"),
    ((0, 64), "positive"),
    ((-64, 64), "positive"),
    ((64, "128"), "must be an integer"),
    ((64, float("nan")), "must be an integer"),
    ((64, None), "must be an integer"),
]


def _sweep(widths):
    from tensorprog.transfer import sweep

    return sweep(Tiny, widths, (1e-3, 1e-2), steps=1, data=[EX], loss=lambda o, b: o.sum(),
                 progress=False, workers=1)


ENTRY_POINTS = {
    "trace": (lambda w: trace(Tiny, w, example_inputs=EX), TraceError),
    "analyze": (lambda w: analyze(Tiny, w, example_inputs=EX), TensorprogError),
    "check": (lambda w: check(Tiny, w, example_inputs=EX, steps=1, seeds=1, progress=False),
              CheckError),
    "check trace_widths": (lambda w: check(Tiny, (8, 16), trace_widths=w, example_inputs=EX,
                                           steps=1, seeds=1, progress=False), CheckError),
    "rules": (lambda w: rules(Tiny, w, example_inputs=EX), TensorprogError),
    "apply_mup": (lambda w: apply_mup(Tiny, 8, widths=w, example_inputs=EX), TensorprogError),
    "trace init_widths": (lambda w: trace(Tiny, (8, 16), example_inputs=EX, device="meta",
                                          init_widths=w), TraceError),
    "sweep": (_sweep, TransferError),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("widths, message", BAD_WIDTHS, ids=[repr(w) for w, _ in BAD_WIDTHS])
def test_bad_widths_are_an_error_everywhere(entry, widths, message):
    call, error = ENTRY_POINTS[entry]
    with pytest.raises(error, match=message):
        call(widths)


def test_integral_floats_and_numpy_ints_are_widths():
    """The documented rule: exactly integral floats and NumPy integers are ints."""
    assert check_widths((256.0, np.int64(64), 128)) == [64, 128, 256]
    assert as_int(np.float32(32.0), "w") == 32
    with pytest.raises(TensorprogError, match="bool"):
        as_int(np.bool_(True), "w")


@pytest.mark.parametrize("base_width, message", [(0, "positive"), (-8, "positive"),
                                                 (8.5, "whole numbers"), (True, "bool"),
                                                 ("8", "must be an integer")])
def test_bad_base_width(base_width, message):
    with pytest.raises(TensorprogError, match=message):
        apply_mup(Tiny, base_width, example_inputs=EX)
    with pytest.raises(TensorprogError, match=message):
        rules(Tiny, (8, 16), example_inputs=EX, base_width=base_width)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "3", None])
def test_bad_steps(steps):
    with pytest.raises(TensorprogError, match="steps must be a positive integer"):
        analyze(Tiny, (8, 16), example_inputs=EX, steps=steps)
    with pytest.raises(CheckError, match="steps must be a positive integer"):
        check(Tiny, (8, 16), example_inputs=EX, steps=steps, seeds=1, progress=False)


def test_check_rejects_bool_seeds():
    with pytest.raises(CheckError, match="seeds"):
        check(Tiny, (8, 16), example_inputs=EX, steps=1, seeds=True, progress=False)


def _draws():
    return torch.rand(4), random.random(), np.random.rand()


@pytest.mark.parametrize("call", [
    lambda: analyze(Tiny, (8, 16), example_inputs=EX),
    lambda: trace(Tiny, (8, 16), example_inputs=EX, device="meta"),
    lambda: rules(Tiny, (8, 16), example_inputs=EX),
], ids=["analyze", "trace-meta", "rules"])
def test_caller_random_state_is_restored(call):
    """torch, Python and NumPy draws after the call equal those of a fresh generator with the
    caller's seed, as if the call had not happened."""
    def seed():
        torch.manual_seed(123), random.seed(123), np.random.seed(123)
    seed()
    expected = _draws()
    seed()
    call()
    got = _draws()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_random_state_restored_on_error():
    class Broken(Tiny):
        def forward(self, x):
            raise RuntimeError("boom")

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with pytest.raises(TensorprogError):
        analyze(Broken, (8, 16), example_inputs=EX)
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- eager forward


class TokensIntoLinear(nn.Module):
    """Integer token ids fed to a Linear: torch.export traces it, PyTorch cannot run it."""

    def __init__(self, n):
        super().__init__()
        self.a, self.b = nn.Linear(16, n), nn.Linear(n, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


TOKENS = (torch.randint(0, 10, (4, 16), generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_model_that_cannot_run_gets_the_eager_error_not_a_verdict(device):
    with pytest.raises(RuntimeError, match="same dtype"):  # the premise: eager PyTorch refuses
        TokensIntoLinear(8)(*TOKENS)
    with pytest.raises(TraceError, match="does not run on the example inputs.*same dtype"):
        analyze(TokensIntoLinear, (8, 16), example_inputs=TOKENS, device=device)
    with pytest.raises(CheckError, match="does not run on the example inputs"):
        check(TokensIntoLinear, (8, 16), example_inputs=TOKENS, steps=1, seeds=1, progress=False)


def test_eager_forward_leaves_buffers_as_built():
    from tensorprog.graph.export import eager_forward

    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    before = {k: b.clone() for k, b in model.named_buffers()}
    eager_forward(model, (torch.randn(5, 4),), {}, 8)
    assert all(torch.equal(b, before[k]) for k, b in model.named_buffers())


class RescalesOnFirstForward(torch.nn.Module):
    """Like HF's RWKV in eval mode: the first forward changes Python state (a flag) and with it
    the program later forwards run."""

    def __init__(self, n):
        super().__init__()
        self.fc, self.out = torch.nn.Linear(8, n), torch.nn.Linear(n, 1)
        self.rescaled = False

    def forward(self, x):
        h = self.fc(x)
        if not self.rescaled:
            self.rescaled = True
        else:
            h = h / 2
        return self.out(torch.relu(h))


def test_the_eager_forward_leaves_the_traced_model_as_built():
    # the eager check runs on a copy: every width is exported from the model as its factory built it
    from tensorprog.graph.trace import trace as trace_widths
    g = trace_widths(RescalesOnFirstForward, (16, 32), example_inputs=(torch.randn(4, 8),))
    assert set(g.widths) == {16, 32}


# ----------------------------------------------------------------------------- output paths

def test_check_file_path_rules(tmp_path):
    from tensorprog.validate import check_file_path

    with pytest.raises(TensorprogError, match=r"is a directory; give a file name inside it, e\.g\. "
                                              + re.escape(os.path.join(str(tmp_path), "t.jsonl"))):
        check_file_path(tmp_path, "store", example="t.jsonl")
    with pytest.raises(TensorprogError, match=r"does not exist; create it .*\(so it is\)"):
        check_file_path(str(tmp_path / "no" / "x.json"), "--json", why="so it is")
    with pytest.raises(TensorprogError, match="must be a file path"):
        check_file_path(5, "store")
    assert check_file_path(tmp_path / "new.json", "--json") == str(tmp_path / "new.json")


def test_cli_outputs_and_the_tune_store_refuse_an_unwritable_folder(tmp_path, monkeypatch):
    """One rule for both (``validate.check_file_path``): a new file needs a writable folder.
    ``os.access`` is stubbed to deny writes into ``ro`` (a real read-only folder is writable by
    root, which runs this suite on some machines)."""
    from tensorprog.cli import build_parser
    from tensorprog.cli.load import check_outputs
    from tensorprog.transfer.tune import check_store_path

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) != str(ro) and real(p, mode, **kw))
    with pytest.raises(TransferError, match="store=.* is not readable and writable"):
        check_store_path(str(ro / "trials.jsonl"))
    args = build_parser().parse_args(["rules", "--example", "mlp", "--json", str(ro / "r.json")])
    with pytest.raises(TensorprogError, match="--json .* is not writable"):
        check_outputs(args)
    check_store_path(str(tmp_path / "trials.jsonl"))  # a writable folder is fine
