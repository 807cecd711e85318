"""Propagate coordinate-size exponents through a traced graph (TP4, TP5 Table 14).

A small interpreter in the style of torch.fx's ShapeProp: it walks the width-annotated graph in
order and writes, for every node, the ``Sizes`` its op-table entry (``tensorprog.ops``) computes:
``x`` (coordinate size at init), ``dx`` (its change after t steps), ``g`` (the loss gradient
flowing into it). A parameter starts at its init exponent; each step adds an update of size
``lr + g`` (SGD) or ``lr`` (Adam-like: the update is sign-like, Theta(1) per coordinate, TP4b).

No op passes silently: an op without an entry is sized only when no width dim enters it and its
inputs are bounded (a finite function of Theta(1) inputs is Theta(1)); otherwise, and wherever a
rule cannot size its output, the node is recorded in ``Propagation.undetermined`` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import sympy as sp

from ..graph.trace import WidthGraph
from ..ops import NEG, ZERO, Alignment, Op, Sizes, Undetermined, alignment, lookup, mx, split_dim
from ..ops.core import add

#: Extra results of a rule that are the contraction terms of a layer (for r_l)
TERMS = ("dW z0", "W0 dz", "dW dz")


@dataclass
class Unresolved:
    """An op the engine could not size: where it is and why."""

    node: str
    op: str
    module: str
    source: str
    reason: str
    fix: str = ("add the op to the op table (tensorprog/ops/, one file per op family) or write "
                "the model with ops the table knows")

    def __str__(self):
        where = f" in `{self.module}`" if self.module else ""
        src = f" ({self.source})" if self.source else ""
        return f"`{self.op}` (node {self.node}{where}{src}): {self.reason}"


@dataclass
class Propagation:
    """Sizes of every node after each step, and what the engine could not size."""

    graph: WidthGraph
    optimizer: str
    steps: list[dict[str, Sizes]]  # steps[t][node]: sizes after t updates (t = 0: init)
    updates: list[dict[str, object]]  # updates[t][param]: exponent of the cumulative change
    undetermined: dict[str, Unresolved]  # node -> why its size is unknown
    outputs: list[str]
    alignment: Alignment
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Sizes]:
        return self.steps[-1]

    @property
    def unknown(self) -> dict[str, list[str]]:
        """op -> nodes the engine could not size (for reports)."""
        out: dict[str, list[str]] = {}
        for u in self.undetermined.values():
            out.setdefault(u.op, []).append(u.node)
        return out

    def blocking(self, node: str | None = None) -> list[Unresolved]:
        """The undetermined ops that can reach ``node`` (default: the analysed output)."""
        node = node or (self.outputs[0] if self.outputs else None)
        if node is None or not self.undetermined:
            return []
        up = nx.ancestors(self.graph.nx, node) | {node}
        return [u for n, u in self.undetermined.items() if n in up]


ADAM_EPS = ("limit", "asymptotic")


def propagate(graph: WidthGraph, optimizer: str = "adam", *, steps: int = 3,
              align="tp", output: int = 0, adam_eps: str = "limit") -> Propagation:
    """Run ``steps`` training steps in exponents. optimizer: "sgd" or "adam" (sign-like).

    The loss gradient is Theta(1) per coordinate of model output ``output`` (TP4: the loss is
    a Theta(1) function of the finite-dim output f).

    adam_eps: "limit" (default) takes an entrywise (Adam-family) step in the eps -> 0 limit,
    Theta(1) per entry (TP4b). "asymptotic" keeps the eps read from the optimizer, eps ~ n^e:
    the step g / (|g| + eps) has entries n^min(0, g - e), Adam-like while the gradient
    dominates eps, SGD-like (lr g / eps) once it falls below (theory note 9).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam' (the class), got {optimizer!r}")
    if adam_eps not in ADAM_EPS:
        raise ValueError(f"adam_eps must be one of {ADAM_EPS}, got {adam_eps!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer (training steps to propagate), got {steps!r}")
    align = alignment(align)
    weight_pos = matrix_weight_positions(graph)
    out_node = next(n for n in graph.order if graph.node(n)["kind"] == "output")
    outputs = graph.inputs(out_node)
    undetermined: dict[str, Unresolved] = {}
    dW = {p: NEG for p in graph.params}
    decay: dict[str, object] = {}  # param -> relative change from decoupled weight decay
    history, updates = [], []
    for t in range(steps + 1):
        sizes = _forward(graph, dW, weight_pos, align, undetermined, decay)
        if outputs:
            _backward(graph, sizes, outputs[min(output, len(outputs) - 1)], weight_pos, align,
                      undetermined, optimizer)
        history.append(sizes)
        updates.append(dict(dW))
        if t == steps:
            break
        for pname, p in graph.params.items():
            lr = _lr_exp(p)
            if lr is None or not p.trainable:
                continue
            g = mx(*(sizes[n].g for n in p.nodes))
            size = mx(_init_exp(p), dW[pname])  # the parameter's entries now
            wd = _wd_exp(p)
            if wd is not None and p.step is not None:  # weight decay moves it, gradient or not
                if p.step.decoupled or p.step.geometry == "gradient":
                    # p *= 1 - lr wd: a relative change, proportional to p. Coupled (L2) decay
                    # under SGD is the same: p - lr (g + wd p) = (1 - lr wd) p - lr g
                    decay[pname] = mx(decay.get(pname, NEG), lr + wd)
                else:  # coupled, normalised with the gradient: counted as an aligned step of
                    # the normaliser's size, an upper bound (analyze's note; theory note 4)
                    g = mx(g, wd + size if size != NEG else NEG)  # g + wd p
            step = lr + _direction(p, g, dW[pname], optimizer, adam_eps) if g != NEG else NEG
            dW[pname] = mx(dW[pname], step)
    return Propagation(graph=graph, optimizer=optimizer, steps=history, updates=updates,
                       undetermined=undetermined, outputs=outputs, alignment=align)


def _direction(p, g, dw, optimizer, adam_eps="limit"):
    """Exponent of one step's direction entries for parameter ``p`` (its optimizer's geometry,
    ``graph.optimizers``); without an optimizer object, the global class. With
    ``adam_eps="asymptotic"`` an entrywise step is g / (|g| + eps): n^min(0, g - eps_exp)."""
    if p.step is None:
        return g if optimizer == "sgd" else ZERO
    dims = [d if d is not None else ZERO for d in p.dims] + [ZERO, ZERO]
    d = p.step.direction(g, mx(_init_exp(p), dw), dims[0], dims[1])
    e = eps_exp(p)
    if adam_eps == "asymptotic" and p.step.geometry == "entrywise" and e is not None:
        d = min(d, g - e)
    return d


def eps_exp(p):
    """The exponent of an entrywise optimizer's eps, None when eps is zero or not a power law."""
    if p.step is None or p.step.geometry != "entrywise" or p.eps_exp in (None, "zero"):
        return None
    return p.eps_exp


def _wd_exp(p):
    """Exponent of the weight decay, None when there is none."""
    if p.wd_exp in (None, "zero") or not p.weight_decay or not any(p.weight_decay.values()):
        return None
    return p.wd_exp


def _lr_exp(p):
    if p.lr_exp == "zero":
        return None
    return ZERO if p.lr_exp is None and not p.lr else p.lr_exp


def matrix_weight_positions(graph):
    """node -> (position of its parameter operand, readout?) for matrix uses of parameters."""
    out = {}
    for p in graph.params.values():
        for u in p.uses:
            spec = lookup(graph.node(u.node))
            if u.kind == "matrix" and u.pos is not None and spec is not None and spec.data_pos:
                readout = not any(p.dims[d] is None or p.dims[d] > 0 for d in u.fan_out)
                out[u.node] = (u.pos, readout)
    return out


def _init_exp(p):
    if p.init_exp == "zero":
        return NEG
    return p.init_exp if p.init_exp is not None else ZERO


def _forward(graph, dW, weight_pos, align, undetermined, decay) -> dict[str, Sizes]:
    sizes: dict[str, Sizes] = {}
    for name in graph.order:
        a = graph.node(name)
        if a["kind"] == "placeholder":
            sizes[name] = _placeholder(graph, a, name, dW, decay)
            continue
        if a["kind"] != "call_function":
            continue
        op = op_view(graph, sizes, name, weight_pos, align)
        ins = op.ins
        spec = lookup(a)
        try:
            _unbacked(graph, op)
            if spec is None:
                x, dx, extra = _unlisted(graph, op)
            else:
                x, dx, extra = spec.forward(op)
            if sp.nan in (x, dx):
                raise Undetermined("its exponent arithmetic meets oo - oo")
        except Undetermined as e:
            undetermined.setdefault(name, _unresolved(a, name, str(e)))
            x, dx, extra = mx(*(s.x for s in ins)) if ins else ZERO, mx(*(s.dx for s in ins)), {}
        uncapped = extra.get("uncapped")
        if uncapped is None:  # ops that pass a size or change through pass its cap through too
            uncapped = {k: max(s.uncapped[k] for s in ins if k in s.uncapped)
                        for k in ("x", "dx") if any(k in s.uncapped for s in ins)
                        and (x if k == "x" else dx) >= max(getattr(s, k) for s in ins if k in s.uncapped)}
        # a weight shrunk by decoupled decay (p *= 1 - lr wd) changes what it feeds by the same
        # relative amount, aligned with nothing: the change includes x + rel
        rel = mx(*(s.rel for s in ins)) if ins else NEG
        if rel != NEG and x != NEG:
            dx = mx(dx, add(x, rel))
        sizes[name] = Sizes(
            x=x, dx=dx, src=_sources(graph, name, a, ins, weight_pos, spec), rel=rel,
            terms={k: v for k, v in extra.items() if k in TERMS}, logits=extra.get("logits"),
            uncapped={k: v for k, v in uncapped.items() if v},
            centered=bool(extra.get("centered", False)) or _fresh_centered(graph, name, op, weight_pos),
            sign=1 if spec is not None and spec.positive else int(extra.get("sign", 0)),
            ident=ins[0].ident if spec is not None and spec.view and ins else name,
            upper_of=frozenset(extra.get("upper_of", ())),
            value=ins[0].value if spec is not None and spec.view and ins else None)
    for name in graph.order:  # a decayed parameter's own change (rules saw only the aligned part)
        s = sizes.get(name)
        if s is not None and graph.node(name).get("param") and s.rel != NEG:
            s.dx = mx(s.dx, add(s.x, s.rel))
    return sizes


def _unbacked(graph, op: Op):
    """A data-dependent (unbacked) size next to a width-sized dim: undetermined."""
    if not (op.attrs.get("unbacked") or any(graph.node(u).get("unbacked") for u in op.in_names)):
        return
    dims = [d for ds in op.in_dims + [op.attrs["dims"]] for d in (ds or ())]
    if any(d is not None and d != 0 for d in dims):
        raise Undetermined("a data-dependent size (an unbacked size from x[mask], nonzero, "
                           "unique...) meets a width-sized dim here: how many entries it moves or "
                           "sums, and how that scales with width, is unknown")


def _unlisted(graph, op: Op):
    """An op with no entry: sized only if no width dim enters or leaves it and its inputs are
    bounded (a fixed finite function of Theta(1) inputs is Theta(1)); else undetermined."""
    dims = [d for ds in op.in_dims + [op.attrs["dims"]] for d in (ds or ())]
    hop = op.attrs.get("higher_order")
    if hop and any(d is None or d != 0 for d in dims):
        raise Undetermined(f"higher-order op `{hop}` whose body tensorprog does not inline: the ops "
                           "inside it, and the parameters they use, are invisible to the engine")
    if any(d is None or d != 0 for d in dims):
        raise Undetermined("no entry in the op table, and a width-sized dim enters it: its "
                           "exponent rule is unknown")
    if any(s.x > 0 or s.dx > 0 for s in op.ins):
        raise Undetermined("no entry in the op table, and its inputs grow with width")
    return ZERO, mx(*(s.dx for s in op.ins)), {}


def _unresolved(a, name, reason, **kw) -> Unresolved:
    return Unresolved(node=name, op=a["op"], module=a.get("module") or "", source=a.get("source") or "",
                      reason=reason, **kw)


def op_view(graph, sizes, name, weight_pos, align) -> Op:
    """The ``Op`` a rule sees for node ``name``: its attributes and its inputs' sizes."""
    in_edges = sorted(graph.nx.in_edges(name, data=True), key=lambda e: e[2]["order"])
    wp = weight_pos.get(name)
    return Op(name=name, attrs=graph.node(name), ins=[sizes.get(u, Sizes()) for u, _, _ in in_edges],
              in_names=[u for u, _, _ in in_edges], pos=[d["pos"] for _, _, d in in_edges],
              in_dims=[graph.node(u)["dims"] for u, _, _ in in_edges],
              weight=wp[0] if wp else None, readout=bool(wp and wp[1]), align=align)


def _placeholder(graph, a, name, dW, decay):
    if a["param"]:
        p = graph.params[a["param"]]
        return Sizes(x=_init_exp(p), dx=dW[p.name], src=frozenset({p.name}),
                     centered=_centered_init(p), ident=name, rel=decay.get(p.name, NEG))
    if a["buffer"]:
        v = a["scalars"].get("value")
        value = v["values"][-1] if v else None
        return Sizes(x=v["exp"] if v and v["exp"] is not None else ZERO, dx=NEG, ident=name, value=value,
                     sign=0 if value is None else (1 if value > 0 else -1 if value < 0 else 0))
    return Sizes(x=ZERO, dx=NEG, src=frozenset({name}), ident=name)


def _centered_init(p) -> bool:
    """A parameter whose init has mean zero (|mean| well below the RMS): sums against it are CLT."""
    if not p.init_mean or not p.init_rms:
        return False
    w = max(p.init_rms)
    return p.init_rms[w] > 0 and abs(p.init_mean.get(w, 0.0)) < 0.2 * p.init_rms[w]


def _fresh_centered(graph, name, op, weight_pos) -> bool:
    """W z with a mean-zero W has mean-zero coordinates (and an independent bias keeps it so)."""
    wp = weight_pos.get(name)
    if wp is None:
        return False
    w = op.input_at(wp[0])
    others = [s for p, s in zip(op.pos, op.ins) if p != wp[0] and s.x != NEG and len(s.src) == 1
              and next(iter(s.src)) in graph.params]
    return bool(w is not None and w.centered and all(s.centered for s in others))


def _sources(graph, name, a, ins, weight_pos, spec):
    """Random sources a node's coordinates depend on: a contraction with a parameter starts a
    new source (TP's independent Gaussian vectors); disjoint slices of a fresh vector along its
    width-sized dim are distinct sources (q, k, v sliced from one packed projection)."""
    if name in weight_pos or (spec is not None and spec.new_source and any(
            graph.node(u).get("param") for u in graph.inputs(name))):
        return frozenset({name})  # a contraction with, or a lookup into, a parameter
    if not ins:
        return frozenset()
    cut = _cut(graph, name, a)
    if cut is not None:
        return frozenset((s, cut) for s in ins[0].src)
    return frozenset().union(*(s.src for s in ins))


def _cut(graph, name, a):
    """A key for the piece a slicing op takes, when it cuts along a dim that is (or was reshaped
    from) a width-sized dim; None otherwise."""
    ins = graph.inputs(name)
    if not ins:
        return None
    if a["op"] == "getitem":
        src = graph.node(ins[0])
        dim = split_dim(src)
        src_ins = graph.inputs(ins[0])
        if dim is None or not src_ins:
            return None
        return (ins[0], a["args"][1]) if _width_derived(graph, src_ins[0], dim) else None
    if a["op"] in ("slice", "select", "narrow"):
        dim = a["args"][1] if len(a["args"]) > 1 else 0
        return (a["op"], tuple(a["args"][1:5])) if _width_derived(graph, ins[0], dim) else None
    return None


def _width_derived(graph, node, dim, depth=8) -> bool:
    """Whether ``dim`` of ``node`` is a width-sized dim or was split from one by a reshape."""
    w = graph.widths[-1]
    for _ in range(depth):
        a = graph.node(node)
        dims = a["dims"] or ()
        if not dims:
            return False
        dim %= len(dims)
        if dims[dim] is None or dims[dim] > 0:
            return True
        spec = lookup(a)
        ins = graph.inputs(node)
        if a["kind"] != "call_function" or not spec or not spec.view or not spec.dim_map or not ins:
            return False
        old, new = graph.node(ins[0])["shapes"][w], a["shapes"][w]
        if old is None or new is None:
            return False
        m = spec.dim_map(a["args"], old, new)
        back = [o for o, tgt in enumerate(m) if dim in tgt]
        if len(back) != 1:
            return False
        node, dim = ins[0], back[0]
    return False


def _backward(graph, sizes, out_name, weight_pos, align, undetermined, optimizer):
    """Gradient exponents, from Theta(1) per coordinate at the output back to the parameters."""
    for s in sizes.values():
        s.g = NEG
    sizes[out_name].g = ZERO
    for name in reversed(graph.order):
        a = graph.node(name)
        if a["kind"] != "call_function" or name not in sizes:
            continue
        g = sizes[name].g
        if g == NEG:
            continue
        op = op_view(graph, sizes, name, weight_pos, align)
        spec = lookup(a)
        try:
            if spec is None:
                if name not in undetermined:
                    _unlisted(graph, op)
                grads = [g] * len(op.ins)
            else:
                grads = spec.backward(op, g)
        except Undetermined as e:
            undetermined.setdefault(name, _unresolved(a, name, str(e)))
            grads = [g] * len(op.ins)
        if a.get("custom_backward") and optimizer == "sgd":
            # Adam-like updates are Theta(1) per coordinate whatever the gradient's size; SGD's
            # are the gradient's size, which the hidden backward decides
            undetermined.setdefault(name, _unresolved(
                a, name, f"inside the custom autograd.Function {a['custom_backward']}: its backward "
                "is invisible to the trace, and an SGD update is as large as that gradient",
                fix="write the function with differentiable torch ops (export then sees its "
                    "backward), or analyse with an Adam-like optimizer"))
        z_out = sizes[name].gz or frozenset()
        for i, (u, gi) in enumerate(zip(op.in_names, grads)):
            if u not in sizes or gi is None or gi == NEG:
                continue
            z = _zero_sum_input(graph, op, spec, i, u, z_out)
            if z is None:  # summed over a dim whose gradient cancels: exactly zero
                continue
            s = sizes[u]
            s.g = mx(s.g, gi)
            s.gz = z if s.gz is None else s.gz & z


def _zero_sum_input(graph, op: Op, spec, i, u, z_out):
    """Dims of input ``u`` along which its gradient sums to zero, given the output's; None when
    the input is broadcast along such a dim through a linear op (its gradient is exactly 0)."""
    w = graph.widths[-1]
    declared = spec.zero_sum.get(i) if spec else None
    if declared is not None:
        return frozenset(declared(op, len(graph.node(u)["shapes"][w] or ())))
    if not z_out:
        return frozenset()
    shp_in, shp_out = graph.node(u)["shapes"][w], op.attrs["shapes"][w]
    if shp_in is None or shp_out is None:
        return frozenset()
    if spec is not None and spec.view and spec.dim_map is not None:
        m = spec.dim_map(op.attrs["args"], shp_in, shp_out) if len(shp_in) else []
        return frozenset(o for o, tgt in enumerate(m) if len(tgt) == 1 and next(iter(tgt)) in z_out
                         and shp_in[o] == shp_out[next(iter(tgt))])
    bias_pos = spec.bias_pos if spec is not None else None  # a bias inside: linear, addmm, conv
    data_pos = spec.data_pos(op.attrs, None) if bias_pos and spec.data_pos else None
    bias_dim = spec.bias_dim % len(shp_out) if bias_pos and len(shp_out) else None
    if op.pos[i] == data_pos:  # rows pass through (a conv's spatial dims mix: only its batch)
        rows = range(len(shp_in) - 1) if spec.bias_dim == -1 else (0,)
        return frozenset(d for d in z_out if d in rows)
    if op.pos[i] == bias_pos:  # the bias gradient sums every other output dim
        return None if any(d != bias_dim for d in z_out) else frozenset()
    if op.op in ("add", "sub"):  # right-aligned broadcasting
        off = len(shp_out) - len(shp_in)
        broadcast = {d for d in range(len(shp_out)) if d < off or shp_in[d - off] != shp_out[d]}
        if broadcast & z_out:
            return None
        return frozenset(d - off for d in z_out)
    return frozenset()
