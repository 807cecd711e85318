"""Multipliers that need hooks, and width-sized contractions that need a 1/d scale.

``derive_hooks``: for every module whose parameter uses need a multiplier, the forward hooks that
carry it (input x width_mult^pre, output x width_mult^post; see ``HookRule``), and the uses that
cannot get one. ``derive_ops``: every contraction of two width-sized activations (attention's
q . k) with the scale it has and the 1/d scale it needs (TP5 Def 4.1; see ``OpRule``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp

from ..graph.uses import (activation_contractions, data_operand, feeds_softmax, is_param_view,
                          is_view, operand_scale, output_scale, scale_exp,
                          sdpa_scale)
from ..predict.engine import matrix_weight_positions
from ..graph.widthgraph import WidthGraph

__all__ = ["HookRule", "OpRule", "derive_hooks", "derive_ops", "explicit_problem", "module_structure"]

ZERO = sp.Integer(0)


@dataclass
class HookRule:
    """Forward hooks on one module: input scaled by width_mult^pre_exp (only the weight's
    contraction sees it, not a bias added inside the op), output by width_mult^post_exp."""

    module: str
    pre_exp: Any
    post_exp: Any
    params: list[str]


@dataclass
class OpRule:
    """A width-sized contraction of two activations (attention logits) and the scale it needs."""

    node: str
    module: str
    op: str  # "scaled_dot_product_attention" or the matmul op
    attention: bool  # followed by a softmax
    d_exp: Any  # contracted dim ~ n^d_exp
    scale_exp: Any  # current scale ~ n^scale_exp
    needed_exp: Any  # 1/d: -d_exp
    fixable: bool  # apply_mup can patch it (sdpa); explicit matmuls need a hand fix

    @property
    def factor_exp(self):
        return sp.nsimplify(self.needed_exp - self.scale_exp)

    @property
    def ok(self) -> bool:
        return self.factor_exp == 0


def module_structure(graph: WidthGraph, path: str):
    """(hookable, why not, {(param, node): "post" | "prepost" | "none"}) for module ``path``.

    "post": the use is scaled by scaling the module's output; "prepost": a contraction whose
    data operand is the module's input, so scaling the input scales it alone (not a bias added
    inside the op); "none": the use is not on a linear path to the output."""
    nodes = [n for n in graph.order if graph.node(n)["kind"] == "call_function"
             and graph.node(n)["module"] == path]
    inside = set(nodes)
    uses_at: dict[str, list] = {}
    for pname, p in graph.params.items():
        for u in p.uses:
            if u.node in inside:
                uses_at.setdefault(u.node, []).append((pname, u))
    classes = {(pname, u.node): "none" for lst in uses_at.values() for pname, u in lst}
    mods = {graph.node(n)["module"] for n in graph.order if graph.node(n)["kind"] == "call_function"}
    if any(m != path and (m.startswith(path + ".") or not path) for m in mods):
        return False, "it runs other modules inside it", classes
    out_node = next(n for n in graph.order if graph.node(n)["kind"] == "output")
    outputs = [n for n in nodes if any(s not in inside or s == out_node for s in graph.nx.successors(n))]
    if not outputs:
        return False, "its output was not found in the graph", classes
    externals = {u for n in nodes for u in graph.inputs(n)
                 if u not in inside and not graph.node(u).get("param") and not graph.node(u).get("buffer")}
    single_input = len(externals) <= len(outputs)

    def data_is_input(node, use):
        op = graph.node(node)["op"]
        cur = data_operand(graph, node, use.pos)
        if cur is None:
            return False
        while cur in inside:
            if not is_view(graph, cur):
                return False
            ins = graph.inputs(cur)
            cur = ins[0] if ins else None
        return cur is not None and (single_input or op == "bilinear")

    bad = []

    def walk(n, seen):
        if n in seen:
            return
        seen.add(n)
        if n not in inside:
            bad.append(f"its output passes its input `{n}` through unchanged")
            return
        a = graph.node(n)
        if n in uses_at:
            for pname, u in uses_at[n]:
                if u.kind == "matrix" and data_is_input(n, u):
                    classes[(pname, n)] = "prepost"
                else:
                    classes[(pname, n)] = "post"
            if a["op"] in ("add", "sub"):  # a bias added to the rest of the output
                for u in graph.inputs(n):
                    if not is_param_view(graph, u):
                        walk(u, seen)
            return
        if is_view(graph, n) or scale_exp(graph, n) is not None:
            ins = [u for u in graph.inputs(n) if not graph.node(u).get("buffer")]
            if ins:
                walk(ins[0], seen)
            return
        bad.append(f"its output is not linear in its parameters (`{a['op']}`)")

    seen: set = set()
    for o in outputs:
        walk(o, seen)
    if bad:
        return False, bad[0], classes
    return True, "", classes


def derive_hooks(graph, params, structure):
    """HookRules for every module whose uses need a multiplier, and the uses that cannot get
    one (their module cannot be hooked, or the hooks cannot give each use its factor)."""
    by_module: dict[str, list] = {}
    for name, pr in params.items():
        for u in pr.uses:
            by_module.setdefault(u.module, []).append((name, u))
    hooks, fixed = [], set()
    for path, items in by_module.items():
        need = [(n, u) for n, u in items if u.factor_exp != 0]
        if not need:
            continue
        if path not in structure:
            structure[path] = module_structure(graph, path)
        ok, why, classes = structure[path]
        post, both = set(), set()
        if ok:
            for n, u in items:
                c = classes.get((n, u.node), "none")
                if c == "none" and u.factor_exp != 0:
                    ok = False
                elif c == "post":
                    post.add(u.factor_exp)
                elif c == "prepost":
                    both.add(u.factor_exp)
        if ok and len(post) <= 1 and len(both) <= 1:
            P = next(iter(post)) if post else (next(iter(both)) if both else ZERO)
            Q = (next(iter(both)) - P) if both else ZERO
            hooks.append(HookRule(module=path, pre_exp=sp.nsimplify(Q), post_exp=sp.nsimplify(P),
                                  params=sorted({n for n, _ in items})))
            continue
        if ok:
            why = "its parameters need different multipliers that hooks on input and output cannot give"
            structure[path] = (False, why, classes)
        fixed |= {(n, u.node) for n, u in items}
    return hooks, fixed


def derive_ops(graph: WidthGraph) -> list[OpRule]:
    """Width-sized contractions of two activations: sdpa's logits and explicit q @ k^T. The
    current scale includes any factor folded into q or k (and, by hand, onto the logits)."""
    out = []
    for n in graph.order:
        a = graph.node(n)
        if a["op"] != "scaled_dot_product_attention":
            continue
        d, sc = sdpa_scale(graph, n)
        if d != 0:
            out.append(OpRule(n, a["module"], a["op"], True, d, sp.nsimplify(sc), -d, True))
    for n, d in activation_contractions(graph, matrix_weight_positions(graph)):
        sc = operand_scale(graph, n) + output_scale(graph, n)[0]
        out.append(OpRule(n, graph.node(n)["module"], graph.node(n)["op"], feeds_softmax(graph, n), d,
                          sp.nsimplify(sc), -d, False))
    return sorted(out, key=lambda o: graph.order.index(o.node))


def explicit_problem(o: OpRule) -> str:
    what = "attention logits" if o.attention else "a contraction of two width-sized activations"
    return (f"{what} in `{o.module or '<top>'}` (node {o.node}: `{o.op}` over a dim ~ "
            f"n^{o.d_exp}) scaled ~ n^{o.scale_exp}; muP needs 1/d (TP5 Def 4.1). apply_mup "
            "rescales only scaled_dot_product_attention calls, so fix this one by hand in that "
            f"module's forward: multiply the logits by (base_width / width)^{-o.factor_exp} "
            "(for 1/sqrt(d_head) now: use sqrt(d_head_at_base_width) / d_head), or compute the "
            "attention with F.scaled_dot_product_attention.")
