"""The text of an ``analyze`` Report: verdict, the parameter table (repeated layers folded),
attention, width-dependent constants, problems and the fix."""
from __future__ import annotations

import re

import sympy as sp

from .doc import expr
from ..exponents import fmt

__all__ = ["format_report", "fold"]

ZERO = sp.Integer(0)


def _pattern(name: str) -> str:
    """'blocks.3.attn.query.weight' -> 'blocks.*.attn.query.weight' (repeated layers fold)."""
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", name)


def fold(rows):
    """[(name, text)] -> [(pattern or name, text, count)], folding repeated layers."""
    out: dict[tuple, list] = {}
    for name, text in rows:
        key = (_pattern(name), text)
        out.setdefault(key, []).append(name)
    return [(names[0] if len(names) == 1 else key[0], key[1], len(names))
            for key, names in out.items()]


def format_report(rep) -> str:
    g = rep.graph
    lines = [
        f"tensorprog verdict: {rep.parametrization}   (optimizer class: {rep.optimizer}, "
        f"widths {list(g.widths)})",
        f"  regime: {rep.regime}; stable: {rep.stable} (at init: {rep.stable_init}); "
        f"nontrivial: {rep.nontrivial}; r = {expr(rep.r)}; every layer maximal: "
        f"{rep.every_layer_maximal}",
        f"  output: {fmt(rep.output_init)} at init, change {fmt(rep.output_change)} after "
        f"{rep.steps} steps",
        "",
        f"  {'parameter':44s} {'role':13s} {'fan_in':>7s} {'init':>9s} {'mult':>7s} {'lr':>7s} "
        f"{'r':>5s}  class",
    ]
    rows = []
    for name, p in rep.params.items():
        r = next((u.r for u in p.uses if u.r is not None), None)
        rows.append((name, f"{p.role[:13]:13s} {fmt(_n(p.fan_in_exp)):>7s} {fmt(p.init_exp):>9s} "
                           f"{fmt(p.mult_exp):>7s} {fmt(p.lr_exp) if p.lr_exp is not None else '-':>7s} "
                           f"{expr(r) if r is not None else '':>5s}  {','.join(p.classes) or 'none'}"))
    for name, text, count in fold(rows):
        label = name if count == 1 else f"{name} (x{count})"
        lines.append(f"  {label[:44]:44s} {text}")
    if rep.attention:
        lines.append("")
        att = [(a.module or a.node, f"scale {a.kind} (d_head ~ {fmt(_n(a.d_head_exp))}); logits "
                f"{fmt(a.logits_init)} at init, {fmt(a.logits_trained)} after training")
               for a in rep.attention]
        for name, text, count in fold([(m + ".", t) for m, t in att]):
            lines.append(f"  attention {name.rstrip('.')}{'' if count == 1 else f' (x{count})'}: {text}")
    consts = [c for c in rep.constants if c["arg"] != "scale"]
    if consts:
        lines.append("")
        for name, text, count in fold([((c["module"] or c["node"]) + ".",
                                         f"{c['op']} by a width-dependent constant ~ {fmt(c['exp'])}")
                                        for c in consts]):
            lines.append(f"  constant {name.rstrip('.')}{'' if count == 1 else f' (x{count})'}: {text}")
    if rep.problems:
        lines += ["", "  problems:"]
        probs = fold([((p.module or p.node) + ".", f"{p.what} {p.when} (~ {fmt(p.exponent)})")
                       for p in rep.problems])
        for name, text, count in probs[:20]:
            lines.append(f"    {name.rstrip('.')}{'' if count == 1 else f' (x{count})'}: {text}")
        if len(probs) > 20:
            lines.append(f"    ... {len(probs) - 20} more")
    # one row per parameter: its alternatives, each a complete set of changes (any one suffices)
    fixes = [(p.name, f"({'output: the readout' if p.role == 'output' else p.role})\n" + "\n".join(p.fixes)) for p in rep.params.values() if p.fixes]
    if rep.parametrization != "muP" and (fixes or any(a.kind == "1/sqrt(d)" for a in rep.attention)):
        lines += ["", "  to make it muP (each parameter: any ONE of its alternatives, all of its "
                      "changes together):"]
        if any(a.kind == "1/sqrt(d)" for a in rep.attention):
            lines.append("    - attention: use scale 1/d_head instead of 1/sqrt(d_head) (e.g. "
                         "scale=sqrt(base_d_head)/d_head; TP5 Def 4.1).")
        for name, text, count in fold(fixes):
            label = name if count == 1 else f"{name} (x{count})"
            head, *alts = text.split("\n")
            lines.append(f"    - {label} {head}" + (":" if len(alts) == 1 else ", one of:"))
            for k, alt in enumerate(alts):
                lines.append(f"        {'' if len(alts) == 1 else ('either ' if k == 0 else 'or ')}{alt}")
    for n in rep.notes + rep.graph.warnings:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def _n(x):
    return ZERO if x is None else x
