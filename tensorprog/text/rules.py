"""The text of a ``Rules`` (``transform/rules.py``): one row per parameter, hooks, contractions."""
from __future__ import annotations

import sympy as sp

from ..exponents import expr_text, fmt
from .report import fold

__all__ = ["format_rules", "m_text", "expr_text"]


def _fan(x) -> str:
    return "-" if x is None else "fin" if x == 0 else fmt(x)


def m_text(x) -> str:
    """width_mult ** x as text: '1', 'm', 'm^-1/2'."""
    if x is None:
        return "-"
    x = sp.nsimplify(x)
    return "1" if x == 0 else ("m" if x == 1 else f"m^{x}")


def format_rules(r) -> str:
    lines = [
        f"muP rules for {r.label}: convention {r.convention} ({r.convention_name}), "
        f"optimizer {r.optimizer}, base width {r.base_width}",
        "  fan_in / fan_out: the parameter's fan-in / fan-out (n = width); m = width_mult = "
        "width / base_width. The last three columns multiply the model's current init, forward "
        "and base learning rate.",
        "",
        f"  {'parameter':40s} {'kind':11s} {'fan_in':>6s} {'fan_out':>7s}  {'init var':13s} "
        f"{'multiplier':15s} {'lr':15s} {'init x':>7s} {'mult x':>7s} {'lr x':>6s}",
    ]
    rows = []
    for name, p in r.params.items():
        if p.problem:
            rows.append((name, f"{p.kind:11s} no rule: see problems"))
            continue
        mult = ", ".join(sorted({expr_text(u.multiplier) for u in p.uses})) if p.uses else "-"
        fx = ", ".join(sorted({m_text(u.factor_exp) for u in p.uses})) if p.uses else "-"
        rows.append((name, f"{p.kind:11s} {_fan(p.fan_in_exp):>6s} {_fan(p.fan_out_exp):>7s}  "
                           f"{expr_text(p.init_var):13s} {mult:15s} "
                           f"{(expr_text(p.lr) if p.trainable else 'frozen'):15s} {m_text(p.init_factor_exp):>7s} "
                           f"{fx:>7s} {(m_text(p.lr_exp) if p.trainable else '-'):>6s}"))
    for name, text, count in fold(rows):
        label = name if count == 1 else f"{name} (x{count})"
        lines.append(f"  {label[:40]:40s} {text}")
    if r.hooks:
        lines += ["", "  multipliers as forward hooks (input x, output x):"]
        for name, text, count in fold([((h.module or "<top>") + ".", f"{m_text(h.pre_exp)}, {m_text(h.post_exp)}")
                                         for h in r.hooks]):
            lines.append(f"    {name.rstrip('.')}{'' if count == 1 else f' (x{count})'}: {text}")
    if r.ops:
        lines += ["", "  contractions of two width-sized activations (need scale ~ 1/d, TP5 Def 4.1):"]
        for name, text, count in fold([(o.module + ".", (
                f"{o.op} over d ~ {fmt(o.d_exp)}: scale {fmt(o.scale_exp)} -> {fmt(o.needed_exp)}"
                + ("" if o.ok else f": multiply the scale by {m_text(o.factor_exp)}"
                   + ("" if o.fixable else " BY HAND (explicit matmul)")))) for o in r.ops]):
            lines.append(f"    {name.rstrip('.') or '<top>'}{'' if count == 1 else f' (x{count})'}: {text}")
    pnotes = [(name, n) for name, p in r.params.items() for n in p.notes]
    if pnotes or r.notes:
        lines += [""]
        for name, text, count in fold([(n + ".", t) for n, t in pnotes]):
            lines.append(f"  note: {name.rstrip('.')}{'' if count == 1 else f' (x{count})'}: {text}")
        for n in r.notes:
            lines.append(f"  note: {n}")
    if r.problems:
        lines += ["", "  problems:"] + [f"    - {p}" for p in r.problems]
    return "\n".join(lines)
