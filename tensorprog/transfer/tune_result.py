"""The result of ``tune``: the trials, the proxy-tuned and directly tuned settings, their losses at
the target width, and the compute each way cost (TP5 arXiv 2203.03466 Figure 5).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import TransferError
from .hparams import describe_point

__all__ = ["TuneResult", "settings_of"]


def _loss(rec: dict) -> float:
    return math.inf if rec.get("loss") is None else float(rec["loss"])


def _clean(obj):
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def settings_of(records, phase: str, budget: int) -> list[dict]:
    """The search settings of ``phase`` in index order, each trained at one or more seeds:
    [{"index", "hp", "loss" (mean over its seeds; None if any diverged), "seeds", "compute"
    (summed over its seeds)}]."""
    by: dict[int, list] = {}
    for r in records:
        if r["phase"] == phase and r["index"] < budget:
            by.setdefault(r["index"], []).append(r)
    out = []
    for n in sorted(by):
        rs = by[n]
        losses = [r["loss"] for r in rs]
        out.append({"index": n, "hp": rs[0]["hp"], "width": rs[0]["width"],
                    "loss": None if any(v is None for v in losses) else float(np.mean(losses)),
                    "seeds": sorted(r["seed"] for r in rs),
                    "compute": int(sum(r["compute"] for r in rs))})
    return out


def _mean_err(values) -> tuple[float, float]:
    """(mean, standard error of the mean; nan for one value)."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


@dataclass
class TuneResult:
    """What ``tune`` found (all plain data; ``to_json`` / ``from_json`` round-trip it).

    ``trials``: every trial record {phase, index, width, seed, hp, loss (None = diverged),
    compute (parameter-steps), seconds}. ``best_proxy`` / ``best_direct``: the winning settings.
    ``transfer_losses`` / ``direct_losses``: {seed: final training loss at the target width} of
    those settings; ``direct_losses`` leaves out the search seed, whose trial of the winning
    setting was picked for its low loss (the minimum of ``budget`` noisy losses is biased low).
    ``compute``: parameter-steps of the proxy search, of one target run, of the direct search;
    ``compute_ratio`` = (proxy search + one target run) / direct search. ``budget``: settings
    tried by the direct search, and by the proxy's unless ``proxy_budget`` says otherwise.
    """

    trials: list
    budget: int
    proxy_width: int
    target_width: int
    steps: int
    best_proxy: dict
    transfer_losses: dict
    best_direct: dict | None = None
    direct_losses: dict = field(default_factory=dict)
    compute: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    sampler: str = "random"
    notes: dict = field(default_factory=dict)
    mup: str = ""
    name: str = ""
    meta: dict = field(default_factory=dict)
    proxy_budget: int | None = None

    def budget_of(self, phase: str) -> int:
        """Settings tried by the search of ``phase`` ("proxy" or "direct")."""
        return self.proxy_budget or self.budget if phase == "proxy" else self.budget

    @classmethod
    def build(cls, records, *, budget, proxy_width, target_width, steps, seed, final_seeds, space,
              base, sampler, notes, mup, name, meta, proxy_budget=None) -> "TuneResult":
        def rows(phase):
            return settings_of(records, phase, proxy_budget or budget if phase == "proxy" else budget)

        def best(phase):
            finite = [r for r in rows(phase) if r["loss"] is not None]
            return min(finite, key=lambda r: (r["loss"], r["index"])) if finite else None

        bp = best("proxy")
        if bp is None:
            raise TransferError("every proxy trial diverged")
        transfer = {r["seed"]: _loss(r) for r in records
                    if r["phase"] == "transfer" and r["hp"] == bp["hp"] and r["seed"] in final_seeds}
        compute = {"proxy_search": int(sum(r["compute"] for r in rows("proxy"))),
                   "target_run": int(next(r["compute"] for r in records if r["phase"] == "transfer"))}
        bd, direct = best("direct"), {}
        if bd is not None:
            # not the search seed: that trial is the minimum over the search (selected on its own
            # noise, so biased low); its seed cannot be re-drawn, so the comparison leaves it out
            direct = {r["seed"]: _loss(r) for r in records if r["phase"] == "direct_eval"
                      and r["hp"] == bd["hp"] and r["seed"] in final_seeds and r["seed"] != seed}
            compute["direct_search"] = int(sum(r["compute"] for r in rows("direct")))
        return cls(trials=list(records), budget=budget, proxy_width=proxy_width,
                   target_width=target_width, steps=steps, best_proxy=dict(bp["hp"]),
                   transfer_losses=transfer, best_direct=None if bd is None else dict(bd["hp"]),
                   direct_losses=direct, compute=compute, space=space, base=base, sampler=sampler,
                   notes=notes, mup=mup, name=name, meta=meta, proxy_budget=proxy_budget)

    # ---- the comparison
    @property
    def transfer_loss(self) -> tuple[float, float]:
        """(mean, standard error) over seeds of the target loss with the proxy-tuned setting."""
        return _mean_err(list(self.transfer_losses.values()))

    @property
    def direct_loss(self) -> tuple[float, float]:
        """(mean, standard error) over seeds of the target loss with the directly tuned setting."""
        return _mean_err(list(self.direct_losses.values()))

    @property
    def compute_ratio(self) -> float:
        """(proxy search + one target run) / direct search, in parameter-steps."""
        d = self.compute.get("direct_search")
        if not d:
            return math.nan
        return (self.compute["proxy_search"] + self.compute["target_run"]) / d

    @property
    def within_noise(self) -> bool | None:
        """|transfer - direct| <= 2 x the combined standard error (None: fewer than two seeds on
        a side, so the noise is unknown). Lower transfer loss counts as within."""
        (mt, et), (md, ed) = self.transfer_loss, self.direct_loss
        if not (math.isfinite(et) and math.isfinite(ed)):
            return None
        return mt - md <= 2.0 * math.sqrt(et ** 2 + ed ** 2)

    @property
    def comparison(self) -> str | None:
        """"better" / "worse": muTransfer's target loss is lower / higher than direct tuning's by
        more than 2 combined standard errors; "within": closer; None: the noise is unknown."""
        (mt, et), (md, ed) = self.transfer_loss, self.direct_loss
        if not (math.isfinite(et) and math.isfinite(ed)):
            return None
        bound = 2.0 * math.sqrt(et ** 2 + ed ** 2)
        return "better" if mt < md - bound else "worse" if mt - md > bound else "within"

    def curve(self, phase: str = "direct") -> list[tuple[int, float]]:
        """[(cumulative parameter-steps, best loss so far)] over the search trials in index order."""
        out, spent, best = [], 0, math.inf
        for r in settings_of(self.trials, phase, self.budget_of(phase)):
            spent += r["compute"]
            best = min(best, _loss(r))
            out.append((spent, best))
        return out

    # ---- output
    def table(self, phase: str = "proxy", top: int | None = 10) -> str:
        """The trials of ``phase`` ranked by loss (diverged last)."""
        rows = sorted(settings_of(self.trials, phase, self.budget_of(phase)),
                      key=lambda r: (_loss(r), r["index"]))
        if top:
            rows = rows[:top]
        names = list(self.space)
        head = f"{'rank':>4s} {'trial':>5s} " + " ".join(f"{n[:12]:>12s}" for n in names) + \
            f" {'loss':>9s}"
        lines = [f"{phase} trials (width {rows[0]['width'] if rows else '?'}):", head]
        for k, r in enumerate(rows, 1):
            cells = []
            for n in names:
                v = r["hp"].get(n)
                cells.append(f"{v:12.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool)
                             else f"{str(v)[:12]:>12s}")
            loss = f"{r['loss']:9.4f}" if r["loss"] is not None else "  diverged"
            lines.append(f"{k:4d} {r['index']:5d} " + " ".join(cells) + f" {loss}")
        return "\n".join(lines)

    def summary(self) -> str:
        (mt, et), (md, ed) = self.transfer_loss, self.direct_loss
        c = self.compute
        lines = [f"muTransfer: tuned at width {self.proxy_width} ({self.budget_of('proxy')} trials, "
                 f"{self.sampler}), copied to width {self.target_width}: "
                 f"{describe_point(self.best_proxy)}",
                 f"  target loss {mt:.4f} +- {et:.4f} over seeds {sorted(self.transfer_losses)}; "
                 f"cost {c['proxy_search'] + c['target_run']:.3g} parameter-steps (search "
                 f"{c['proxy_search']:.3g} + one target run {c['target_run']:.3g})"]
        if self.best_direct is not None:
            lines += [f"direct: tuned at width {self.target_width} ({self.budget_of('direct')} trials): "
                      f"{describe_point(self.best_direct)}",
                      f"  target loss {md:.4f} +- {ed:.4f} over seeds {sorted(self.direct_losses)}; "
                      f"cost {c['direct_search']:.3g} parameter-steps",
                      f"compute ratio muTransfer / direct: {self.compute_ratio:.3f}; "
                      + {"within": "losses within the noise (2 standard errors)",
                         "better": "muTransfer's loss is lower, beyond the noise",
                         "worse": "muTransfer's loss is worse beyond the noise",
                         None: "noise unknown (give two or more final_seeds besides the search seed)"}[self.comparison]]
        return "\n".join(lines)

    def __str__(self) -> str:
        parts = [f"tune{': ' + self.name if self.name else ''} (model: {self.mup})"]
        parts += [f"  {k}: {v}" for k, v in self.notes.items()]
        parts += [self.table("proxy"), ""]
        if self.best_direct is not None:
            parts += [self.table("direct"), ""]
        parts.append(self.summary())
        return "\n".join(parts)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["transfer_losses"] = {str(k): v for k, v in self.transfer_losses.items()}
        d["direct_losses"] = {str(k): v for k, v in self.direct_losses.items()}
        d["compute_ratio"] = self.compute_ratio if math.isfinite(self.compute_ratio) else None
        return _clean(json.loads(json.dumps(d, default=repr)))

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "TuneResult":
        """Inverse of ``to_dict``. The comparison (best settings, target losses, compute) is
        derived again from the stored trials, so a file written by an older version reads back
        with today's rules (the direct side's search seed left out since this version)."""
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("transfer_losses", "direct_losses"):
            d[k] = {int(s): (math.inf if v is None else v) for s, v in d.get(k, {}).items()}
        search = [t for t in d.get("trials", ()) if t.get("phase") == "proxy"]
        if not search or any(t.get("compute") is None for t in d["trials"]):
            return cls(**d)
        search = [t for t in d["trials"] if t.get("phase") == "direct"] or search
        seeds = sorted(set(d["transfer_losses"]) | set(d["direct_losses"]))
        return cls.build(d["trials"], budget=d["budget"], proxy_width=d["proxy_width"],
                         target_width=d["target_width"], steps=d["steps"], seed=search[0]["seed"],
                         final_seeds=tuple(seeds), space=d.get("space", {}), base=d.get("base", {}),
                         sampler=d.get("sampler", "random"), notes=d.get("notes", {}),
                         mup=d.get("mup", ""), name=d.get("name", ""), meta=d.get("meta", {}),
                         proxy_budget=d.get("proxy_budget"))

    def plot(self, path: str | None = None, *, ax=None):
        """TP5 Figure 5 style: best target loss so far against compute for direct tuning (a step
        curve over its trials), and muTransfer's target loss at its cost (proxy search + one
        target run), with +- one standard error over seeds. Log-scale compute axis."""
        from .plots import plot_tune

        return plot_tune(self, path, ax=ax)
