"""How the graph uses each parameter: fan-in and fan-out dims, role, multiplier (TP5 Table 3, App B).

Walks go from a parameter's placeholder through ops that only view or scale it to the op that
consumes it; the op table (``tensorprog.ops``) says how each op consumes its operands. The same
walks, along an op's output, find where a layer's output lands (``chain_end``), so the engine,
the verdict, the rules and the checker all mean the same node by "the layer's output".
"""
from __future__ import annotations

import sympy as sp

from ..ops import lookup
from ..ops.attention import own_scale
from ..ops.matrix import parse_einsum
from ..ops.core import Use
from .widthgraph import ParamUse

ZERO = sp.Integer(0)


def _spec(graph, name):
    a = graph.node(name)
    return lookup(a) if a["kind"] == "call_function" else None


def is_view(graph, name) -> bool:
    spec = _spec(graph, name)
    return bool(spec and spec.view)


def scalar_source(graph, name, depth=4):
    """The one-element buffer or constant a node is (seen through casts and views), else None."""
    for _ in range(depth):
        a = graph.node(name)
        if a.get("buffer") and "value" in a["scalars"]:
            return name
        ins = graph.inputs(name)
        if a["kind"] != "call_function" or not is_view(graph, name) or len(ins) != 1:
            return None
        name = ins[0]
    return None


def is_scalar_node(graph, name) -> bool:
    return scalar_source(graph, name) is not None


def scale_exp(graph, name: str):
    """Exponent of the scalar factor a node applies (x * c, x / c, x *= c, x * buffer), else None.

    The node must be a multiplier op (the op table's ``multiplier``) with one full tensor operand
    and one scalar (a Python number, a one-element buffer or constant)."""
    spec = _spec(graph, name)
    if spec is None or not spec.multiplier:
        return None
    a = graph.node(name)
    ins = graph.inputs(name)
    scalar_nodes = [u for u in ins if is_scalar_node(graph, u)]
    exps = [s["exp"] for s in a["scalars"].values()]
    if len(ins) == 2 and len(scalar_nodes) == 1:
        exps.append(graph.node(scalar_source(graph, scalar_nodes[0]))["scalars"]["value"].get("exp"))
    elif len(ins) != 1 or not a["scalars"]:
        return None
    if any(e is None for e in exps):
        return None
    e = sp.Add(*exps) + 0
    return e * spec.sign


def follow(graph, name, user):
    """How ``user`` (a view-like op) maps the dims of its input ``name``: list of sets, or None."""
    spec = _spec(graph, user)
    w = graph.widths[-1]
    old, new = graph.node(name)["shapes"][w], graph.node(user)["shapes"][w]
    if old is None or new is None or spec is None or spec.dim_map is None:
        return None
    try:
        return spec.dim_map(graph.node(user)["args"], old, new)
    except (IndexError, TypeError, ZeroDivisionError):
        return None


def is_param_view(graph, name) -> bool:
    """Whether ``name`` is a parameter seen through view-like ops."""
    cur = name
    for _ in range(16):
        a = graph.node(cur)
        if a.get("param"):
            return True
        if a["kind"] != "call_function" or not is_view(graph, cur):
            return False
        ins = graph.inputs(cur)
        if not ins:
            return False
        cur = ins[0]
    return False


def input_at(graph, name, pos):
    for u, _, d in graph.nx.in_edges(name, data=True):
        if d["pos"] == pos:
            return u
    return None


def first_tensor_input(graph, name):
    ins = [u for u in graph.inputs(name) if not is_scalar_node(graph, u)]
    return ins[0] if ins else None


def chain_end(graph, node):
    """Follow single-user views, scalar multiplications and bias adds: where the layer's output
    lands (``(x W^T) * c + b`` and ``(x W^T + b) * c`` both end after the last op)."""
    while True:
        outs = list(graph.nx.successors(node))
        if len(outs) != 1 or graph.nx.number_of_edges(node, outs[0]) != 1:
            return node
        nxt = outs[0]
        if graph.node(nxt)["op"] in ("add", "sub"):
            others = [u for u in graph.inputs(nxt) if u != node]
            if len(others) == 1 and is_param_view(graph, others[0]):
                node = nxt
                continue
            return node
        if not is_view(graph, nxt) and scale_exp(graph, nxt) is None:
            return node
        node = nxt


def feeds_attention(graph, node, depth=8) -> bool:
    """Whether ``node``'s value reaches, through views and scalar factors only, q or k of an
    attention (sdpa's first two operands, or a contraction of two activations feeding a
    softmax): a factor on that path outside the projection's module is the attention scale."""
    cur = node
    for _ in range(depth):
        outs = list(graph.nx.successors(cur))
        if len(outs) != 1:
            return False
        nxt = outs[0]
        a = graph.node(nxt)
        if a["op"] == "scaled_dot_product_attention":
            return any(d["pos"] in ("0", "1") for u, _, d in graph.nx.in_edges(nxt, data=True)
                       if u == cur)
        spec = _spec(graph, nxt)
        if spec is not None and spec.attention and not any(is_param_view(graph, u) for u in graph.inputs(nxt)):
            return feeds_softmax(graph, nxt)
        if not is_view(graph, nxt) and scale_exp(graph, nxt) is None:
            return False
        cur = nxt
    return False


# ----------------------------------------------------------------------------- roles


def role(kind, dims, fan_in, fan_out):
    inf = (lambda ds: any(dims[d] is None or dims[d] > 0 for d in ds))
    if not inf(range(len(dims))):  # no infinite dim: scalar-like whatever consumes it (TP5 §B)
        return "scalar"
    if kind == "vector":  # a lookup's indexed dim is not in its fan_out: scalar-like if only it grows
        return "vector" if inf(fan_out) else "scalar"
    if kind != "matrix":
        return "unknown"
    i, o = inf(fan_in), inf(fan_out)
    return {(True, True): "hidden", (False, True): "input", (True, False): "output",
            (False, False): "scalar"}[(i, o)]


def _reduced_after(graph, node, ndim, depth=6):
    """Dims of ``node`` (an elementwise product) that a reduction downstream sums away, through
    single-user views and scalar factors: ``(z * v).sum(-1)`` contracts v like a matrix."""
    w = graph.widths[-1]
    cur, dmap = node, [{d} for d in range(ndim)]
    for _ in range(depth):
        outs = list(graph.nx.successors(cur))
        if len(outs) != 1:
            return None
        nxt = outs[0]
        op = graph.node(nxt)["op"]
        if op in ("sum", "mean", "nansum"):
            old, new = graph.node(cur)["shapes"][w], graph.node(nxt)["shapes"][w]
            args = graph.node(nxt)["args"]
            dims = args[1] if len(args) > 1 and args[1] is not None else list(range(len(old or ())))
            dims = {d % len(old) for d in ([dims] if isinstance(dims, int) else dims)} if old else set()
            return {i for i, ds in enumerate(dmap) if ds & dims} if new is not None else None
        if is_view(graph, nxt):
            step = follow(graph, cur, nxt)
            if step is None:
                return None
            dmap = [set().union(*(step[d] for d in ds if d < len(step))) if ds else set() for ds in dmap]
        elif scale_exp(graph, nxt) is None:
            return None
        cur = nxt
    return None


def _use(graph, user, pos, ndim) -> Use:
    spec = _spec(graph, user)
    if spec is None or spec.use is None:
        return Use("unknown")
    u = spec.use(graph.node(user), pos, ndim)
    if u.kind == "vector" and graph.node(user)["op"] in ("mul", "mul_") and len(graph.inputs(user)) == 2:
        reduced = _reduced_after(graph, user, len(graph.node(user)["shapes"][graph.widths[-1]] or ()))
        if reduced:  # multiply-then-reduce: a contraction over the reduced dims
            out_ndim = len(graph.node(user)["shapes"][graph.widths[-1]] or ())
            off = out_ndim - ndim  # right-aligned broadcasting
            fan_in = frozenset(d - off for d in reduced if d - off >= 0)
            return Use("matrix", fan_in, frozenset(range(ndim)) - fan_in)
    return u


def attach_uses(graph):
    """Walk from every parameter through view-like and scaling ops to the ops that consume it."""
    owners = _param_modules(graph)
    w = graph.widths[-1]
    for p in graph.params.values():
        ndim = len(p.dims)
        stack = [(node, [{d} for d in range(ndim)], ZERO) for node in p.nodes]
        seen = set()
        while stack:
            name, dmap, mult = stack.pop()
            for _, user, data in sorted(graph.nx.out_edges(name, data=True), key=lambda e: e[1]):
                if (name, user, data["pos"]) in seen:
                    continue
                seen.add((name, user, data["pos"]))
                s = scale_exp(graph, user)
                if is_view(graph, user) or s is not None:
                    step = [{d} for d in range(len(graph.node(name)["shapes"][w] or ()))]
                    if is_view(graph, user):
                        step = follow(graph, name, user) or step
                    new_map = [set().union(*(step[d] for d in ds if d < len(step))) if ds else set()
                               for ds in dmap]
                    stack.append((user, new_map, mult + (s or 0)))
                    continue
                cur_ndim = len(graph.node(name)["shapes"][w] or ())
                use = _use(graph, user, data["pos"], cur_ndim)
                fan_in = tuple(d for d in range(ndim) if dmap[d] & use.fan_in)
                fan_out = tuple(d for d in range(ndim) if dmap[d] & use.fan_out)
                if use.kind == "vector":
                    fan_in, fan_out = (), tuple(d for d in range(ndim) if dmap[d] & use.fan_out)
                total = mult + io_multiplier(graph, user, data["pos"], use.kind, owners)
                p.uses.append(ParamUse(node=user, op=graph.node(user)["op"], kind=use.kind,
                                       fan_in=fan_in, fan_out=fan_out,
                                       role=role(use.kind, p.dims, fan_in, fan_out),
                                       mult_exp=sp.nsimplify(total), pos=data["pos"]))
        p.uses.sort(key=lambda u: graph.order.index(u.node))


def _param_modules(graph) -> set:
    """Module paths (top level excluded) of the ops that consume a parameter, through views."""
    mods = set()
    for p in graph.params.values():
        stack, seen = list(p.nodes), set()
        while stack:
            n = stack.pop()
            for s in graph.nx.successors(n):
                if s in seen:
                    continue
                seen.add(s)
                if is_view(graph, s):
                    stack.append(s)
                else:
                    mods.add(graph.node(s)["module"])
    mods.discard("")
    return mods


def data_operand(graph, user, weight_pos):
    """The node feeding the data operand of a contraction whose weight enters at ``weight_pos``."""
    spec = _spec(graph, user)
    if spec is None or spec.data_pos is None:
        return None
    pos = spec.data_pos(graph.node(user), weight_pos)
    return input_at(graph, user, pos) if pos else None


def io_multiplier(graph, user, pos, kind, owners=frozenset()):
    """Scalar factors on the op's data operand (matrix uses) and on its output chain.

    ``linear(x * c, W)`` and ``linear(x, W) * c`` both give W the multiplier c (TP4's n^{-a});
    only chains that feed nothing else count, so a shared activation is never charged twice.
    The output chain passes through a bias add (``(x W^T + b) * c`` gives W the multiplier c).
    A factor applied inside (or by a hook of) another module that consumes parameters belongs
    to that module's parameters (``owners``): in ``fc(ln(x) * c)`` with the ``* c`` run by
    ``ln``'s forward hook, c is ln's multiplier, not fc's. A factor on the way into an attention
    contraction (``q * d**-0.5`` before ``q @ k^T``) is the attention scale (TP5 Def 4.1), not a
    multiplier of the projection.
    """
    total = ZERO
    here = graph.node(user)["module"]

    def foreign(n):
        m = graph.node(n)["module"]
        return m != here and m in owners

    if kind == "matrix":
        src = data_operand(graph, user, pos)
        while src is not None:
            s = scale_exp(graph, src)
            if graph.nx.out_degree(src) != 1 or (s is None and not is_view(graph, src)):
                break
            if s is not None and foreign(src):
                break
            total += s or 0
            src = first_tensor_input(graph, src)
    to_attention = feeds_attention(graph, user)
    node = user
    while True:
        outs = list(graph.nx.successors(node))
        if len(outs) != 1 or graph.nx.number_of_edges(node, outs[0]) != 1:
            break
        nxt = outs[0]
        s = scale_exp(graph, nxt)
        if s is None and graph.node(nxt)["op"] in ("add", "sub"):
            others = [u for u in graph.inputs(nxt) if u != node]
            if len(others) == 1 and is_param_view(graph, others[0]):
                node = nxt  # a bias added to the op's output: the chain goes on
                continue
            break
        if s is None and not is_view(graph, nxt):
            break
        if s is not None and (foreign(nxt) or (to_attention and graph.node(nxt)["module"] != here)):
            break  # another module's multiplier, or the attention's scale folded into q or k
        if s is not None and graph.node(nxt)["module"] != here and feeds_matrix_data(graph, nxt):
            break  # the next contraction's input multiplier: counted on its weight, not here
        total += s or 0
        node = nxt
    return total


def feeds_matrix_data(graph, node, depth=8) -> bool:
    """Whether ``node``'s value reaches, through single-user views and scalar factors, the data
    operand of an op that consumes a parameter as a matrix (``lm_head(ln_f(x) * c)``).

    A factor written outside both modules, between a layer's output and the next contraction,
    is one multiplier, and TP4's abc convention puts it on the weight that contracts it (W =
    n^{-a} w; mup's MuReadout divides its input by the width multiplier). ``io_multiplier``
    charges it there (the contraction's data-operand chain) and not also to the layer before:
    counted twice, a norm gain before a 1/width readout looked like a vector with a 1/n
    multiplier, which muP's vector rules reject though the dynamics are muP's."""
    cur = node
    for _ in range(depth):
        outs = list(graph.nx.successors(cur))
        if len(outs) != 1 or graph.nx.number_of_edges(cur, outs[0]) != 1:
            return False
        nxt = outs[0]
        if is_view(graph, nxt) or scale_exp(graph, nxt) is not None:
            cur = nxt
            continue
        spec = _spec(graph, nxt)
        if spec is None or spec.use is None or spec.data_pos is None:
            return False
        ndims = {u: len(graph.node(u)["shapes"][graph.widths[-1]] or ()) for u in graph.inputs(nxt)}
        for u, _, d in graph.nx.in_edges(nxt, data=True):
            if u != cur and is_param_view(graph, u) \
                    and spec.use(graph.node(nxt), d["pos"], ndims[u]).kind == "matrix" \
                    and input_at(graph, nxt, spec.data_pos(graph.node(nxt), d["pos"])) == cur:
                return True
        return False
    return False


# ----------------------------------------------------------------------------- attention


def operand_scale(graph, node) -> object:
    """Exponent of the width-dependent factors on the operands of a contraction of two
    activations, back along single-user chains of views and scalar factors within its module
    (``q * d**-0.5`` before ``q @ k^T`` or sdpa: the scale folded into q or k), and the op's own
    scale argument (baddbmm's alpha)."""
    a = graph.node(node)
    spec = _spec(graph, node)
    own = a["scalars"].get(spec.scale_arg, {}).get("exp") if spec is not None and spec.scale_arg else None
    total = own or ZERO
    module = a["module"]
    operands = [input_at(graph, node, p) for p in spec.contract_pos] if spec and spec.contract_pos else []
    for src in [u for u in operands if u is not None] or graph.inputs(node)[:2]:
        while src is not None and graph.nx.out_degree(src) == 1 and graph.node(src)["module"] == module:
            s = scale_exp(graph, src)
            if s is None and not is_view(graph, src):
                break
            total += s or 0
            src = first_tensor_input(graph, src)
    return sp.nsimplify(total)


def sdpa_scale(graph, node) -> tuple[object, object]:
    """(d_head exponent, scale exponent) of an sdpa node: its own scale (torch's default
    1/sqrt(d_head) when None) and any factor folded into q or k."""
    d = (graph.node(graph.inputs(node)[0])["dims"] or (ZERO,))[-1]
    d = ZERO if d is None else d
    return d, sp.nsimplify(own_scale(graph.node(node), d) + operand_scale(graph, node))


def output_scale(graph, node) -> tuple[object, str]:
    """(exponent of the scalar factors on a node's single-user output chain, the chain's end)."""
    total, cur = ZERO, node
    while True:
        outs = list(graph.nx.successors(cur))
        if len(outs) != 1:
            break
        s = scale_exp(graph, outs[0])
        if s is None and not is_view(graph, outs[0]):
            break
        total += s or 0
        cur = outs[0]
    return sp.nsimplify(total), cur


def feeds_softmax(graph, n, depth=6) -> bool:
    frontier = [n]
    for _ in range(depth):
        nxt = []
        for x in frontier:
            for s in graph.nx.successors(x):
                if graph.node(s)["op"] in ("softmax", "_softmax", "log_softmax", "_log_softmax",
                                           "_safe_softmax"):
                    return True
                nxt.append(s)
        frontier = nxt
    return False


def activation_contractions(graph, weight_nodes) -> list[tuple[str, object]]:
    """(node, contracted width exponent) of every contraction of two activations over a
    width-sized dim (explicit q @ k^T, attention weights @ v, einsum of two activations)."""
    out = []
    for n in graph.order:
        a = graph.node(n)
        if a["kind"] != "call_function" or n in weight_nodes:
            continue
        spec = lookup(a)
        if spec is None or not spec.attention or a["op"] == "scaled_dot_product_attention":
            continue
        ins = [input_at(graph, n, p) for p in spec.contract_pos] or graph.inputs(n)[:2]
        if None in ins:
            continue
        dims = graph.node(ins[0])["dims"] if ins else None
        if a["op"] == "einsum":
            try:
                lhs, outl = parse_einsum(a["args"][0], len(ins))
            except Exception:  # noqa: BLE001 - an equation we cannot read is not attention
                continue
            dims_b = graph.node(ins[1])["dims"] if len(ins) > 1 else None
            if len(lhs) != 2 or not dims or not dims_b or len(lhs[0]) != len(dims):
                continue
            d = sum((dims[i] or ZERO for i, c in enumerate(lhs[0]) if c not in outl and c in lhs[1]), ZERO)
        else:
            d = dims[-1] if dims else None
        if d is None or d <= 0:
            continue
        out.append((n, d))
    return out
