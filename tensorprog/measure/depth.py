"""Check in depth: measure the residual stream and the block outputs at growing depths (fixed
width) and confirm or refute the depth exponents of ``predict.depth.analyze_depth``.

The width check's machinery, reused as it is: each depth's exported program is run by
``measure.runner.Runner`` (the model's own parameters fed to the ATen graph, the optimizer from
``make_optimizer`` on the model), and every prediction is judged by ``measure.judge.judge`` with
the same ``Tolerance`` and status rules as the width check (``measure/check.py``'s docstring),
with the depth L in place of the width n: a log-log slope over (depth, seed) points.

Measured per depth and seed, on a fixed batch:

* ``stream``: mean |x_L| of the stream after the last branch, at init (predicted
  L^{max(0, 1/2 - alpha)} with pre-norm branches, TP6 §2) and its change mean |x_L^T - x_L^0|
  after T steps (predicted L^{1 - alpha - gamma}; a positive exponent is judged as growth);
* ``block``: per branch kind, the mean over its branches of mean |m g(x)| (the add's branch
  input, multiplier included): at init L^-alpha; its change after T steps has two terms, the
  block's own update L^{-alpha - gamma} and the change of its input, up to
  L^{-alpha + max(-gamma, relative change of the stream)} (a normalised branch's input change
  saturating at Theta(1)). At small learning rates and few steps the first term leads at
  practical depths (GPT in Depth-muP, depths 2..32: slopes -0.72 and -0.92 against -1/2
  asymptotically), so a slope anywhere between the two exponents (within the tolerance)
  confirms, as the width check judges a saturating op.
* Known limit: the stream at init is x_0 + a sum of L branch outputs, sqrt(a + b L^{1 - 2 alpha})
  in size; with a large input term (the GPT's N(0, 1) embeddings) its slope is still far below
  the asymptotic 1/2 at depth 32 and the record is inconclusive, not confirmed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp

from ..errors import CheckError, TraceError
from ..jsonio import JSONMixin, jsonable
from ..graph.depth import build, check_depths, export_at
from ..graph.trace import example_args
from ..validate import check_steps, positive_int, positive_number
from .judge import Record, Tolerance, judge
from .runner import Runner, default_loss, make_opt


@dataclass(eq=False)
class DepthCheck(JSONMixin):
    """What ``check_depth`` measured: one ``Record`` per prediction (``Record.values`` keyed by
    depth), the verdict (refuted > inconclusive > confirmed) and the predicting ``DepthReport``."""

    records: list[Record]
    depths: tuple[int, ...]
    width: int
    steps: int
    seeds: int
    report: Any = field(repr=False, default=None)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        statuses = {r.status for r in self.records}
        for s in ("refuted", "inconclusive"):
            if s in statuses:
                return s
        return "confirmed"

    def plot(self, path: str) -> str:
        """Write the depth-check figure (``measure.plots.depth_figure``) to ``path`` (PNG)."""
        from .plots import plot_depth_check

        return plot_depth_check(self, path)

    def get(self, node: str, kind: str) -> Record:
        return next(r for r in self.records if r.node == node and r.kind == kind)

    def to_dict(self) -> dict:
        return jsonable({"verdict": self.verdict, "depths": list(self.depths), "width": self.width,
                         "steps": self.steps, "seeds": self.seeds, "notes": self.notes,
                         "records": [r.to_dict() for r in self.records]})

    @classmethod
    def from_dict(cls, d: dict) -> "DepthCheck":
        """Inverse of ``to_dict`` (without ``report``, which JSON does not carry)."""
        from ..jsonio import from_jsonable

        d = from_jsonable(d)  # plain json.loads output too
        return cls(records=[Record.from_dict(r) for r in d["records"]], depths=tuple(d["depths"]),
                   width=d["width"], steps=d["steps"], seeds=d["seeds"], notes=list(d["notes"]))

    def __str__(self) -> str:
        lines = [f"depth check at width {self.width}, depths {list(self.depths)}, {self.steps} "
                 f"step{'s' * (self.steps != 1)}, {self.seeds} seed{'s' * (self.seeds != 1)}: {self.verdict}"]
        for r in self.records:
            slope = "?" if r.slope is None else f"{r.slope:+.2f} +- {r.stderr:.2f}"
            lines.append(f"  {r.node:28s} {r.kind:6s} step {r.step}: predicted L^{r.predicted}, "
                         f"measured L^({slope}): {r.status}" + (f" ({r.note})" if r.note else ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def check_depth(factory, depths=(2, 4, 8, 16), *, width: int = 32, example_inputs=None,
                make_optimizer=None, loss=None, steps: int = 2, seeds: int = 2, report=None,
                tolerance: Tolerance = Tolerance(), lr: float = 1e-3) -> DepthCheck:
    """Measure ``factory(width, L)`` at each depth L (module docstring). ``report``: an
    ``analyze_depth`` report to test (default: analysed at the three smallest depths).
    ``make_optimizer`` defaults to Adam at ``lr``; ``loss`` to ``measure.runner.default_loss``."""
    from ..predict.depth import analyze_depth  # predict imports graph; measure sits above both

    depths = check_depths(depths)
    steps = check_steps(steps, CheckError)
    seeds = positive_int(seeds, "seeds", CheckError, "the number of seeds per depth")
    width = positive_int(width, "width", CheckError, "the width every depth is built at")
    if make_optimizer is None:
        lr = positive_number(lr, "lr", CheckError)
        import torch

        def make_optimizer(model):
            return torch.optim.Adam(model.parameters(), lr=lr)
    if report is None:
        try:
            report = analyze_depth(factory, depths[:3], width=width, example_inputs=example_inputs,
                                   make_optimizer=make_optimizer)
        except TraceError as e:
            raise CheckError(str(e)) from e
    if not report.applies:
        raise CheckError(f"nothing to check in depth: {report.statement}.")
    loss_fn = loss if loss is not None else default_loss
    kinds = list(report.kinds)
    size = {"stream": [], **{k: [] for k in kinds}}
    change = {"stream": [], **{k: [] for k in kinds}}
    traced = report.trace if report.trace is not None and report.trace.width == width else None
    for d in depths:
        try:
            if traced is not None and d in traced.programs:  # the analysis's export, reused
                model0 = build(factory, width, d, seed=0)
                ep, branches = traced.programs[d], traced.branches[d]
            else:
                model0, ep, branches = export_at(factory, width, d, example_inputs)
        except TraceError as e:
            raise CheckError(str(e)) from e
        if not branches:
            raise CheckError(f"no residual branch found at depth {d}.")
        cols = {"stream": [branches[-1].add]}
        for k in kinds:
            cols[k] = [b.value for b in branches if b.kind == k]
        nodes = list(dict.fromkeys(n for c in cols.values() for n in c))
        idx = {n: j for j, n in enumerate(nodes)}
        runner = Runner(ep, [n.name for n in ep.graph.nodes],
                        [(n.op, str(n.target)) for n in ep.graph.nodes], nodes, d)
        args, kwargs = example_args(example_inputs, model0, width, "cpu")
        batch = kwargs if kwargs else args
        per_seed = []
        for s in range(seeds):
            model = model0 if s == 0 else build(factory, width, d, seed=s)
            opt = make_opt(make_optimizer, model, d)
            sz, ch, _, _ = runner.train(model, opt, [batch] * (steps + 1), loss_fn, steps)
            per_seed.append((sz, ch))
        for name, c in cols.items():
            j = [idx[n] for n in c]
            size[name].append([float(np.mean(sz[0, j])) for sz, _ in per_seed])
            change[name].append([float(np.mean(ch[steps, j])) for _, ch in per_seed])
    records, notes = [], []
    ones = np.ones((len(depths), seeds))

    def add(name, kind, t, pred, vals, uncapped=None):
        if pred is None:
            notes.append(f"{name} {kind}: no power-law prediction (e.g. exponential growth); "
                         "not judged")
            return
        records.append(judge(name, {"module": name, "op": "add"}, kind, t, sp.nsimplify(pred),
                             np.asarray(vals, dtype=float), ones, depths, tolerance, True,
                             uncapped=uncapped))

    add("stream", "size", 0, report.stream_init_exp, size["stream"])
    add("stream", "change", steps, report.stream_change_exp, change["stream"])
    for k in kinds:
        v = report.kinds[k]
        add(k, "size", 0, v.block_init_exp, size[k])
        if v.gamma is None or v.block_change_uncapped is None:
            add(k, "change", steps, v.block_change_exp, change[k])
            continue
        own = -v.alpha - v.gamma  # the block's own update; its input's change comes on top
        add(k, "change", steps, own, change[k], uncapped=v.block_change_uncapped
            if v.block_change_uncapped != own else None)
        r = records[-1]
        if v.block_change_uncapped != own:  # the plot draws both terms
            r.predicted_also = sp.nsimplify(v.block_change_uncapped)
        if r.note and r.note.startswith("saturating"):
            r.note = (f"two terms: the block's own update L^{own} and its input's change, up to "
                      f"L^{v.block_change_exp} (L^{v.block_change_uncapped} before a norm "
                      f"saturates); measured {r.slope:+.2f}")
    return DepthCheck(records=records, depths=tuple(depths), width=width, steps=steps, seeds=seeds,
                      report=report, notes=notes)
