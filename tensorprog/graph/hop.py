"""Higher-order ops in an exported graph: their bodies are inlined into the width graph.

torch.export keeps ``with torch.no_grad():`` blocks inside forward
(``higher_order.wrap_with_set_grad_enabled``), ``torch.cond`` and ``map`` as one call whose bodies
are GraphModules reached through ``get_attr`` nodes. The width graph takes their bodies' nodes in,
named ``<hop>__<node>`` (``<hop>__true__<node>`` / ``<hop>__false__<node>`` for cond's branches),
with the bodies' placeholders wired to the HOP's operands, so that parameters used inside get their
fan-in, fan-out and role and the engine sizes the body. The ``getitem`` users of the HOP take their
input from the body's output and become:

* ``detach`` for ``wrap_with_set_grad_enabled(False, ...)`` (no gradient flows back through a
  no_grad block), ``alias`` for ``(True, ...)`` (a plain inline);
* ``cond_merge`` for ``cond``: both branches are inlined and its output is sized only when both
  branches give the same sizes (which branch runs depends on the data);
* ``map_stack`` for ``map_impl`` (the body's outputs stacked along a new leading dim), whose
  mapped operands enter the body through ``map_slice`` nodes.

The HOP node itself stays in the graph with kind ``"hop"`` (no edges; the engine skips it).
Inlined nodes carry ``hop`` = the name of the HOP they came from: they are not nodes of the
exported program, so ``check`` (which runs that program) does not measure them. A HOP not listed
here stays one opaque call, which the engine reports undetermined by name.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from ..errors import TraceError

#: HOPs whose bodies are inlined
INLINED = ("wrap_with_set_grad_enabled", "cond", "map_impl")


@dataclass
class Item:
    """One node of the width graph: its fx node at each width and how to annotate it."""

    nodes: tuple
    name: str
    hop: str | None = None  # the HOP whose body it came from
    op: str | None = None  # replacement op (the getitem users of an inlined HOP)
    inputs: list | None = None  # replacement inputs: [(fx node at the first width, position)]
    kind: str | None = None  # replacement kind ("hop" for the inlined HOP itself)


def is_hop(node) -> bool:
    return node.op == "call_function" and isinstance(node.target, torch._ops.HigherOrderOperator)


def hop_name(target) -> str:
    return getattr(target, "_name", None) or getattr(target, "__name__", None) or str(target)


def expand(aligned, programs, widths):
    """(items in graph order, {(width, fx node): width-graph name}) with HOP bodies inlined."""
    name_of: dict = {}
    items: list[Item] = []
    gms = [getattr(programs[w], "graph_module", None) for w in widths]
    _walk(aligned, gms, widths, "", None, name_of, items, {})
    return items, name_of


def _walk(aligned, gms, widths, prefix, owner, name_of, items, inlined):
    for nodes in aligned:
        n0 = nodes[0]
        if prefix and n0.op in ("placeholder", "output"):
            continue  # a body's placeholders are its HOP's operands; its outputs feed the getitems
        name = prefix + n0.name
        for w, n in zip(widths, nodes):
            name_of[(w, n)] = name
        if is_hop(n0) and hop_name(n0.target) in INLINED and all(g is not None for g in gms):
            out = _inline(nodes, gms, widths, name, name_of, items, inlined)
            if out is not None:
                continue
        if n0.op == "call_function" and n0.target is operator.getitem and n0.args \
                and isinstance(n0.args[0], torch.fx.Node) and name_of.get((widths[0], n0.args[0])) in inlined:
            kind, outs = inlined[name_of[(widths[0], n0.args[0])]]
            i = n0.args[1]
            srcs = [o[i] if isinstance(o, (tuple, list)) and i < len(o) else None for o in outs]
            if all(isinstance(s, torch.fx.Node) for s in srcs):
                items.append(Item(nodes, name, owner, op=kind,
                                  inputs=[(s, str(k)) for k, s in enumerate(srcs)]))
                continue
        items.append(Item(nodes, name, owner))


def _body(gm, node):
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        sub = getattr(gm, node.target, None)
        if isinstance(sub, torch.fx.GraphModule):
            return sub
    return None


def _inline(nodes, gms, widths, name, name_of, items, inlined):
    """Inline the bodies of one HOP call; None when its arguments are not the expected ones."""
    n0 = nodes[0]
    what = hop_name(n0.target)
    if what == "wrap_with_set_grad_enabled":
        branches = [("", 1)]
        operands = [list(n.args[2:]) for n in nodes]
        kind = "alias" if n0.args[0] else "detach"
    elif what == "cond":
        branches = [("true__", 1), ("false__", 2)]
        operands = [list(n.args[3]) for n in nodes]
        kind = "cond_merge"
    else:  # map_impl(body, xs, args)
        branches = [("", 0)]
        operands = [list(n.args[1]) + list(n.args[2]) for n in nodes]
        kind = "map_stack"
    bodies = []
    for tag, k in branches:
        subs = [_body(gm, n.args[k]) for gm, n in zip(gms, nodes)]
        if any(s is None for s in subs):
            return None
        bodies.append((tag, subs))
    items.append(Item(nodes, name, None, kind="hop"))
    outs = []
    for tag, subs in bodies:
        lists = [list(s.graph.nodes) for s in subs]
        _check_same(lists, widths, what, name)
        body_aligned = [tuple(ls[i] for ls in lists) for i in range(len(lists[0]))]
        phs = [t for t in body_aligned if t[0].op == "placeholder"]
        pre = f"{name}__{tag}"
        for j, ph in enumerate(phs):
            ops = [o[j] if j < len(o) else None for o in operands]
            if not all(isinstance(o, torch.fx.Node) for o in ops):
                continue
            if kind == "map_stack" and j < len(n0.args[1]):  # a slice of a mapped operand
                slice_name = f"{pre}{ph[0].name}"
                items.append(Item(ph, slice_name, name, op="map_slice", inputs=[(ops[0], "0")]))
                for w, p in zip(widths, ph):
                    name_of[(w, p)] = slice_name
                continue
            for w, p, o in zip(widths, ph, ops):
                name_of[(w, p)] = name_of.get((w, o), o.name)
        _walk(body_aligned, subs, widths, pre, name, name_of, items, inlined)
        out_node = next(n for n in reversed(lists[0]) if n.op == "output")
        res = out_node.args[0]
        outs.append(res if isinstance(res, (tuple, list)) else (res,))
    inlined[name] = (kind, outs)
    return True


def _check_same(lists, widths, what, name):
    a = lists[0]
    for w, b in zip(widths[1:], lists[1:]):
        if len(a) != len(b) or any((x.op, str(x.target)) != (y.op, str(y.target)) for x, y in zip(a, b)):
            raise TraceError(
                f"the body of the higher-order op `{what}` (node {name}) differs between width "
                f"{widths[0]} and width {w}: the model's structure must not depend on the width.")
