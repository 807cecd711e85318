"""The text of a ``CheckReport``: headline, the focus table, growth, refutations, notes."""
from __future__ import annotations

import sympy as sp

from ..exponents import fmt

__all__ = ["format_check"]

_MARK = {"confirmed": "ok", "refuted": "REFUTED", "inconclusive": "?"}


def _cell(r) -> str:
    if r is None:
        return ""
    if r.blowup:
        s = "blow-up"
    elif r.slope is None:
        s = "0" if r.predicted == -sp.oo and r.status == "confirmed" else "-"
    else:
        s = f"{r.slope:+.2f}"
    return f"{s} ({fmt(r.predicted)}) {_MARK[r.status]}"


def format_check(rep) -> str:
    c = rep.counts()
    lines = [
        f"tensorprog check: {rep.verdict.upper()}   ({rep.optimizer}, widths {list(rep.widths)}, "
        f"{rep.steps} steps, {rep.seeds} seeds, {rep.device} {rep.dtype}, "
        f"{rep.seconds.get('total', 0):.1f}s)",
        f"  {len(rep.records)} predictions: {c['confirmed']} confirmed, {c['refuted']} refuted, "
        f"{c['inconclusive']} inconclusive. Cells: measured slope (predicted exponent) status.",
        "",
    ]
    if getattr(rep, "partial", ""):
        lines[2:2] = [f"  PARTIAL: {rep.partial}; not run: "
                      + ", ".join(f"width {w} seed {s}" for w, s in rep.missing[:8])
                      + (f" and {len(rep.missing) - 8} more" if len(rep.missing) > 8 else ""), ""]
    by = {(r.node, r.kind, r.step): r for r in rep.records}
    focus = [n for n in dict.fromkeys(r.node for r in rep.records if r.focus)]
    steps = range(rep.steps + 1)
    head = f"  {'node':28s} {'module':24s} {'kind':6s} " + " ".join(f"{'step ' + str(t):>22s}" for t in steps)
    lines.append(head)
    for n in focus:
        for kind in ("size", "change"):
            cells = [_cell(by.get((n, kind, t))) for t in steps]
            mod = by.get((n, "size", 0)).module if by.get((n, "size", 0)) else ""
            lines.append(f"  {n[:28]:28s} {(mod or '-')[:24]:24s} {kind:6s} "
                         + " ".join(f"{x:>22s}" for x in cells))
    grow = {}
    for r in rep.unstable():
        grow.setdefault((r.node, r.kind), r)
    if grow:
        lines += ["", "  growing with width (predicted and measured; the model is not width-stable there):"]
        for r in list(grow.values())[:20]:
            what = "blew up (non-finite)" if r.blowup else f"measured slope {r.slope:+.2f}"
            lines.append(f"    {r.module or r.node} ({r.node}, {r.op}) {r.kind} from step {r.step}: "
                         f"predicted {fmt(r.predicted)}, {what}")
    if rep.blowups:
        b = rep.blowups[0]
        lines.append(f"  non-finite (NaN / inf) values in {len(rep.blowups)} run(s), never counted as a "
                     f"confirmation; first at width {b.width}, seed {b.seed}, step {b.step}, node "
                     f"{b.node} ({b.module or 'top'})")
    bad = rep.refuted()
    if bad:
        lines += ["", f"  refuted ({len(bad)}):"]
        for r in bad[:40]:
            lines.append(f"    {r.node} ({r.module or '-'}, {r.op}) {r.kind} step {r.step}: predicted "
                         f"{fmt(r.predicted)}, measured "
                         + (f"slope {r.slope:+.2f} +- {r.stderr:.2f}" if r.slope is not None else "-")
                         + (f"; {r.note}" if r.note else ""))
        if len(bad) > 40:
            lines.append(f"    ... {len(bad) - 40} more")
    for n in rep.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)
