"""Attention: every contraction of two activations that feeds a softmax, and its scale.

TP5 Def 4.1: muP's attention logits are q.k / d_head, where SP (and the NTK) use 1/sqrt(d_head):
q and k are independent at init (the sum over d_head is CLT, sqrt(d)) but correlated after
training (LLN, d), so only 1/d keeps trained logits Theta(1). The scale is sdpa's own (torch's
default 1/sqrt(d) when None), any factor folded into q or k, or a factor on hand-written logits.
"""
from __future__ import annotations

import sympy as sp

from ..exponents import fmt
from ..graph.uses import activation_contractions, feeds_softmax, operand_scale, output_scale, sdpa_scale
from .engine import matrix_weight_positions
from .records import AttentionVerdict, Problem


def attention_verdicts(graph, prop, problems):
    """Every attention: sdpa, and contractions of two activations over a width-sized dim that
    feed a softmax (hand-written q @ k^T). The scale is the op's own and any factor folded into
    q or k (or, by hand, onto the logits), judged against TP5 Def 4.1's 1/d."""
    out = []
    found = [(n, None) for n in graph.order if graph.node(n)["op"] == "scaled_dot_product_attention"
             and prop.steps[0].get(n) is not None and prop.steps[0][n].logits is not None]
    found += [(n, d) for n, d in activation_contractions(graph, matrix_weight_positions(graph))
              if feeds_softmax(graph, n)]
    for n, d in sorted(found, key=lambda x: graph.order.index(x[0])):
        if d is None:  # sdpa
            d, sc = sdpa_scale(graph, n)
            logits = lambda s, n=n: s[n].logits  # noqa: E731
        else:
            post, end = output_scale(graph, n)
            sc = operand_scale(graph, n) + post
            logits = lambda s, end=end: (s[end].x, s[end].dx)  # noqa: E731
        sc = sp.nsimplify(sc)
        kind = ("fixed d_head" if d == 0 else "1/d" if sc == -d else "1/sqrt(d)" if sc == -d / 2
                else fmt(sc))
        lx = logits(prop.steps[0])[0]
        grown = next(((t, max(logits(st))) for t, st in enumerate(prop.steps[1:], start=1)
                      if max(logits(st)) > 0), None)
        trained = grown[1] if grown else max(logits(prop.final))
        mod = graph.node(n)["module"]
        out.append(AttentionVerdict(n, mod, d, sc, kind, lx, trained))
        if lx > 0:
            problems.append(Problem(n, mod, "attention logits blow up", "at init", lx))
        if grown:
            problems.append(Problem(n, mod, "attention logits blow up", f"after step {grown[0]}",
                                    grown[1]))
    return out
