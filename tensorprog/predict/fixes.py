"""The fix: each way to make a parameter muP, as one complete alternative (TP5 Table 3: init and
LR; Table 8: the readout multiplier with a constant LR; or the parameter's own multiplier kept,
by the abc symmetry), stated as changes from its current exponents."""
from __future__ import annotations

import sympy as sp

from ..exponents import fmt
from ..ops import ZERO
from .classes import INF, direction_exp, expected, init_ok
from .records import Change, FixSet


def mup_fixes(p, pv, opt) -> list[FixSet]:
    """Every complete way (TP5 Table 3 / Table 8, abc symmetry TP4 Eq. 5) to put this parameter
    in muP, each as the full set of changes from its current exponents.

    The anchor is the first use that is not muP. Each alternative fixes the anchor's multiplier
    exponent m (Table 3: no multiplier; Table 8: a 1/fan_in readout multiplier; or the current
    one kept), then solves for the init (A = a + b on the muP rule; left alone when it already
    satisfies it) and the LR (U = a + c, or 2a + c under SGD, equal to muP's offset; for Muon or
    Adafactor the LR is converted from the Adam-equivalent one). An alternative is kept only
    if every use of the parameter then matches muP."""
    uses = [u for u in pv.uses if u.role != "unknown" and u.fan_in_exp is not None]
    if not uses:
        return []
    anchor = next((u for u in uses if "muP" not in u.classes), uses[0])
    ai, ao = anchor.fan_in_exp, anchor.fan_out_exp or ZERO
    cands = []
    if anchor.role == "output":
        cands.append(("Table 8", -ai))
    cands.append(("Table 3", ZERO))
    if anchor.mult_exp not in [m for _, m in cands]:
        cands.insert(0, ("keep the multiplier (abc symmetry)", anchor.mult_exp))
    zero = p.init_exp == "zero"
    b_now = INF if zero else -(p.init_exp if p.init_exp is not None else ZERO)
    lr_now = p.lr_exp if p.lr_exp is not None else ZERO
    out, seen = [], set()
    for label, m in cands:
        rule, offset = expected("muP", anchor.role, ai, ao, opt)
        b = b_now
        if not init_ok(rule, -m + b):
            b = rule[1] + m
        init_new = "zero" if b == INF else -b
        lr_new = None
        if p.trainable and p.lr_exp != "zero":
            c = offset - (2 if opt == "sgd" else 1) * (-m)
            lr_new = sp.nsimplify(-c - direction_exp(p, init_new))
        mults = {u.node: (m if u is anchor else u.mult_exp) for u in uses}
        if not all(_use_ok_after(u, mults[u.node], b, lr_new, p, init_new, opt) for u in uses):
            continue
        changes = []
        if b != b_now:
            changes.append(Change("init", p.init_exp, init_new))
        if m != anchor.mult_exp:
            changes.append(Change("multiplier", anchor.mult_exp, m, anchor.node))
        if lr_new is not None and lr_new != lr_now:
            changes.append(Change("lr", lr_now, lr_new))
        key = tuple((c.what, c.to) for c in changes)
        if not changes or key in seen:
            continue
        seen.add(key)
        fs = FixSet(label, changes, init_new, m, lr_new)
        fs.text = _fix_text(fs, anchor, opt, p)
        out.append(fs)
    if not out:  # a tied weight whose uses need inits or LRs no one change gives them all
        out.append(FixSet("no single form", [], p.init_exp, anchor.mult_exp, p.lr_exp, text=(
            "no one init and learning rate put every use of it in muP ("
            + ", ".join(f"{u.role} by {u.op}" for u in uses) + "): give the uses their own "
            "multipliers (TP5 Lemma J.1), or untie the weight.")))
    return out


def _use_ok_after(u, m, b, lr_exp, p, init_new, opt) -> bool:
    rule, offset = expected("muP", u.role, u.fan_in_exp, u.fan_out_exp or ZERO, opt)
    if not init_ok(rule, -m + b):
        return False
    if lr_exp is None:
        return True
    c = -lr_exp - direction_exp(p, init_new)
    return ((2 * -m + c) if opt == "sgd" else (-m + c)) == offset


def _fix_text(fs, u, opt, p) -> str:
    ai, ao = u.fan_in_exp, u.fan_out_exp or ZERO
    by = {c.what: c for c in fs.changes}
    parts = []
    m = by.get("multiplier")
    parts.append(f"multiplier on {u.op} ∝ {_describe(fs.mult_exp, ai, ao)}"
                 + (f" (now {fmt(m.now)}: multiply its output by (width/base_width)^{_e(m.factor_exp)})"
                    if m else " (unchanged)"))
    i = by.get("init")
    parts.append(("init zero" if fs.init_exp == "zero" else
                  f"init std ∝ {_describe(fs.init_exp, ai, ao)}")
                 + (f" (now {fmt(i.now)}: multiply the init by (width/base_width)^{_e(i.factor_exp)})"
                    if i else " (unchanged)"))
    if fs.lr_exp is not None:
        lr = by.get("lr")
        name = "SGD" if opt == "sgd" else (p.step.optimizer if p.step is not None else "Adam")
        parts.append(f"{name} LR ∝ {_describe(fs.lr_exp, ai, ao)}"
                     + (f" (now {fmt(lr.now)}: multiply it by (width/base_width)^{_e(lr.factor_exp)})"
                        if lr else " (unchanged)"))
    src = {"Table 3": "TP5 Table 3", "Table 8": "TP5 Table 8"}.get(fs.name, fs.name)
    return f"{src}: " + "; ".join(parts)


def _describe(e, ai, ao):
    if e == 0:
        return "a constant"
    if ai and e == -ai:
        return "1/fan_in"
    if ai and e == -ai / 2:
        return "fan_in^-1/2"
    if ao and e == ao:
        return "fan_out"
    if ai and e == ai:
        return "fan_in"
    return fmt(e)


def _e(x) -> str:
    s = str(x)
    return s if "/" not in s and not s.startswith("-") else f"({s})"
