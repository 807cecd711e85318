"""A layer's features in the verdict: its data operand, whether that operand is exactly zero,
and the size of its own update's effect at step 2 (TP4, arXiv 2011.14522, Def 3.2's r_l)."""
from __future__ import annotations

from ..ops import lookup
from .engine import NEG


def data_input(graph, layer):
    """The name of the layer's data operand (the op table's ``data_pos``), or None."""
    a = graph.node(layer)
    spec = lookup(a)
    pos = spec.data_pos(a, None) if spec is not None and spec.data_pos else None
    args = a.get("args") or ()
    if pos is None or not pos.isdigit() or int(pos) >= len(args):
        return None
    arg = args[int(pos)]
    return arg[1:] if isinstance(arg, str) and arg.startswith("%") else None


def zero_data(graph, prop, layer, always: bool = False) -> bool:
    """Whether the layer's data operand is exactly zero at init (an RNN's first step multiplies
    its zero initial state, h0 = 0): its output is then its bias alone, not a feature whose
    scale the layer's init sets, and the same weight's later uses are judged instead.
    always: zero at every step too (no change either: the use carries no feature, no r_l)."""
    name = data_input(graph, layer)
    if name not in prop.steps[0] or prop.steps[0][name].x != NEG:
        return False
    return not always or all(s[name].dx == NEG for s in prop.steps if name in s)


def own_update(graph, prop, layer):
    """Exponent of the layer's own update's effect at step 2 (TP4 Def 3.2's r_l counts it):
    dW z0, and dW dz where the input's change dz stays bounded but outgrows a vanishing z0 (a
    LoRA B fed by A x ~ n^-1/2 at init, Theta(1) once A has moved: B then learns features
    through dW dz, the term the step-2 update actually multiplies). A growing dz (an unstable
    model) is left out: it only compounds."""
    t = min(2, len(prop.steps) - 1)
    terms = prop.steps[t][layer].terms
    own = terms.get("dW z0", NEG)
    z = data_input(graph, layer)
    if z in prop.steps[t - 1] and prop.steps[0][z].x < 0 and prop.steps[t - 1][z].dx <= 0:
        own = max(own, terms.get("dW dz", NEG))
    return own
