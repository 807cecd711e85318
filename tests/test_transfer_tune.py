"""Tests for tensorprog.transfer.tune: proxy search, transfer, direct comparison, resume, muP check.

Expected values come from independent computations: parameter counts of models built here,
losses of the same settings trained through ``sweep``, stored losses edited by hand.
"""
import builtins
import functools
import json
import math

import numpy as np
import pytest

from tensorprog import zoo
from tensorprog.transfer import (Choice, LogUniform, TransferError, TuneResult, read_store, sweep,
                                 teacher_student_data, tune, zoo_optimizer)
from tensorprog.transfer.space import RandomSampler

MLP = functools.partial(zoo.MLP, param="mup", depth=2, d_in=8, d_out=3)
SP_MLP = functools.partial(zoo.MLP, param="sp", depth=2, d_in=8, d_out=3)
DATA = teacher_student_data(d_in=8, d_out=3, batch_size=16, teacher_width=32)
SPACE = {"lr": LogUniform(1e-3, 1e-1), "init_scale": LogUniform(0.5, 2.0)}
KW = dict(proxy_width=16, target_width=64, budget=4, steps=8, data=DATA,
          make_optimizer=zoo_optimizer("adam"), backend="serial", progress=False, check_mup="off")


def _params(width):
    return sum(p.numel() for p in MLP(width).parameters())


def test_tune_compares_transfer_with_direct_tuning():
    r = tune(MLP, SPACE, final_seeds=(0, 1), **{**KW, "check_mup": "refuse"})
    assert r.mup == "muP (tensorprog.analyze)"
    proxy = [t for t in r.trials if t["phase"] == "proxy"]
    assert len(proxy) == 4 and all(t["width"] == 16 for t in proxy)
    best = min(proxy, key=lambda t: t["loss"])
    assert r.best_proxy == best["hp"]
    # compute: parameters of the models built here x steps
    assert r.compute["proxy_search"] == 4 * _params(16) * 8
    assert r.compute["target_run"] == _params(64) * 8
    assert r.compute["direct_search"] == 4 * _params(64) * 8
    assert r.compute_ratio == pytest.approx((4 * _params(16) + _params(64)) / (4 * _params(64)))
    # the transferred setting's target loss, trained independently through sweep
    hp = r.best_proxy
    s = sweep(MLP, (16, 64), hparams={"init_scale": [hp["init_scale"], 2 * hp["init_scale"]]},
              base={"lr": hp["lr"]}, seeds=(0, 1), steps=8, data=DATA,
              make_optimizer=zoo_optimizer("adam"), backend="serial", progress=False)
    np.testing.assert_allclose([r.transfer_losses[0], r.transfer_losses[1]],
                               s["init_scale"].losses[1, 0], rtol=1e-6)
    np.testing.assert_allclose(r.transfer_loss[0], s["init_scale"].losses[1, 0].mean(), rtol=1e-6)
    direct = [t for t in r.trials if t["phase"] == "direct"]
    assert r.best_direct == min(direct, key=lambda t: t["loss"])["hp"]
    # the direct side is measured on fresh seeds only: the winning search trial (seed 0) is out;
    # seed 1 of the winning setting equals an independent sweep run of it
    assert list(r.direct_losses) == [1]
    hd = r.best_direct
    s = sweep(MLP, (16, 64), hparams={"init_scale": [hd["init_scale"], 2 * hd["init_scale"]]},
              base={"lr": hd["lr"]}, seeds=(1,), steps=8, data=DATA,
              make_optimizer=zoo_optimizer("adam"), backend="serial", progress=False)
    assert r.direct_losses[1] == pytest.approx(float(s["init_scale"].losses[1, 0, 0]), rel=1e-6)
    # best-so-far curve: non-increasing, ends at the direct search's cost
    curve = r.curve()
    assert [c for c, _ in curve] == [k * _params(64) * 8 for k in range(1, 5)]
    assert all(b <= a for (_, a), (_, b) in zip(curve, curve[1:]))
    text = str(r)
    assert "compute ratio" in text and "proxy trials (width 16)" in text
    back = TuneResult.from_dict(json.loads(r.to_json()))
    assert back.best_proxy == r.best_proxy and back.compute_ratio == pytest.approx(r.compute_ratio)


def test_resume_uses_stored_trials_and_runs_only_the_missing_ones(tmp_path):
    store = tmp_path / "trials.jsonl"
    full = tune(MLP, SPACE, store=str(store), direct=False, **KW)
    lines = store.read_text().splitlines()
    assert json.loads(lines[0])["tensorprog_tune"] == 1 and len(lines) == 1 + 4 + 1
    # a killed run: header, proxy trials 0 and 1 (trial 1's loss edited), half of the next line
    kept = [json.loads(x) for x in lines[1:] if json.loads(x)["phase"] == "proxy"][:2]
    kept[1]["loss"] = 1e-6
    store.write_text("\n".join([lines[0]] + [json.dumps(k) for k in kept]) + "\n" + lines[3][:25])
    resumed = tune(MLP, SPACE, store=str(store), direct=False, **KW)
    # the edited stored loss was used, not retrained: trial 1 now wins
    assert resumed.best_proxy == kept[1]["hp"]
    proxy = sorted((t for t in read_store(str(store)) if t["phase"] == "proxy"),
                   key=lambda t: t["index"])
    assert [t["index"] for t in proxy] == [0, 1, 2, 3]
    assert proxy[1]["loss"] == 1e-6
    # the re-run trials equal the first run's (the random sampler depends only on the index)
    first = {t["index"]: t for t in full.trials if t["phase"] == "proxy"}
    for t in proxy[2:]:
        assert t["hp"] == first[t["index"]]["hp"] and t["loss"] == pytest.approx(first[t["index"]]["loss"])
    assert resumed.meta["resumed_trials"] == 2
    with pytest.raises(TransferError, match="different search"):
        tune(MLP, SPACE, store=str(store), direct=False, **{**KW, "steps": 9})


def test_random_sampler_is_deterministic_per_index_and_in_range():
    smp = RandomSampler({"lr": LogUniform(1e-4, 1e-1), "s": Choice(("a", "b"))}, seed=3)
    draws = [smp.propose(n)[0] for n in range(50)]
    assert draws[7] == RandomSampler(smp.space, seed=3).propose(7)[0]
    assert draws[7] != RandomSampler(smp.space, seed=4).propose(7)[0]
    assert all(1e-4 <= d["lr"] <= 1e-1 for d in draws) and {d["s"] for d in draws} == {"a", "b"}
    # log-uniform: about half the draws below the geometric midpoint
    below = sum(d["lr"] < math.sqrt(1e-5) for d in draws)
    assert 12 <= below <= 38


def test_tpe_sampler_runs_and_resumes(tmp_path):
    pytest.importorskip("optuna")
    store = tmp_path / "tpe.jsonl"
    kw = {**KW, "budget": 3}
    tune(MLP, {"lr": LogUniform(1e-3, 1e-1)}, sampler="tpe", store=str(store), direct=False, **kw)
    # a killed batch can leave a gap (trial 1 missing, 0 and 2 stored): it is filled, not repeated
    lines = store.read_text().splitlines()
    store.write_text("\n".join(x for x in lines if '"index": 1,' not in x or '"proxy"' not in x) + "\n")
    gap = tune(MLP, {"lr": LogUniform(1e-3, 1e-1)}, sampler="tpe", store=str(store), direct=False,
               **kw)
    assert sorted(t["index"] for t in gap.trials if t["phase"] == "proxy") == [0, 1, 2]
    assert gap.meta["resumed_trials"] == len(lines) - 2
    r = tune(MLP, {"lr": LogUniform(1e-3, 1e-1)}, sampler="tpe", store=str(store), direct=False,
             **{**kw, "budget": 5})
    proxy = [t for t in r.trials if t["phase"] == "proxy"]
    assert sorted(t["index"] for t in proxy) == [0, 1, 2, 3, 4] and r.meta["resumed_trials"] >= 3


def test_tpe_without_optuna_names_the_extra_and_random_still_works(monkeypatch):
    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError("No module named 'optuna'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(TransferError, match=r"pip install 'tensorprog\[tune\]'"):
        tune(MLP, SPACE, sampler="tpe", **KW)
    r = tune(MLP, SPACE, sampler="random", direct=False, **{**KW, "budget": 2})
    assert len([t for t in r.trials if t["phase"] == "proxy"]) == 2


def test_sp_model_is_refused_or_warned_about():
    # a fixed list of batches: analyze gets its example input from the first batch
    fixed = [next(iter(DATA(16, 0)))]
    with pytest.raises(TransferError, match=r"SP, not muP.*check_mup='warn'"):
        tune(SP_MLP, SPACE, **{**KW, "check_mup": "refuse", "data": fixed, "loss": DATA.loss})
    with pytest.warns(UserWarning, match="not muP"):
        r = tune(SP_MLP, SPACE, direct=False, **{**KW, "budget": 2, "check_mup": "warn"})
    assert r.mup.startswith("SP")


def test_transferability_labels_and_bad_arguments():
    r = tune(MLP, {"lr": LogUniform(1e-3, 1e-1), "weight_decay": [0.0, 0.1]}, direct=False,
             **{**KW, "budget": 2})
    assert "width-transferable" in r.notes["lr"] and "not expected" in r.notes["weight_decay"]
    with pytest.raises(TransferError, match="smaller than target_width"):
        tune(MLP, SPACE, **{**KW, "proxy_width": 64})
    with pytest.raises(TransferError, match="LogUniform needs lo > 0"):
        tune(MLP, {"lr": LogUniform(0.0, 1.0)}, **KW)
    with pytest.raises(TransferError, match="neither searched nor fixed"):
        tune(MLP, {"init_scale": LogUniform(0.5, 2.0)}, **KW)
    with pytest.raises(TransferError, match="unknown sampler"):
        tune(MLP, SPACE, sampler="grid", **KW)



def test_figures_write_pngs(tmp_path):
    from tensorprog.transfer import HPSweeps, Sweep, plot_hp_panels

    r = tune(MLP, SPACE, **{**KW, "budget": 2})
    r.plot(str(tmp_path / "fig5.png"))
    x = np.log2([0.25, 0.5, 1.0, 2.0])
    rows = {label: HPSweeps({"init_scale": Sweep(widths=(16, 32), lrs=2.0 ** x, hp="init_scale",
                                                  losses=[(x - c) ** 2, (x - c - d) ** 2]),
                              "schedule": Sweep(widths=(16, 32), lrs=("constant", "cosine"),
                                                hp="schedule", scale="categorical",
                                                losses=[[1.0, 0.5], [1.0, 0.4]])})
            for label, c, d in (("SP", -1.0, -1.0), ("muP", -1.0, 0.0))}
    plot_hp_panels(rows, str(tmp_path / "fig3.png"))
    for name in ("fig5.png", "fig3.png"):
        blob = (tmp_path / name).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000


def test_direct_seed_draws_independent_candidates():
    paired = tune(MLP, SPACE, **{**KW, "budget": 2, "final_seeds": (0,)})
    own = tune(MLP, SPACE, direct_seed=7, **{**KW, "budget": 2, "final_seeds": (0,)})
    hps = lambda r, phase: [t["hp"] for t in sorted(r.trials, key=lambda t: t["index"])  # noqa: E731
                            if t["phase"] == phase]
    assert hps(paired, "direct") == hps(paired, "proxy")
    assert hps(own, "proxy") == hps(paired, "proxy")
    assert hps(own, "direct") == [RandomSampler(own_space(), 7).propose(n)[0] for n in range(2)]


def own_space():
    from tensorprog.transfer.space import check_space
    return check_space(SPACE)


def test_direct_loss_leaves_out_the_selected_search_trial():
    """Hand-made records: the winning direct search trial (seed 0) has a lucky 1.0, its re-runs
    at seeds 1 and 2 have 2.0 and 3.0; the direct loss is their mean 2.5 +- 0.5, not 2.0."""
    hp_a, hp_b = {"lr": 0.01}, {"lr": 0.02}
    rec = lambda phase, i, w, s, hp, loss: {"phase": phase, "index": i, "width": w,  # noqa: E731
                                           "seed": s, "hp": hp, "loss": loss, "compute": w}
    records = [rec("proxy", 0, 16, 0, hp_a, 1.5), rec("proxy", 1, 16, 0, hp_b, 1.6),
               rec("transfer", 0, 64, 1, hp_a, 2.2), rec("transfer", 0, 64, 2, hp_a, 2.4),
               rec("direct", 0, 64, 0, hp_b, 1.0), rec("direct", 1, 64, 0, hp_a, 1.8),
               rec("direct_eval", 0, 64, 1, hp_b, 2.0), rec("direct_eval", 0, 64, 2, hp_b, 3.0)]
    r = TuneResult.build(records, budget=2, proxy_width=16, target_width=64, steps=1, seed=0,
                         final_seeds=(0, 1, 2), space={}, base={}, sampler="random", notes={},
                         mup="", name="", meta={})
    assert r.best_direct == hp_b and r.direct_losses == {1: 2.0, 2: 3.0}
    assert r.direct_loss == pytest.approx((2.5, 0.5))
    assert r.transfer_loss == pytest.approx((2.3, 0.1))


def test_from_dict_derives_the_comparison_from_the_stored_trials():
    """A stored result whose summary still counts the winning search trial (as files written
    before the fix did) reads back with it left out; an edited trial loss moves the summary."""
    r = tune(MLP, SPACE, final_seeds=(0, 1), **{**KW, "budget": 2})
    d = json.loads(r.to_json())
    d["direct_losses"]["0"] = -1.0                      # an old file's biased entry
    back = TuneResult.from_dict(d)
    assert back.direct_losses == r.direct_losses and 0 not in back.direct_losses
    evals = [t for t in d["trials"] if t["phase"] == "direct_eval"]
    evals[0]["loss"] = 123.0
    assert TuneResult.from_dict(d).direct_losses[evals[0]["seed"]] == 123.0


def test_proxy_seeds_average_each_setting_over_its_seeds():
    """Each proxy setting trains at every proxy seed; its loss is their mean (computed here from
    the trial records), the winner is the setting with the lowest mean, the proxy's compute
    counts every seed, and the direct search still trains once per setting."""
    r = tune(MLP, SPACE, proxy_seeds=(0, 5), final_seeds=(1,), **KW)
    proxy = [t for t in r.trials if t["phase"] == "proxy"]
    assert sorted((t["index"], t["seed"]) for t in proxy) == [(n, s) for n in range(4) for s in (0, 5)]
    means = {n: np.mean([t["loss"] for t in proxy if t["index"] == n]) for n in range(4)}
    best = min(means, key=means.get)
    assert r.best_proxy == next(t["hp"] for t in proxy if t["index"] == best)
    assert r.compute["proxy_search"] == 2 * 4 * _params(16) * 8
    assert len([t for t in r.trials if t["phase"] == "direct"]) == 4
    assert r.curve("proxy")[-1] == (2 * 4 * _params(16) * 8, pytest.approx(min(means.values())))
    with pytest.raises(TransferError, match="proxy_seeds"):
        tune(MLP, SPACE, proxy_seeds=(0, 0), **KW)
    with pytest.raises(TransferError, match="random"):
        tune(MLP, SPACE, proxy_seeds=(0, 1), sampler="tpe", **KW)


def test_proxy_budget_sizes_the_proxy_search_only(tmp_path):
    """proxy_budget=6 with budget=2: six proxy settings (the random sampler's first six, drawn
    here independently), two direct ones; compute counts six proxy trials (parameters of the
    models built here x steps); the result, its JSON and a resumed store say the same."""
    store = str(tmp_path / "t.jsonl")
    kw = {**KW, "budget": 2, "final_seeds": (1,)}
    r = tune(MLP, SPACE, proxy_budget=6, store=store, **kw)
    proxy = sorted((t for t in r.trials if t["phase"] == "proxy"), key=lambda t: t["index"])
    assert [t["hp"] for t in proxy] == [RandomSampler(own_space(), 0).propose(n)[0] for n in range(6)]
    assert len([t for t in r.trials if t["phase"] == "direct"]) == 2
    assert r.best_proxy == min(proxy, key=lambda t: t["loss"])["hp"]
    assert r.compute["proxy_search"] == 6 * _params(16) * 8
    assert r.compute["direct_search"] == 2 * _params(64) * 8
    assert "(6 trials" in r.summary() and "(2 trials)" in r.summary()
    back = TuneResult.from_dict(json.loads(r.to_json()))
    assert back.budget_of("proxy") == 6 and back.compute == r.compute
    again = tune(MLP, SPACE, proxy_budget=6, store=store, **kw)      # all stored: nothing re-run
    assert len(again.trials) == len(r.trials) and again.best_proxy == r.best_proxy
    with pytest.raises(TransferError, match="another|signature|differ"):
        tune(MLP, SPACE, proxy_budget=5, store=store, **kw)
    with pytest.raises(TransferError, match="proxy_budget"):
        tune(MLP, SPACE, proxy_budget=0, **kw)


@pytest.mark.parametrize("transfer, word", [((2.0, 2.2), "within"), ((1.0, 1.2), "better"),
                                            ((3.0, 3.2), "worse")])
def test_comparison_says_better_within_or_worse(transfer, word):
    """Hand-made losses: direct 2.1 +- 0.1 (seeds 1, 2: 2.0, 2.2); muTransfer's mean 2.1, 1.1 or
    3.1 with the same spread: combined stderr sqrt(0.1^2 + 0.1^2) = 0.141, bound 0.283."""
    hp_a, hp_b = {"lr": 0.01}, {"lr": 0.02}
    rec = lambda phase, i, s, hp, loss: {"phase": phase, "index": i, "width": 16 if phase == "proxy"  # noqa: E731
                                        else 64, "seed": s, "hp": hp, "loss": loss, "compute": 1}
    records = [rec("proxy", 0, 0, hp_a, 1.0), rec("direct", 0, 0, hp_b, 1.0),
               rec("transfer", 0, 1, hp_a, transfer[0]), rec("transfer", 0, 2, hp_a, transfer[1]),
               rec("direct_eval", 0, 1, hp_b, 2.0), rec("direct_eval", 0, 2, hp_b, 2.2)]
    r = TuneResult.build(records, budget=1, proxy_width=16, target_width=64, steps=1, seed=0,
                         final_seeds=(1, 2), space={}, base={}, sampler="random", notes={},
                         mup="", name="", meta={})
    assert r.comparison == word
    assert r.within_noise is (word != "worse")
    assert {"within": "within the noise", "better": "lower, beyond the noise",
            "worse": "worse beyond the noise"}[word] in r.summary()
