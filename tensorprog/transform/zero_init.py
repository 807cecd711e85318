"""``apply_mup(..., zero_init=("readout", "query"))``: start the readout and the query at zero.

TP5 (arXiv 2203.03466, App. D.2) recommends both for muTransfer: with a random readout, the muP
network's output at init has mean square ~ 1/width (Table 3 / Table 8's readout variance), and
with a random query the attention logits at init are ~ d_head^{-1/2} under the 1/d scale (Def
4.1); both are finite-width terms that make the best init scale drift with width. At zero they
vanish at every width, and the first update makes them Theta(1) as muP prescribes.

- "readout": every parameter whose traced role is output (a matrix with width-sized fan-in and a
  fixed fan-out: the readout weight, and any other such head, e.g. an MoE router) and the bias
  added by the same op. A readout tied to a parameter with another role (tied embeddings) is refused:
  zeroing it would zero the embedding.
- "query": for each traced attention call (``scaled_dot_product_attention``, or a contraction of
  two activations feeding a softmax: hand-written ``q @ k^T``), its query operand is followed back
  to the one linear (``linear``, ``addmm``, ``mm``, ``matmul``) whose output features it is zero
  without: through ops that move, select or scale entries (view, transpose, split, getitem,
  slice, scalar factors, casts), products (one zero factor is enough: RoPE's q cos +
  rotate(q) sin, RoFormer arXiv 2104.09864) and sums whose every term is zero. The ops downstream
  of that linear are then replayed, at every traced width, on a tensor holding each output
  feature's index (a mixing op carries the union of its inputs' features): the features that
  reach the query are the query's rows of the weight (and its bias entries). A fused projection
  (HF GPT-2's ``c_attn``: one ``Conv1D`` whose output is split into q, k, v) thus zeroes the
  query's third only. Every other reader of a query feature (the key, the value, q + 1) is
  refused. The query's features must form the same number of index ranges at every traced
  width, with ends affine in the width (checked on every traced width), so they extend to any
  width. Any other path (a norm or a nonlinearity on q) is refused, naming the attention call.
  With ``check`` (apply_mup's default), an eager forward at 2 x base_width confirms that every
  sdpa query is exactly zero and the first call's key and value are unchanged.
- Frozen parameters are refused (a frozen zero would stay zero).
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from ..errors import TensorprogError
from ..graph.params import get_param
from ..graph.uses import input_at, is_param_view, is_scalar_node, scale_exp

__all__ = ["ZERO_INIT_CHOICES", "check_zero_init", "ZeroSlice", "ZeroInitPlan", "zero_init_plan"]

ZERO_INIT_CHOICES = ("readout", "query")

#: Ops that only move or select entries (replayed on the feature indices).
MOVE_OPS = {"view", "_unsafe_view", "reshape", "transpose", "permute", "t", "getitem", "split",
            "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "unbind", "chunk",
            "slice", "select", "narrow", "unsqueeze", "squeeze", "flatten", "unflatten", "expand",
            "movedim", "view_as", "reshape_as", "_reshape_alias"}
#: Ops that keep every entry where it is (identity on the indices; casts would corrupt them).
SAME_OPS = {"contiguous", "clone", "alias", "to", "_to_copy", "detach", "lift_fresh_copy", "type_as"}
#: Ops whose output is zero where every tensor input is (replayed as a union of features).
ZERO_SUMS = {"add", "sub", "cat", "stack"}
#: Ops that mix features into their output (a union of the features of their inputs).
MIXING_OPS = ZERO_SUMS | {"mul", "div", "neg"}
PROJECTIONS = {"linear": "2", "addmm": "0", "mm": None, "matmul": None}  # op -> bias position


def check_zero_init(zero_init) -> tuple[str, ...]:
    """The validated ``zero_init`` tuple (a subset of ``ZERO_INIT_CHOICES``)."""
    if isinstance(zero_init, str) or not isinstance(zero_init, (tuple, list)):
        raise TensorprogError(
            f"zero_init must be a tuple of {ZERO_INIT_CHOICES}, got {zero_init!r}: e.g. "
            "zero_init=('readout',) or zero_init=('readout', 'query').")
    bad = [z for z in zero_init if z not in ZERO_INIT_CHOICES]
    if bad:
        raise TensorprogError(f"zero_init: unknown {bad}; the accepted values are {ZERO_INIT_CHOICES}.")
    return tuple(dict.fromkeys(zero_init))


@dataclass
class ZeroSlice:
    """Zero ``param`` (all of it when ``dim`` is None, else the index ranges along ``dim``).

    Each range is (start, stop), each end an affine function of the width ``c0 + c1 * width``
    given as the pair (c0, c1) of Fractions; ``size`` is the dim's length, the same way."""

    param: str
    why: str
    dim: int | None = None
    ranges: list = field(default_factory=list)
    size: tuple | None = None

    def at(self, width: int) -> list[tuple[int, int]]:
        """The integer ranges at ``width`` (an error where the affine ends are not integers)."""
        ends = [[c0 + c1 * width for c0, c1 in r] for r in self.ranges]
        if any(e.denominator != 1 for r in ends for e in r):
            raise TensorprogError(
                f"zero_init of {self.param} ({self.why}): at width {width} the query's rows "
                f"{ends} are not whole indices; use a width the traced ones scale to (a multiple "
                "of the head count).")
        return [(int(a), int(b)) for a, b in ends]


@dataclass
class ZeroInitPlan:
    slices: list[ZeroSlice]
    queries: list[str] = field(default_factory=list)  # attention nodes whose query is zeroed

    def extended(self, model) -> "ZeroInitPlan":
        """The plan for a deeper ``model`` (apply_mup's base_depth): a parameter the trace did
        not see takes the slice of the first traced one with the same starred path (blocks.3.x
        -> blocks.*.x), as ``transform/depth.extend_rules`` extends the rules."""
        from ..graph.depth import star

        planned = {s.param for s in self.slices}
        first: dict = {}
        for s in self.slices:
            first.setdefault(star(s.param), s)
        new = [dataclasses.replace(first[star(n)], param=n) for n, _ in model.named_parameters()
               if n not in planned and star(n) in first]
        return ZeroInitPlan(self.slices + new, self.queries)

    def apply(self, model, width: int) -> list[str]:
        """Zero the planned entries of ``model`` (built at ``width``); returns what was zeroed."""
        done = []
        with torch.no_grad():
            for s in self.slices:
                p = _param(model, s.param)
                if s.dim is None:
                    p.zero_()
                    done.append(s.param)
                    continue
                n = int(s.size[0] + s.size[1] * width)
                if p.shape[s.dim] != n:
                    raise TensorprogError(
                        f"zero_init of {s.param} ({s.why}): dim {s.dim} has {p.shape[s.dim]} "
                        f"entries at width {width}, but the traced widths extrapolate to {n}: the "
                        "projection does not grow with the width as traced.")
                for a, b in s.at(width):
                    p.narrow(s.dim, a, b - a).zero_()
                done.append(f"{s.param}[{s.dim}: {s.at(width)}]")
        return done


def zero_init_plan(r, which: tuple[str, ...]) -> ZeroInitPlan:
    """The ZeroInitPlan of a ``Rules`` (its traced ``graph``) for ``which`` (validated)."""
    slices, queries = [], []
    if "readout" in which:
        slices += readout_slices(r)
    if "query" in which:
        qs, queries = query_slices(r.graph)
        slices += qs
    return ZeroInitPlan(slices, queries)


# ----------------------------------------------------------------------------- readout


def readout_slices(r) -> list[ZeroSlice]:
    """Every parameter whose traced role is output, and the bias its op adds (whole)."""
    graph = r.graph
    out, nodes = [], set()
    for name, p in r.params.items():
        roles = p.role.split("+")
        if "output" not in roles:
            continue
        if roles != ["output"]:
            raise TensorprogError(
                f"zero_init=('readout',): {name} is the readout and is also used as "
                f"{'+'.join(x for x in roles if x != 'output')} (role {p.role}; tied to "
                f"{p.aliases or 'another use'}, e.g. tied embeddings): zeroing it would zero that "
                "use too, e.g. the embedding. Untie the readout (HF: tie_word_embeddings=False), "
                "or drop 'readout'.")
        _trainable(p.trainable, name, "readout")
        out.append(ZeroSlice(name, "readout"))
        nodes |= {u.node for u in graph.params[name].uses}
    if not out:
        raise TensorprogError("zero_init=('readout',): no parameter has the traced role output "
                              "(no readout weight whose fan-out stays fixed with the width).")
    for name, p in graph.params.items():
        if p.uses and all(u.node in nodes and u.kind != "matrix" for u in p.uses) and \
                name not in {s.param for s in out}:
            out.append(ZeroSlice(name, "readout bias"))
    return out


# ----------------------------------------------------------------------------- query


def attention_queries(graph) -> list[tuple[str, str]]:
    """(attention node, argument position of its query) of every traced attention call."""
    from ..graph.uses import activation_contractions, feeds_softmax
    from ..ops import lookup
    from ..predict.engine import matrix_weight_positions

    found = [(n, "0") for n in graph.order
             if graph.node(n)["op"] == "scaled_dot_product_attention"]
    for n, _ in activation_contractions(graph, matrix_weight_positions(graph)):
        if feeds_softmax(graph, n):
            spec = lookup(graph.node(n))
            pos = spec.contract_pos[0] if spec.contract_pos else "0"
            found.append((n, pos))
    return sorted(found, key=lambda x: graph.order.index(x[0]))


def query_slices(graph) -> tuple[list[ZeroSlice], list[str]]:
    """The query rows of each attention's projection (see the module docstring)."""
    atts = attention_queries(graph)
    if not atts:
        raise TensorprogError(
            "zero_init=('query',): the traced model has no attention call (no "
            "scaled_dot_product_attention, and no contraction of two activations feeding a "
            "softmax), so there is no query to zero. Drop 'query'.")
    out = []
    for att, qpos in atts:
        q = input_at(graph, att, qpos)
        where = f"attention `{att}` in module `{graph.node(att)['module'] or '<top>'}`"
        proj, bias = _walk_back(graph, q, where)
        per_width = {w: _replay(graph, proj, (att, qpos), q, w, where) for w in graph.widths}
        weight = _weight_of(graph, proj, where)
        use = next(u for u in graph.params[weight].uses if u.node == proj)
        others = [u.node for u in graph.params[weight].uses if u.node != proj]
        if len(use.fan_out) != 1 or others:
            raise TensorprogError(
                f"zero_init=('query',): the query projection {weight} of {where} "
                + ("is also used elsewhere (shared)" if others else "has no single output dim")
                + "; query zero-init is not supported for it.")
        for w, (feats, _) in per_width.items():
            if graph.params[weight].shapes[w][use.fan_out[0]] != feats or (
                    bias is not None and graph.params[bias].shapes[w] != (feats,)):
                raise TensorprogError(
                    f"zero_init=('query',): at width {w} the projection `{proj}` of {where} has "
                    f"{feats} output features, but its weight {weight} (or bias {bias}) does not "
                    "index them one to one; query zero-init is not supported for it.")
        _trainable(graph.params[weight].trainable, weight, "query")
        ranges, size = _affine(graph.widths, per_width, weight, where)
        out.append(ZeroSlice(weight, f"query of {where}", use.fan_out[0], ranges, size))
        if bias is not None:
            out.append(ZeroSlice(bias, f"query bias of {where}", 0, ranges, size))
    return out, [a for a, _ in atts]


def _trainable(trainable, name, what):
    if not trainable:
        raise TensorprogError(f"zero_init=('{what}',): {name} is frozen (requires_grad=False): "
                              "started at zero it would stay zero. Unfreeze it, or drop "
                              f"'{what}'.")


def _all_tensors(a) -> bool:
    """Whether every summand of an add / sub / cat / stack is a tensor (not ``q + 1.0``)."""
    first = a["args"][0] if a["args"] else None
    terms = first if a["op"] in ("cat", "stack") else a["args"][:2]
    return isinstance(terms, (list, tuple)) and all(isinstance(t, str) and t.startswith("%")
                                                    for t in terms)


def _walk_back(graph, node, where):
    """(projection node, its bias or None): the one linear whose output features ``node`` is
    zero without (``_zero_from``)."""
    blocked: list = []
    found = _zero_from(graph, node, {}, blocked)
    if not found or len(found) != 1:
        why = (f"comes from `{graph.node(blocked[0])['op']}` (node {blocked[0]}), which is not a "
               "linear projection nor an op that moves, scales, rotates or adds entries"
               if blocked and not found else "does not come from one linear projection")
        raise TensorprogError(
            f"zero_init=('query',): the query of {where} {why}; query zero-init is not "
            "supported for it (zero the query projection by hand).")
    cur = next(iter(found))
    op = graph.node(cur)["op"]
    pos = PROJECTIONS[op]
    b = input_at(graph, cur, pos) if pos is not None else None
    bias = _param_name(graph, b) if b is not None else None
    if b is not None and bias is None:
        raise TensorprogError(
            f"zero_init=('query',): the query projection `{op}` (node {cur}) of {where} adds a "
            "tensor that is not a parameter (e.g. a residual): zeroing its weight would not zero "
            "the query; query zero-init is not supported for it.")
    return cur, bias


def _zero_from(graph, n, memo, blocked, depth=0):
    """The projection nodes whose output features ``n`` is zero without, or None: followed back
    through ops that move or scale entries (one input), add / sub / cat / stack (every input
    must be zero), mul (one zero factor is enough: RoPE's q cos + rotate(q) sin) and div (its
    numerator)."""
    if n in memo:
        return memo[n]
    memo[n] = None  # a cycle cannot happen in a DAG; this also bounds the depth
    a = graph.node(n)
    op = a["op"]
    ins = [u for u in graph.inputs(n) if not is_scalar_node(graph, u)]
    out = None
    if op in PROJECTIONS and _weight_of(graph, n, "", strict=False):
        out = {n}
    elif a["kind"] != "call_function" or depth > 64:
        pass
    elif len(ins) == 1 and (op in MOVE_OPS or op in SAME_OPS or op == "neg"
                            or scale_exp(graph, n) is not None):
        out = _zero_from(graph, ins[0], memo, blocked, depth + 1)
    elif op in ZERO_SUMS and ins and _all_tensors(a):
        parts = [_zero_from(graph, u, memo, blocked, depth + 1) for u in graph.inputs(n)]
        out = set().union(*parts) if all(parts) else None
    elif op == "mul" and ins:
        parts = [_zero_from(graph, u, memo, blocked, depth + 1) for u in ins]
        out = next((p for p in parts if p), None)
    elif op == "div" and ins:
        num = input_at(graph, n, "0")
        out = _zero_from(graph, num, memo, blocked, depth + 1) if num in ins else None
    if out is None:
        blocked.append(n)
    memo[n] = out
    return out


def _weight_of(graph, node, where, strict=True):
    """The parameter used as a matrix by ``node`` (a projection), or None / an error."""
    names = [p.name for p in graph.params.values()
             if any(u.node == node and u.kind == "matrix" for u in p.uses)]
    if len(names) == 1:
        return names[0]
    if strict:
        raise TensorprogError(f"zero_init=('query',): the projection `{node}` of {where} has no "
                              "single weight parameter; query zero-init is not supported for it.")
    return None


def _param_name(graph, node):
    cur = node
    while not graph.node(cur).get("param"):
        if not is_param_view(graph, cur):
            return None
        cur = graph.inputs(cur)[0]
    return graph.node(cur)["param"]


def _replay(graph, proj, att, q, width, where):
    """(features, ranges of the query's features) at ``width``: every op downstream of the
    projection that only moves entries is re-run on its output features' indices, and one that
    mixes them (add, mul, cat...) carries the union of its inputs' features; any other reader
    of a query feature is an error."""
    prog = graph.programs.get(width)
    fx = {n.name: n for n in prog.graph.nodes} if prog is not None else {}
    shape = graph.node(proj)["shapes"][width]
    feats = shape[-1]
    env = {proj: torch.arange(feats).expand(shape).contiguous()}  # index tensor, or a frozenset
    readers = []  # (node, input, argument position, features)
    for n in graph.order[graph.order.index(proj) + 1:]:
        ins = graph.inputs(n)
        hit = [u for u in ins if u in env]
        if not hit:
            continue
        a = graph.node(n)
        tensors = [u for u in ins if not is_scalar_node(graph, u)]
        call = a["kind"] == "call_function"
        movable = call and len(tensors) == 1 and (
            a["op"] in MOVE_OPS or a["op"] in SAME_OPS or scale_exp(graph, n) is not None)
        if movable and a["op"] in MOVE_OPS and isinstance(env[hit[0]], (torch.Tensor, tuple, list)):
            env[n] = _run(fx.get(n), a["op"], env[hit[0]], width, where, n)
        elif movable:
            env[n] = env[hit[0]]
        elif call and a["op"] in MIXING_OPS:
            env[n] = frozenset().union(*(_features(env[u]) for u in hit))
        else:
            readers += [(n, u, pos, _features(env[u])) for u, _, pos in
                        graph.nx.in_edges(n, data="pos") if u in env]
    if q not in env:
        raise TensorprogError(f"zero_init=('query',): the query of {where} could not be replayed "
                              f"from its projection at width {width}; not supported.")
    qset = _features(env[q])
    for n, u, pos, fs in readers:
        if (n, pos) == att and u == q:
            continue
        shared = qset & fs
        if shared:
            raise TensorprogError(
                f"zero_init=('query',): {len(shared)} of the query features of {where} are also "
                f"read by `{graph.node(n)['op']}` (node {n}, argument {pos}), e.g. the key or the "
                "value: zeroing them would change it too. Query zero-init is not supported for it.")
    return feats, _ranges(sorted(qset))


def _features(v) -> frozenset:
    """The projection features a replayed value holds."""
    if isinstance(v, torch.Tensor):
        return frozenset(torch.unique(v).tolist())
    if isinstance(v, (tuple, list)):
        return frozenset().union(*(_features(x) for x in v))
    return v


def _run(node, op, x, width, where, name):
    """Re-run one recorded move op on the index tensor ``x``."""
    if node is None:
        raise TensorprogError(f"zero_init=('query',): node {name} of {where} is missing from the "
                              f"program traced at width {width}; query zero-init is not supported.")

    def sub(v):
        if isinstance(v, torch.fx.Node):
            return x
        if isinstance(v, (list, tuple)):
            return type(v)(sub(y) for y in v)
        return v
    fx_in = [v for v in node.all_input_nodes]
    if len(fx_in) != 1:
        raise TensorprogError(f"zero_init=('query',): `{op}` (node {name}) of {where} takes "
                              f"{len(fx_in)} tensors; query zero-init is not supported.")
    target = operator.getitem if op == "getitem" else node.target
    try:
        return target(*sub(node.args), **sub(dict(node.kwargs)))
    except Exception as e:  # noqa: BLE001 - a form the replay cannot run: refuse, do not guess
        raise TensorprogError(f"zero_init=('query',): replaying `{op}` (node {name}) of {where} "
                              f"failed ({e}); query zero-init is not supported for it.") from None


def _ranges(idx: list[int]) -> list[tuple[int, int]]:
    out = []
    for i in idx:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _affine(widths, per_width, weight, where):
    """Each range end, and the feature count, as c0 + c1 * width over the traced widths."""
    counts = {len(r) for _, r in per_width.values()}
    if len(counts) != 1:
        raise TensorprogError(
            f"zero_init=('query',): the query rows of {weight} ({where}) form "
            f"{ {w: len(r) for w, (_, r) in per_width.items()} } index ranges at the traced "
            "widths (e.g. per-head interleaved q/k/v "
            "with a head count that grows): not one pattern that extends to other widths; query "
            "zero-init is not supported for it.")

    def fit(vals):
        w0, w1 = widths[0], widths[-1]
        c1 = Fraction(vals[-1] - vals[0], w1 - w0) if w1 != w0 else Fraction(0)
        c0 = Fraction(vals[0]) - c1 * w0
        if any(c0 + c1 * w != v for w, v in zip(widths, vals)):
            raise TensorprogError(
                f"zero_init=('query',): the query rows of {weight} ({where}) are not affine in "
                f"the width ({dict(zip(widths, vals))}); query zero-init is not supported for it.")
        return c0, c1

    k = counts.pop()
    ranges = [(fit([per_width[w][1][i][0] for w in widths]), fit([per_width[w][1][i][1] for w in widths]))
              for i in range(k)]
    return ranges, fit([per_width[w][0] for w in widths])


def _param(model, name):
    try:
        return get_param(model, name)
    except KeyError:
        raise TensorprogError(f"zero_init: parameter {name!r} of the traced model is missing from "
                              "the model the factory built.") from None


# ----------------------------------------------------------------------------- eager check


class _CaptureSDPA(torch.overrides.TorchFunctionMode):
    """Records (query, key, value) of every scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._C._nn.scaled_dot_product_attention:
            qkv = list(args[:3]) + [kwargs[k] for k in ("query", "key", "value")[len(args):] if k in kwargs]
            self.calls.append(tuple(t.detach().clone() for t in qkv))
        return func(*args, **kwargs)


def check_queries(build, inputs, width: int) -> None:
    """Eagerly, at ``width``: with the query zeroed, every sdpa call's query is exactly zero, and
    the first call's key and value equal those of the same model (same seed) without zero_init
    (later calls see the changed attention output of the earlier ones).
    build(zero: bool) -> model; inputs(model) -> (args, kwargs)."""
    runs = []
    for zero in (False, True):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build(zero)
        model.eval()
        args, kwargs = inputs(model)
        with torch.no_grad(), _CaptureSDPA() as cap:
            model(*args, **kwargs)
        runs.append(cap.calls)
    plain, zeroed = runs
    for i, (q, _, _) in enumerate(zeroed):
        if q.count_nonzero():
            raise TensorprogError(
                f"zero_init=('query',): at width {width}, scaled_dot_product_attention call {i} "
                "ran with a non-zero query after zeroing the traced query rows: the eager model "
                "does not match the trace. Query zero-init is not supported for this model.")
    if plain and zeroed and not all(torch.equal(a, b) for a, b in zip(plain[0][1:], zeroed[0][1:])):
        raise TensorprogError(
            f"zero_init=('query',): at width {width}, zeroing the traced query rows changed the "
            "key or value of the first scaled_dot_product_attention call. Query zero-init is not "
            "supported for this model.")


# ----------------------------------------------------------------------------- generated code


def to_source(r, which) -> list[str]:
    """Lines of ``mup_zero_init_(model, width)`` for ``Rules.to_pytorch(zero_init=...)``: the
    same entries ``apply_mup(zero_init=which)`` zeroes, each range end c0 + c1 * width."""
    which = check_zero_init(which)
    if not which:
        return []
    if r.graph is None:
        raise TensorprogError("zero_init needs the traced graph: rules read back from JSON have "
                              "none; derive them with tensorprog.rules(factory, ...).")
    plan = zero_init_plan(r, which)
    out = ["", "", "def mup_zero_init_(model, width):",
           f'    """Start {" and ".join(which)} at exactly zero (TP5 arXiv 2203.03466 App. D.2); call',
           '    it after mup_init_. A range end c0 + c1 * width must be a whole index."""',
           "    from fractions import Fraction",
           "",
           "    def at(c0, c1):",
           "        v = Fraction(c0) + Fraction(c1) * width",
           "        assert v.denominator == 1, f'width {width}: index {v} is not whole'",
           "        return int(v)",
           "",
           "    with torch.no_grad():"]
    for s in plan.slices:
        p = f"model.get_parameter({s.param!r})"
        if s.dim is None:
            out.append(f"        {p}.zero_()  # {s.why}")
            continue
        out.append(f"        # {s.why}: dim {s.dim} has {_text(s.size)} entries")
        for (a0, a1), (b0, b1) in s.ranges:
            start, stop = f"at('{a0}', '{a1}')", f"at('{b0}', '{b1}')"
            out.append(f"        {p}.narrow({s.dim}, {start}, {stop} - {start}).zero_()")
    return out


def _text(c) -> str:
    c0, c1 = c
    return f"{c0} + {c1} * width" if c0 else f"{c1} * width"
