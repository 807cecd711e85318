"""Judging a check: fits of log(size) against log(width), the status rules, and the second passes.

Every rule is documented in ``measure/check.py``'s module docstring ("Fits and uncertainty",
"Status rules"). ``Tolerance`` holds the thresholds; ``Record`` is one prediction and its
measurement; ``judge`` gives a record its first status; ``compose``, ``outside_assumptions``
and ``first_order_notes`` are the three documented second passes (``second_order_notes`` and
``non_finite_notes`` only add notes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from ..exponents import fmt

__all__ = ["Tolerance", "Blowup", "Record", "judge", "fit", "compose", "first_order_notes",
           "second_order_notes", "non_finite_notes",
           "assumption_step", "outside_assumptions", "loss_grad_fits", "first_blowup", "exp_str",
           "json_number", "NEG"]

NEG = -sp.oo


@dataclass(frozen=True)
class Tolerance:
    """Thresholds of the status rules (see the module docstring)."""

    tol: float = 0.15  # allowed |slope - predicted| for Theta(1) / decaying predictions
    max_stderr: float = 0.2  # above this a fit cannot confirm anything
    growth_min: float = 0.25  # slope that counts as significant growth
    zero_rtol: float = 1e-6  # "exactly zero": relative to the node's init size
    roundoff: float = 1e-3  # float64 / float32 ratio below which a nonzero value is roundoff


@dataclass
class Blowup:
    """A non-finite value in training: the first node (graph order) that went NaN / inf."""

    width: int
    seed: int
    step: int
    node: str
    module: str


@dataclass
class Record:
    """One prediction and its measurement: a node, a kind ("size" or "change"), a step."""

    node: str
    module: str
    op: str
    kind: str  # "size": mean |x_t|; "change": mean |x_t - x_0|
    step: int
    slope: float | None  # mean over seeds of the fitted log-log slope
    stderr: float | None
    predicted: Any  # SymPy exponent (-oo: exactly zero)
    status: str  # "confirmed" | "refuted" | "inconclusive"
    focus: bool
    values: dict[int, list[float]]  # width -> measured value per seed (nan: not measured)
    blowup: bool = False
    note: str = ""
    #: a prediction with two terms (a depth block's change: its own update L^predicted and its
    #: input's change, up to L^predicted_also; ``measure.depth``): the other term's exponent
    predicted_also: Any = None

    @property
    def mean_values(self) -> dict[int, float]:
        """Width -> geometric mean over seeds of the finite, positive values (nan if none)."""
        out = {}
        for w, vs in self.values.items():
            v = np.asarray(vs, dtype=float)
            v = v[np.isfinite(v) & (v > 0)]
            out[w] = float(np.exp(np.log(v).mean())) if v.size else float("nan")
        return out

    @classmethod
    def from_dict(cls, r: dict) -> "Record":
        """Inverse of ``to_dict`` (non-finite values already decoded: ``jsonio.from_jsonable``)."""
        from ..jsonio import read_exponent

        predicted = None if r["predicted"] == "?" else read_exponent(r["predicted"])
        return cls(node=r["node"], module=r["module"], op=r["op"], kind=r["kind"],
                   step=r["step"], slope=r["slope"], stderr=r["stderr"], predicted=predicted,
                   status=r["status"], focus=r["focus"],
                   values={int(w): list(v) for w, v in r["values"].items()},
                   blowup=r.get("blowup", False), note=r.get("note", ""),
                   predicted_also=(read_exponent(r["predicted_also"])
                                   if r.get("predicted_also") is not None else None))

    def to_dict(self) -> dict:
        return {
            "node": self.node, "module": self.module, "op": self.op, "kind": self.kind,
            "step": self.step, "slope": json_number(self.slope), "stderr": json_number(self.stderr),
            "predicted": exp_str(self.predicted), "status": self.status, "focus": self.focus,
            "blowup": self.blowup, "note": self.note,
            "values": {str(w): [json_number(v) for v in vs] for w, vs in self.values.items()},
        } | ({} if self.predicted_also is None else {"predicted_also": exp_str(self.predicted_also)})


def json_number(x):
    """A measured number as a float (None stays None); ``jsonio.jsonable`` encodes non-finite
    ones as ``{"nonfinite": ...}``."""
    return None if x is None else float(x)


def exp_str(e) -> str:
    if e is None:
        return "?"
    if e == NEG:
        return "-inf"
    if e == sp.oo:
        return "inf"
    return str(e)


def fit(ws, vals):
    """Least-squares slope of log(vals) against log(width) over every (width, seed) point, and
    its standard error. vals: (widths, seeds), positive and finite. The slope equals the mean of
    the per-seed slopes; the standard error pools the scatter of all points about the line
    (seed-to-seed noise and any bend of the curve, W * S - 2 degrees of freedom):
    se = sqrt(s^2 / (S * Sxx)), s^2 = residual sum of squares / (W S - 2)."""
    lx = np.log(np.asarray(ws, dtype=float))
    y = np.log(vals)
    W, S = y.shape
    xc = lx - lx.mean()
    sxx = float((xc ** 2).sum())
    slope = float((xc[:, None] * (y - y.mean())).sum() / (S * sxx))
    resid = y - (y.mean() + slope * xc[:, None])
    dof = W * S - 2
    se = math.sqrt(float((resid ** 2).sum()) / dof / (S * sxx)) if dof > 0 else 0.0
    return slope, se


def judge(name, attrs, kind, t, pred, vals, scale, widths, tol: Tolerance, focus,
           uncapped=None) -> Record:
    values = {w: [float(v) for v in vals[i]] for i, w in enumerate(widths)}
    rec = Record(node=name, module=attrs["module"], op=attrs["op"], kind=kind, step=t,
                 slope=None, stderr=None, predicted=pred, status="inconclusive", focus=focus,
                 values=values)
    bad = ~np.isfinite(vals)
    rows_ok = ~bad.any(axis=1)
    # slope over the widths where every seed is finite and positive
    pos = rows_ok & (vals > 0).all(axis=1) if vals.size else rows_ok
    if pos.sum() >= 2:
        rec.slope, rec.stderr = fit([w for w, k in zip(widths, pos) if k], vals[pos])
        if pos.sum() < len(widths):
            rec.note = f"slope over widths {[w for w, k in zip(widths, pos) if k]}"

    if bad.any():
        return _non_finite(rec, bad.any(axis=1), widths, pred)
    if pred == NEG:
        if kind == "change":
            s = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
            rel = vals / s
        else:
            rel = vals
        worst = float(np.max(rel)) if rel.size else 0.0
        rec.status = "confirmed" if worst <= tol.zero_rtol else "refuted"
        rec.note = (f"predicted exactly zero; measured max {'relative ' if kind == 'change' else ''}"
                    f"value {worst:.3g}")
        return rec
    if (vals == 0).all():
        rec.status = "refuted"
        rec.note = f"measured exactly zero, predicted {fmt(pred)}"
        return rec
    if rec.slope is None:
        rec.status = "inconclusive"
        rec.note = "exactly zero at some widths; no slope"
        return rec
    slope, se = rec.slope, rec.stderr
    if pred > 0:
        if slope >= tol.growth_min and slope >= 3 * se:
            rec.status = "confirmed"
            if slope + 3 * se < float(pred) - tol.tol:
                rec.note = (f"growth confirmed, exponent not: slope {slope:+.2f} well below the "
                            f"predicted {fmt(pred)} (saturation, lower-order terms, or an "
                            "alignment the engine over-counts)")
        elif slope + 3 * se < tol.growth_min / 2:
            rec.status = "refuted"
            rec.note = f"predicted growth {fmt(pred)} but no growth measured"
        else:
            rec.status = "inconclusive"
        return rec
    if uncapped is not None and float(pred) - tol.tol - 2 * se <= slope <= float(uncapped) + tol.tol + 2 * se:
        # a bounded op (tanh, softmax, a norm) fed a growing change: Theta(1) once saturated,
        # growing up to n^uncapped before that
        rec.status = "confirmed"
        rec.note = (f"saturating: Theta(1) once saturated, up to {fmt(uncapped)} before; "
                    f"measured {slope:+.2f}")
        return rec
    dev = abs(slope - float(pred))
    if dev > tol.tol + 3 * se:
        rec.status = "refuted"
    elif dev <= tol.tol + 2 * se and se <= tol.max_stderr:
        rec.status = "confirmed"
    else:
        rec.status = "inconclusive"
    return rec


def _non_finite(rec: Record, bad_rows, widths, pred) -> Record:
    """A record with a NaN / inf measurement: never confirmed (a non-finite value measures no
    size). Refuted only when it reads as growth with width that the prediction rules out: the
    smallest width finite in every seed, the non-finite ones the widest, and no growth predicted.
    Otherwise undetermined (status "inconclusive"): non-finite at every width is a numerical
    fault (dtype, an eps that underflows, a NaN in the model), not a width effect; and a blow-up
    where growth is predicted agrees with it but is no measurement of it."""
    rec.blowup = True
    where = [w for w, k in zip(widths, bad_rows) if k]
    grows = pred != NEG and pred > 0
    k = len(widths) - len(where)
    suffix = 0 < k and not any(bad_rows[:k])  # finite at the k smallest widths, not beyond
    if suffix and not grows:
        rec.status = "refuted"
        rec.note = (f"non-finite from width {where[0]} on (widths {where}), finite below: it grows "
                    f"with width, where {fmt(pred)} is predicted")
        return rec
    rec.status = "inconclusive"
    why = ("at every width: a numerical fault (dtype, an optimizer eps that underflows, a NaN "
           "in the model), not a width effect" if k == 0 else
           "at widths that do not grow in order" if not suffix else
           f"where growth {fmt(pred)} is predicted: a blow-up agrees with it but measures nothing")
    rec.note = f"undetermined: non-finite (NaN / inf) values at widths {where}, {why}"
    return rec


def non_finite_notes(records, blowups) -> None:
    """Append to each record with non-finite values where its run first went non-finite
    (width, seed, step, node): the first ``Blowup`` of each affected width."""
    first = {}
    for b in blowups:
        first.setdefault(b.width, b)
    for r in records:
        if not r.blowup:
            continue
        at = [first[w] for w, vs in r.values.items() if w in first
              and not all(math.isfinite(v) for v in vs)]
        if at:
            r.note += "; first non-finite: " + ", ".join(
                f"width {b.width} seed {b.seed} step {b.step} node {b.node}" for b in at[:3])


def loss_grad_fits(lgrad, widths, tol: Tolerance) -> dict:
    """Per update step: slope of mean |d loss / d output| against width, and whether it grows
    (slope >= growth_min and >= 3 stderr, or non-finite)."""
    out = {}
    for t in range(lgrad.shape[2]):
        v = lgrad[:, :, t]
        if np.isnan(v).all():
            continue
        bad = not np.isfinite(v).all()
        slope = se = None
        if not bad and (v > 0).all():
            slope, se = fit(widths, v)
        grows = bad or (slope is not None and slope >= tol.growth_min and slope >= 3 * se)
        out[t] = {"slope": slope, "stderr": se, "grows": bool(grows), "non_finite": bool(bad)}
    return out


def assumption_step(loss_grad, prop):
    """(k, why): the first update k after which the engine's predictions leave its assumptions.

    ``propagate`` assumes a Theta(1) loss gradient per output coordinate at every step, and
    adds exponents of successive updates without cancellation. Neither holds once the model
    output has blown up: the engine's own prediction of an output change n^e, e > 0, at step k
    (under MSE the loss gradient then grows like the output; under any loss the next updates
    overshoot and partly cancel, e.g. Adam's sign flips), or a measured loss gradient that grows
    with width at update k. Returns (None, "") when neither happens."""
    ks = []
    for t in range(1, len(prop.steps)):
        e = max((prop.steps[t][o].dx for o in prop.outputs if o in prop.steps[t]), default=NEG)
        if e != NEG and e > 0:
            ks.append((t, f"the engine predicts the output change grows as {fmt(e)} at step {t}"))
            break
    grown = [t for t, f in loss_grad.items() if f["grows"]]
    if grown:
        t = min(grown)
        ks.append((t, f"the measured loss gradient at update {t + 1} grows with "
                   f"width (slope {_fmt_slope(loss_grad[t]['slope'])})"))
    if not ks:
        return None, ""
    return min(ks)


def outside_assumptions(records, k, why):
    """Records after step k that disagree are inconclusive, not refuted (see assumption_step).
    Step k itself and everything before it are judged normally."""
    if k is None:
        return
    for r in records:
        if r.step > k and r.status == "refuted":
            r.status = "inconclusive"
            r.note = ((r.note + "; ") if r.note else "") + (
                f"after step {k} outside the engine's assumptions ({why}): disagreement not "
                "counted as a refutation")


def _fmt_slope(x):
    return "non-finite" if x is None else f"{x:+.2f}"


def first_blowup(sz, ch):
    """(step, column) of the first non-finite measurement, in step then graph order; or None."""
    bad = ~np.isfinite(sz)
    bad[1:] |= ~np.isfinite(ch[1:])
    for t in range(bad.shape[0]):
        js = np.flatnonzero(bad[t])
        if js.size:
            return t, int(js[0])
    return None


def compose(records, prop, tol: Tolerance):
    """Second pass over size records after training.

    mean |x_t| = mean |x_0 + (x_t - x_0)| has two terms, n^x (init) and n^dx_t (change), each
    tested by its own record (the step-0 size and the step-t change). At finite widths the term
    with the smaller exponent can still be the larger one (muP + Adam hidden biases: init
    1/sqrt(3*64) = 0.07 at n = 64 against a change of 3 x lr 1e-3), and the local slope of the
    sum then lies between the two measured slopes, on its way to max(x, dx_t). A size record the
    first pass did not confirm, whose slope lies between its two terms' measured slopes (within
    tol + 2 stderr), takes the worse status of those two records (both confirmed -> confirmed,
    either refuted -> refuted, else inconclusive), with a note; except that a predicted growth
    (max(x, dx_t) > 0) is never confirmed this way, only by growth of the size itself (the
    change of a bounded op such as tanh saturates before it overtakes the init): inconclusive.
    A size slope outside that band keeps its first-pass status."""
    by = {(r.node, r.kind, r.step): r for r in records}
    order = {"confirmed": 0, "inconclusive": 1, "refuted": 2}
    for r in records:
        if r.kind != "size" or r.step == 0 or r.status == "confirmed" or r.blowup or r.slope is None:
            continue
        st = prop.steps[r.step][r.node]
        if st.x == st.dx or NEG in (st.x, st.dx):
            continue
        r0, rc = by.get((r.node, "size", 0)), by.get((r.node, "change", r.step))
        if r0 is None or rc is None or r0.slope is None or rc.slope is None or rc.blowup:
            continue
        lo, hi = sorted((r0.slope, rc.slope))
        band = tol.tol + 2 * r.stderr
        if not lo - band <= r.slope <= hi + band:
            continue
        r.status = max((r0.status, rc.status), key=order.get)
        if r.status == "confirmed" and r.predicted > 0:
            # a growth is confirmed only by growth seen in this very record: the change may
            # still saturate before it overtakes the init (a bounded op such as tanh)
            r.status = "inconclusive"
        bigger = "init" if _last(r0) >= _last(rc) else "change"
        r.note = (f"two terms: slope between the init ({r0.slope:+.2f}, {fmt(st.x)}) and "
                  f"change ({rc.slope:+.2f}, {fmt(st.dx)}) slopes, the {bigger} term larger "
                  f"at width {max(r.values)}; status of those two records"
                  + ("; predicted growth not yet visible in the size" if r.predicted > 0 else ""))


def first_order_notes(records, prop):
    """Diagnose change records that did not confirm a prediction above the step-1 exponent:
    if x_t - x_0 ~ t (x_1 - x_0) at every width, training is still in its first-order
    (small learning rate) regime at these widths and the predicted higher-order growth, whose
    coefficient carries more powers of the learning rate, cannot show yet. Adds a note only."""
    by = {(r.node, r.kind, r.step): r for r in records}
    for r in records:
        if r.kind != "change" or r.step < 2 or r.status == "confirmed" or r.blowup:
            continue
        r1 = by.get((r.node, "change", 1))
        p1 = prop.steps[1][r.node].dx
        if r1 is None or r1.status != "confirmed" or not (r.predicted > p1):
            continue
        ratios = []
        for w in r.values:
            a, b = r.mean_values[w], r1.mean_values[w]
            if math.isfinite(a) and math.isfinite(b) and b > 0:
                ratios.append(a / b / r.step)
        if ratios and all(0.8 <= x <= 1.25 for x in ratios):
            r.note = ((r.note + "; ") if r.note else "") + (
                f"first-order regime: x_t - x_0 = {np.mean(ratios):.2f} t (x_1 - x_0) at every "
                f"width; the predicted {fmt(r.predicted)} (above step 1's "
                f"{fmt(p1)}) is higher order in the learning rate and needs larger widths "
                "or learning rates to show")


def _contraction_terms(sizes, graph, node):
    """The (dW z0, W0 dz, dW dz) exponents behind ``node``'s change: its own, or those of the
    contraction it passes through unchanged (a chain of one-input ops with the same dx)."""
    seen = set()
    while node not in seen:
        seen.add(node)
        st = sizes.get(node)
        if st is None:
            return None
        if st.terms:
            return st.terms
        ins = [u for u in graph.inputs(node) if u in sizes]
        if len(ins) != 1 or sizes[ins[0]].dx != st.dx:
            return None
        node = ins[0]
    return None


def second_order_notes(records, prop, graph, tol: Tolerance):
    """Explain a predicted growth whose exponent the slope did not reach, when only the dW dz
    term carries it (a note only; the status stays judge's).

    A contraction's change after training is dW z0 + W0 dz + dW dz (Everett et al. 2024, arXiv
    2407.05872, §3). dW and dz each carry at least one power of the learning rate, so dW dz is of
    higher order: with exponents e1 = max(dW z0, W0 dz) < e2 = dW dz the change is about
    c lr n^e1 + c' lr^2 n^e2, and the second term overtakes the first only beyond
    n ~ (c / (c' lr))^(1 / (e2 - e1)). Muon "match_rms_adamw" on two n x n layers: e1 = 1/2,
    e2 = 1 for the second layer; at lr 0.02 the crossover lies near n ~ 2.6e5
    (benchmarks/muon_terms.py). A growth the first pass did not refute, measured within
    tol + 3 stderr of e1 and clearly below e2, is that pre-asymptotic regime, and says so."""
    for r in records:
        if (r.kind != "change" or r.slope is None or r.blowup or r.status == "refuted"
                or not r.predicted > 0 or r.predicted == sp.oo):
            continue
        terms = _contraction_terms(prop.steps[r.step], graph, r.node)
        if not terms or "dW dz" not in terms:
            continue
        first = max(terms.get("dW z0", NEG), terms.get("W0 dz", NEG))
        if not (terms["dW dz"] == r.predicted and first < r.predicted and first != NEG):
            continue
        se = r.stderr or 0.0
        if r.slope + 3 * se >= float(r.predicted) - tol.tol or abs(r.slope - float(first)) > tol.tol + 3 * se:
            continue
        note = (f"pre-asymptotic: the predicted {fmt(r.predicted)} comes from the dW dz term "
                f"alone, a product of two changes (higher order in the learning rate); the "
                f"terms dW z0, W0 dz give {fmt(first)}, which the slope {r.slope:+.2f} matches; "
                f"the dW dz term overtakes them only at larger widths or learning rates")
        generic = (r.note or "").startswith("growth confirmed, exponent not")
        r.note = note if generic or not r.note else f"{r.note}; {note}"


def _last(r: Record) -> float:
    v = r.mean_values[max(r.values)]
    return v if math.isfinite(v) else 0.0
