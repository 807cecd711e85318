"""Differential fuzzing: random architectures (tensorprog.zoo.fuzz), the engine against check.

The cheap tests pin the generator: deterministic per seed, every drawn model runs forward and
backward at two widths, and the optimizer follows each layer's learning-rate exponent. The slow
test runs ``analyze`` and ``check`` on a handful of seeded architectures (widths 64 .. 1024, two
steps, two seeds) and asserts (a) no crash: any exception that is not a TensorprogError fails,
and (b) an agreement rate confirmed / (confirmed + refuted) above a floor set from what is
measured today (benchmarks/FUZZ_FINDINGS.md explains every disagreement class).
"""
import pytest
import torch

from tensorprog import analyze
from tensorprog.errors import TensorprogError
from tensorprog import check
from tensorprog.zoo import fuzz


def test_generator_is_deterministic_per_seed():
    for seed in range(20):
        a, b = fuzz.random_architecture(seed), fuzz.random_architecture(seed)
        assert a == b and a.describe() == b.describe()
    descriptions = {fuzz.random_architecture(s).describe() for s in range(20)}
    assert len(descriptions) == 20  # seeds differ
    for w in (64, 128):  # same seed, same width -> same weights
        spec = fuzz.random_architecture(3)
        torch.manual_seed(0)
        m1 = fuzz.build(spec)(w)
        torch.manual_seed(0)
        m2 = fuzz.build(spec)(w)
        for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2)


def test_every_generated_model_runs():
    seen = set()
    for seed in range(40):
        spec = fuzz.random_architecture(seed)
        seen |= {b.kind for b in spec.blocks} | {spec.readout, spec.optimizer}
        seen |= {b.split for b in spec.blocks if b.kind == "attn"}
        seen |= {b.attn_impl for b in spec.blocks if b.kind == "attn"}
        for w in (64, 128):
            model = fuzz.build(spec)(w)
            (x,) = fuzz.example_inputs(spec)(w)
            assert x.shape == (fuzz.BATCH, fuzz.SEQ, fuzz.D_IN)
            y = model(x)
            assert y.shape == (fuzz.BATCH, fuzz.SEQ, fuzz.D_OUT) and torch.isfinite(y).all()
            opt = fuzz.make_optimizer(spec)(model)
            y.square().mean().backward()
            opt.step()
    # the vocabulary is exercised by 40 seeds
    assert {"linear", "einsum", "attn", "norm", "mulsum", "mulmean", "linear", "adam", "sgd",
            "slice", "chunk", "view", "sdpa", "fold", "manual"} <= seen


def test_learning_rate_follows_exponent():
    spec = fuzz.random_architecture(0)
    for w in (64, 256):
        model = fuzz.build(spec)(w)
        opt = fuzz.make_optimizer(spec)(model)
        exps = model.lr_exponents()
        for g in opt.param_groups:
            for p in g["params"]:
                name = next(n for n, q in model.named_parameters() if q is p)
                want = spec.base_lr * (w / fuzz.BASE_WIDTH) ** float(exps[name])
                assert g["lr"] == pytest.approx(want)


def test_exclude_leaves_constructs_out():
    for seed in range(20):
        spec = fuzz.random_architecture(seed, exclude={"einsum", "attn", "mulsum", "mulmean", "sgd"})
        assert spec.optimizer == "adam" and spec.readout == "linear"
        assert all(b.kind in ("linear", "norm") for b in spec.blocks)
    with pytest.raises(ValueError):
        fuzz.random_architecture(0, exclude={"conv"})


# Architectures for the slow test: the first 8 seeds (a mix of every construct).
SLOW_SEEDS = range(8)
# Agreement floor. Measured on seeds 0..7 (CPU, widths 64..1024, 2 steps, 2 seeds): 70.2%
# (657 confirmed, 279 refuted); on seeds 0..59, 69.4%. The disagreements are documented classes in
# benchmarks/FUZZ_FINDINGS.md (pre-asymptotic competing terms, float32 rounding of tiny SGD
# updates, finite Adam / norm eps, per-parameter update exponents of packed weights). The floor
# sits a margin below today's rate, so a regression fails.
AGREEMENT_FLOOR = 0.62


@pytest.mark.slow
def test_fuzz_analyze_and_check_agree():
    confirmed = refuted = 0
    crashes = []
    for seed in SLOW_SEEDS:
        spec = fuzz.random_architecture(seed)
        factory, inputs, opt = fuzz.build(spec), fuzz.example_inputs(spec), fuzz.make_optimizer(spec)
        try:
            analyze(factory, (64, 128, 256), example_inputs=inputs, make_optimizer=opt)
            rep = check(factory, (64, 128, 256, 512, 1024), example_inputs=inputs,
                        make_optimizer=opt, steps=2, seeds=2, progress=False)
        except TensorprogError:
            continue  # a refusal with an explanation is not a crash
        except Exception as e:  # noqa: BLE001
            crashes.append(f"{spec.describe()}: {type(e).__name__}: {e}")
            continue
        counts = rep.counts()
        confirmed += counts["confirmed"]
        refuted += counts["refuted"]
    assert not crashes, "\n".join(crashes)
    rate = confirmed / (confirmed + refuted)
    assert rate >= AGREEMENT_FLOOR, f"agreement {rate:.3f} ({confirmed} confirmed, {refuted} refuted)"
