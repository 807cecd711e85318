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

from ..graph.trace import VIEW_OPS, WidthGraph, scale_exp

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


_DATA_POS = {"linear": "0", "addmm": "1", "conv1d": "0", "conv2d": "0", "conv3d": "0",
             "convolution": "0", "conv_transpose1d": "0", "conv_transpose2d": "0",
             "conv_transpose3d": "0", "bilinear": "0", "mm": None, "bmm": None, "matmul": None}


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
        pos = _DATA_POS.get(op, "x")
        if pos == "x":
            return False
        if pos is None:  # mm / bmm / matmul: the operand that is not the parameter
            cands = [u for u, _, d in graph.nx.in_edges(node, data=True) if not _reaches_param(graph, u)]
        else:
            cands = [u for u, _, d in graph.nx.in_edges(node, data=True) if d["pos"] == pos]
        if len(cands) != 1:
            return False
        cur = cands[0]
        while cur in inside:
            if graph.node(cur)["op"] not in VIEW_OPS:
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
            others = []
            for pname, u in uses_at[n]:
                if u.kind == "matrix" and data_is_input(n, u):
                    classes[(pname, n)] = "prepost"
                else:
                    classes[(pname, n)] = "post"
            if a["op"] in ("add", "sub"):  # a bias added to the rest of the output
                for u in graph.inputs(n):
                    if not _reaches_param(graph, u):
                        walk(u, seen)
            return
        if a["op"] in VIEW_OPS or scale_exp(graph, n) is not None:
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


def _reaches_param(graph, node) -> bool:
    """Whether ``node`` is the parameter of ``use`` seen through view-like ops."""
    cur, hops = node, 0
    while cur is not None and hops < 16:
        if graph.node(cur).get("param") is not None:
            return True
        if graph.node(cur)["kind"] != "call_function" or graph.node(cur)["op"] not in VIEW_OPS:
            return False
        ins = graph.inputs(cur)
        cur, hops = (ins[0] if ins else None), hops + 1
    return False


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
    """Width-sized contractions of two activations: sdpa's logits and explicit q @ k^T."""
    matrix_nodes = {u.node for p in graph.params.values() for u in p.uses if u.kind == "matrix"}
    out = []
    for n in graph.order:
        a = graph.node(n)
        if a["kind"] != "call_function":
            continue
        if a["op"] == "scaled_dot_product_attention":
            d = (graph.node(graph.inputs(n)[0])["dims"] or (ZERO,))[-1]
            d = ZERO if d is None else d
            sc = a["scalars"].get("scale", {}).get("exp")
            sc = -d / 2 if sc is None else sc
            if d == 0:
                continue
            out.append(OpRule(n, a["module"], a["op"], True, d, sp.nsimplify(sc), -d, True))
        elif a["op"] in ("matmul", "bmm", "mm") and n not in matrix_nodes:
            ins = graph.inputs(n)
            dims = graph.node(ins[0])["dims"] if ins else None
            d = dims[-1] if dims else None
            if not d or d <= 0:
                continue
            sc = _contraction_scale(graph, n)
            out.append(OpRule(n, a["module"], a["op"], _feeds_softmax(graph, n), d, sc, -d, False))
    return out


def _contraction_scale(graph, n):
    """Scalar factors on the operands (single-use chains) and on the output chain."""
    total = ZERO
    module = graph.node(n)["module"]
    for src in graph.inputs(n):
        while src is not None and graph.nx.out_degree(src) == 1 and graph.node(src)["module"] == module:
            s = scale_exp(graph, src)
            if s is None and graph.node(src)["op"] not in VIEW_OPS:
                break
            total += s or 0
            ins = [u for u in graph.inputs(src) if not graph.node(u).get("buffer")]
            src = ins[0] if ins else None
    node = n
    while True:
        outs = list(graph.nx.successors(node))
        if len(outs) != 1:
            break
        s = scale_exp(graph, outs[0])
        if s is None and graph.node(outs[0])["op"] not in VIEW_OPS:
            break
        total += s or 0
        node = outs[0]
    return sp.nsimplify(total)


def _feeds_softmax(graph, n, depth=6) -> bool:
    frontier = [n]
    for _ in range(depth):
        nxt = []
        for x in frontier:
            for s in graph.nx.successors(x):
                op = graph.node(s)["op"]
                if op in ("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"):
                    return True
                nxt.append(s)
        frontier = nxt
    return False


def explicit_problem(o: OpRule) -> str:
    what = "attention logits" if o.attention else "a contraction of two width-sized activations"
    return (f"{what} in `{o.module or '<top>'}` (node {o.node}: `{o.op}` over a dim ~ "
            f"n^{o.d_exp}) scaled ~ n^{o.scale_exp}; muP needs 1/d (TP5 Def 4.1). apply_mup "
            "patches only F.scaled_dot_product_attention, so fix this one by hand in that "
            f"module's forward: multiply the logits by (base_width / width)^{-o.factor_exp} "
            "(for 1/sqrt(d_head) now: use sqrt(d_head_at_base_width) / d_head), or compute the "
            "attention with F.scaled_dot_product_attention.")
