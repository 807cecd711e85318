"""muP rules for any traced model: init variance, multiplier and learning rate per parameter.

``rules(factory, widths, example_inputs=..., optimizer="adam", convention="table3")`` traces the
model and gives, for every parameter, the muP init variance, forward multiplier and learning-rate
scaling as SymPy expressions in ``fan_in``, ``fan_out`` (the parameter's fan-in and fan-out, read
off how the graph uses it) and, for the factors relative to the base width, ``width_mult =
width / base_width``. The rules come from each use's fan exponents, never from the module type:

* fan-in finite, fan-out infinite: **input-like** (input weights, embeddings, every bias, norm
  gains, a depthwise conv's weight, LoRA's B);
* both infinite: **hidden** (fan-in may be n^2: nn.Bilinear's weight contracts in1 x in2);
* fan-in infinite, fan-out finite: **output-like** (the readout, LoRA's A, a MoE router);
* both finite: **scalar-like** (a readout bias, a learnable temperature): constant in everything.

Conventions (TP5 Tables 3, 8, 9; symbols as in the table, width dependence only through
fan_in / fan_out, which are finite or grow with width):

============ ====================== =============================== ==============================
convention   input-like             hidden                          output-like
============ ====================== =============================== ==============================
``table3``   var 1/fan_in, mult 1,  var 1/fan_in, mult 1,           var 1/fan_in^2, mult 1,
             SGD fan_out, Adam 1    SGD 1, Adam 1/fan_in            SGD 1/fan_in, Adam 1/fan_in
``table8``   as table3              as table3                       var 1, mult 1/fan_in,
                                                                    SGD fan_in, Adam 1
``table9``   var 1/fan_out, mult    as table3                       var 1/fan_in, mult
             sqrt(fan_out), SGD 1,                                  1/sqrt(fan_in), SGD 1,
             Adam 1/sqrt(fan_out)                                   Adam 1/sqrt(fan_in)
``unit``     var 1, mult            var 1, mult 1/sqrt(fan_in),     var 1, mult 1/fan_in,
             1/sqrt(fan_in), SGD    SGD fan_in, Adam 1/sqrt(fan_in) SGD fan_in, Adam 1
             fan_in fan_out, Adam
             sqrt(fan_in)
============ ====================== =============================== ==============================

``unit`` is u-muP's *form* (Blake et al. 2024: unit-variance init, hidden multiplier
fan_in^{-1/2}, readout multiplier 1/fan_in) with muP's learning rates: it is Table 3 moved by
TP5 Lemma J.1 with t = Table 3's init std, so it is exactly muP. (u-muP itself also changes the
embedding's Adam LR to 1/sqrt(fan_out) on purpose, which is *not* muP; ``unit`` does not.)
Every convention is Table 3 moved by Lemma J.1: multiplier A, init std B, LR C ->
(A t, B / t, C / t^2) under SGD, (A t, B / t, C / t) under Adam; the invariants a + b and
2a + c (SGD) / a + c (Adam) are the same in all four.

Three situations move a parameter off its convention's literal form, always by Lemma J.1, so the
result is still exactly muP:

* **tied weights** (an embedding reused as the readout): one tensor has one init and one LR; they
  follow the first non-output use (the embedding), and every other use gets the multiplier that
  makes its invariants right (the readout: 1/fan_in relative to the embedding, Table 8's form).
* **no hook for a multiplier**: multipliers are applied by forward hooks on the module that runs
  the use (see ``HookRule``); where the module cannot be hooked (a parameter used functionally
  inside a bigger module, a module whose output is not linear in it), the parameter keeps its
  current multiplier and its init and LR take the shift instead.
* **vector- and scalar-like parameters that start smaller** than Theta(1) (PyTorch's hidden
  biases, std 1/sqrt(3 fan_in of the layer)): any init up to Theta(1) is muP for them, so a
  smaller init is kept (only a larger one is scaled down).

Width-dependent ops without parameters: a contraction of two width-sized activations that are
correlated after training (attention's q . k) grows like d by the law of large numbers, so it
needs a 1/d factor, not 1/sqrt(d) (TP5 Def 4.1): ``Rules.ops`` lists every such contraction with
the factor it needs (``scaled_dot_product_attention``'s ``scale``, or an explicit ``q @ k^T``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import sympy as sp

from ..errors import TensorprogError
from ..graph.trace import VIEW_OPS, WidthGraph, scale_exp, trace
from ..jsonio import JSONMixin

__all__ = ["rules", "Rules", "ParamRule", "UseRule", "HookRule", "OpRule", "CONVENTIONS", "KINDS",
           "FAN_IN", "FAN_OUT", "WIDTH_MULT", "convention_table"]

FAN_IN, FAN_OUT, WIDTH_MULT = sp.symbols("fan_in fan_out width_mult", positive=True)
_N = sp.Symbol("n", positive=True)  # the width, for exponents
ZERO = sp.Integer(0)
HALF = sp.Rational(1, 2)

KINDS = ("input-like", "hidden", "output-like", "scalar-like")
CONVENTIONS = ("table3", "table8", "table9", "unit")
_CONVENTION_NAMES = {
    "table3": "TP5 Table 3 (init and learning rate only)",
    "table8": "TP5 Table 8 (the mup package: readout multiplier 1/fan_in)",
    "table9": "TP5 Table 9 (TP4's form: input multiplier sqrt(fan_out), readout 1/sqrt(fan_in))",
    "unit": "unit init with multipliers (u-muP's form, muP's learning rates)",
}
_ONE = sp.Integer(1)


def _table3():
    return {
        #              init var          multiplier  SGD LR          Adam LR
        "input-like": (1 / FAN_IN, _ONE, FAN_OUT, _ONE),
        "hidden": (1 / FAN_IN, _ONE, FAN_OUT / FAN_IN, 1 / FAN_IN),
        "output-like": (1 / FAN_IN**2, _ONE, 1 / FAN_IN, 1 / FAN_IN),
        "scalar-like": (_ONE, _ONE, _ONE, _ONE),
    }


def _tables():
    t3 = _table3()
    t8 = dict(t3, **{"output-like": (_ONE, 1 / FAN_IN, FAN_IN, _ONE)})
    t9 = dict(t3, **{
        "input-like": (1 / FAN_OUT, sp.sqrt(FAN_OUT), _ONE, 1 / sp.sqrt(FAN_OUT)),
        "output-like": (1 / FAN_IN, 1 / sp.sqrt(FAN_IN), _ONE, 1 / sp.sqrt(FAN_IN)),
    })
    unit = {}
    for kind, (var, mult, sgd, adam) in t3.items():  # Lemma J.1 with t = Table 3's init std
        t = sp.sqrt(var)
        unit[kind] = (_ONE, sp.simplify(mult * t), sp.simplify(sgd / t**2), sp.simplify(adam / t))
    return {"table3": t3, "table8": t8, "table9": t9, "unit": unit}


_TABLES = _tables()


def convention_table(convention: str) -> dict[str, dict[str, sp.Expr]]:
    """{kind: {"init_var", "multiplier", "lr_sgd", "lr_adam"}} of a convention (SymPy in
    FAN_IN / FAN_OUT)."""
    _check_convention(convention)
    return {k: dict(zip(("init_var", "multiplier", "lr_sgd", "lr_adam"), v))
            for k, v in _TABLES[convention].items()}


def _check_convention(convention):
    if convention not in CONVENTIONS:
        raise TensorprogError(f"unknown convention {convention!r}; choose one of: "
                              f"{', '.join(CONVENTIONS)} ({'; '.join(f'{k}: {v}' for k, v in _CONVENTION_NAMES.items())}).")


def _exp(expr, ai, ao):
    """Width exponent of a monomial in FAN_IN, FAN_OUT, WIDTH_MULT given fan exponents."""
    e = sp.sympify(expr).subs({FAN_IN: _N**ai, FAN_OUT: _N**ao, WIDTH_MULT: _N})
    e = sp.powsimp(sp.expand_power_base(e, force=True), force=True)
    _, k = e.as_coeff_exponent(_N)
    return sp.nsimplify(k)


def _pretty(e, ai, ao):
    """A width exponent as a power of the use's own fan_in (or fan_out, or width_mult)."""
    e = sp.nsimplify(e)
    if e == 0:
        return _ONE
    if ai:
        return FAN_IN ** (e / ai)
    if ao:
        return FAN_OUT ** (e / ao)
    return WIDTH_MULT**e


def kind_of(ai, ao) -> str:
    """input-like / hidden / output-like / scalar-like from fan-in and fan-out exponents."""
    i, o = ai is None or ai > 0, ao is None or ao > 0
    return {(False, True): "input-like", (True, True): "hidden", (True, False): "output-like",
            (False, False): "scalar-like"}[(i, o)]


# ----------------------------------------------------------------------------- records


@dataclass
class UseRule:
    """One use of a parameter (one consuming op) and the multiplier it needs there."""

    node: str
    op: str
    module: str  # the module that runs the op (where a hook goes)
    role: str  # traced role
    kind: str  # input-like / hidden / output-like / scalar-like / unknown
    fan_in_exp: Any
    fan_out_exp: Any
    multiplier: Any  # SymPy, in this use's fan_in / fan_out
    mult_exp: Any  # its width exponent
    measured_mult_exp: Any  # the model's multiplier now
    shift: Any = ZERO  # Lemma J.1 shift t = n^shift relative to the convention's literal form

    @property
    def factor_exp(self):
        """Multiplier to add: (width / base_width)^factor_exp (0 where there is no rule)."""
        if self.mult_exp is None:
            return ZERO
        return sp.nsimplify(self.mult_exp - self.measured_mult_exp)


@dataclass
class ParamRule:
    """The muP rule of one parameter (tied parameters appear once, under their first name)."""

    name: str
    aliases: list[str]
    shape: tuple
    role: str  # traced role, e.g. "hidden", "input+output"
    kind: str  # kind of the use that fixes init and LR (the anchor)
    trainable: bool
    fan_in_exp: Any
    fan_out_exp: Any
    init_var: Any  # SymPy in fan_in / fan_out (or None when unknown)
    multiplier: Any  # of the anchor use
    lr: Any  # None when frozen
    init_exp: Any  # target init RMS ~ n^init_exp
    mult_exp: Any
    lr_exp: Any  # target LR ~ n^lr_exp (None when frozen)
    measured_init_exp: Any  # RMS now: exponent, "zero" or None
    measured_lr_exp: Any
    uses: list[UseRule] = field(default_factory=list)
    shift: Any = ZERO
    notes: list[str] = field(default_factory=list)
    problem: str | None = None  # set when no muP form can be applied

    @property
    def init_factor_exp(self):
        """Rescale the fresh init by (width / base_width)^init_factor_exp (0: leave it)."""
        if self.measured_init_exp in (None, "zero") or self.init_exp is None:
            return ZERO
        return sp.nsimplify(self.init_exp - self.measured_init_exp)

    @property
    def init_factor(self):
        return WIDTH_MULT**self.init_factor_exp

    @property
    def lr_factor(self):
        """Learning rate = base LR * lr_factor (width_mult = width / base_width)."""
        return None if self.lr_exp is None else WIDTH_MULT**self.lr_exp


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


@dataclass
class Rules(JSONMixin):
    """What ``rules`` found: per-parameter rules, the hooks that carry multipliers, and the
    contractions that need a 1/d scale. ``str()`` a table, ``to_dict()`` / ``to_json()``,
    ``to_pytorch()`` code to paste."""

    convention: str
    optimizer: str
    base_width: int
    widths: tuple
    params: dict[str, ParamRule]
    hooks: list[HookRule]
    ops: list[OpRule]
    notes: list[str]
    label: str = "model"
    graph: WidthGraph | None = field(default=None, repr=False)

    @property
    def problems(self) -> list[str]:
        out = [p.problem for p in self.params.values() if p.problem]
        for o in self.ops:
            if not o.ok and not o.fixable:
                out.append(_explicit_problem(o))
        return out

    # ------------------------------------------------------------------ outputs

    def to_dict(self) -> dict:
        s = (lambda x: None if x is None else str(x))
        return {
            "convention": self.convention, "optimizer": self.optimizer,
            "base_width": self.base_width, "widths": list(self.widths),
            "symbols": {"fan_in": "the parameter's fan-in (product of contracted dims)",
                        "fan_out": "its fan-out", "width_mult": "width / base_width"},
            "params": {k: {
                "aliases": p.aliases, "shape": list(p.shape), "role": p.role, "kind": p.kind,
                "trainable": p.trainable, "fan_in_exp": s(p.fan_in_exp), "fan_out_exp": s(p.fan_out_exp),
                "init_var": s(p.init_var), "multiplier": s(p.multiplier), "lr": s(p.lr),
                "init_exp": s(p.init_exp), "mult_exp": s(p.mult_exp), "lr_exp": s(p.lr_exp),
                "measured_init_exp": s(p.measured_init_exp), "measured_lr_exp": s(p.measured_lr_exp),
                "init_factor": s(p.init_factor), "lr_factor": s(p.lr_factor), "shift": s(p.shift),
                "uses": [{"node": u.node, "op": u.op, "module": u.module, "role": u.role,
                          "kind": u.kind, "multiplier": s(u.multiplier), "mult_exp": s(u.mult_exp),
                          "measured_mult_exp": s(u.measured_mult_exp),
                          "factor": s(WIDTH_MULT**u.factor_exp)} for u in p.uses],
                "notes": p.notes, "problem": p.problem} for k, p in self.params.items()},
            "hooks": [{"module": h.module, "input_factor": s(WIDTH_MULT**h.pre_exp),
                       "output_factor": s(WIDTH_MULT**h.post_exp), "params": h.params}
                      for h in self.hooks],
            "ops": [{"node": o.node, "module": o.module, "op": o.op, "attention": o.attention,
                     "d_exp": s(o.d_exp), "scale_exp": s(o.scale_exp), "needed": "1/d",
                     "needed_exp": s(o.needed_exp), "factor": s(WIDTH_MULT**o.factor_exp),
                     "fixable": o.fixable, "ok": o.ok} for o in self.ops],
            "notes": self.notes, "problems": self.problems,
        }

    def __str__(self) -> str:
        return _format(self)

    def to_pytorch(self) -> str:
        """Python source: ``mup_init_``, ``mup_multipliers``, ``mup_attention``,
        ``mup_param_groups``; every factor is 1 at the base width."""
        return _pytorch(self)


# ----------------------------------------------------------------------------- derivation


def rules(
    factory: Callable | WidthGraph,
    widths: Sequence[int] = (64, 128, 256),
    *,
    example_inputs=None,
    optimizer: Any = "adam",
    convention: str = "table3",
    base_width: int | None = None,
    device: str = "cpu",
    label: str = "model",
    verbose: bool = False,
) -> Rules:
    """The muP rules of every parameter of ``factory`` (width -> nn.Module, or a traced
    ``WidthGraph``) in ``convention`` for ``optimizer`` ("sgd", "adam" or an optimizer class /
    name: AdamW, RMSprop... are Adam-like). ``base_width`` (default: the smallest width) is where
    every relative factor is 1."""
    from ..theory.abc import optimizer_class

    _check_convention(convention)
    opt = optimizer_class(optimizer)
    graph = factory if isinstance(factory, WidthGraph) else trace(
        factory, widths, example_inputs=example_inputs, device=device, verbose=verbose)
    base = int(base_width if base_width is not None else min(graph.widths))
    return derive(graph, opt, convention, base, label=label)


def derive(graph: WidthGraph, optimizer: str, convention: str, base_width: int, *,
           label: str = "model") -> Rules:
    """``rules`` on an already traced graph (optimizer: "sgd" or "adam")."""
    structure = {}
    fixed: set = set()
    notes: list[str] = []
    for _ in range(8):  # fixing a use can move another module's factors: iterate to a fixpoint
        params = {name: _param_rule(graph, p, optimizer, convention, fixed)
                  for name, p in graph.params.items()}
        hooks, newly = _hooks(graph, params, structure)
        if newly <= fixed:
            break
        fixed |= newly
    for name, pr in params.items():
        for u in pr.uses:
            if (name, u.node) in fixed and u.factor_exp == 0 and pr.shift != 0:
                why = structure.get(u.module, (False, "", {}))[1]
                pr.notes.append(f"no hook for its multiplier in `{u.module or '<top>'}` ({why}): "
                                "its init and learning rate take the shift instead (TP5 Lemma J.1).")
                break
    ops = _ops(graph)
    if any(not o.ok for o in ops if o.fixable):
        notes.append("attention logits need scale ~ 1/d_head (TP5 Def 4.1): multiply the scale of "
                     "each scaled_dot_product_attention listed by the factor shown.")
    return Rules(convention=convention, optimizer=optimizer, base_width=base_width,
                 widths=tuple(graph.widths), params=params, hooks=hooks, ops=ops, notes=notes,
                 label=label, graph=graph)


def _literal(convention, kind, optimizer):
    var, mult, sgd, adam = _TABLES[convention][kind]
    return var, mult, (sgd if optimizer == "sgd" else adam)


def _param_rule(graph, p, optimizer, convention, fixed) -> ParamRule:
    k = 2 if optimizer == "sgd" else 1  # LR moves by t^2 (SGD) or t (Adam) under Lemma J.1
    rule = ParamRule(
        name=p.name, aliases=list(p.aliases), shape=tuple(p.shapes[max(graph.widths)]), role=p.role,
        kind="unknown", trainable=p.trainable, fan_in_exp=p.fan_in_exp, fan_out_exp=p.fan_out_exp,
        init_var=None, multiplier=None, lr=None, init_exp=None, mult_exp=None, lr_exp=None,
        measured_init_exp=p.init_exp, measured_lr_exp=p.lr_exp)
    if not p.uses:
        rule.notes.append("not used by the traced forward pass: left as it is.")
        return rule
    uses = []
    for u in p.uses:
        ai, ao = p.dims_exp(u.fan_in), p.dims_exp(u.fan_out)
        module = graph.node(u.node)["module"]
        if u.role == "unknown" or ai is None or ao is None:
            rule.problem = (
                f"{p.name}: tensorprog cannot tell how `{u.op}` (in `{module or '<top>'}`) uses it "
                "(no fan-in / fan-out rule for that op, or a dim with no power law of the width); "
                "no muP rule can be derived. Give it a rule by hand.")
            return rule
        kind = kind_of(ai, ao)
        uses.append(UseRule(node=u.node, op=u.op, module=module, role=u.role, kind=kind,
                            fan_in_exp=ai, fan_out_exp=ao, multiplier=None, mult_exp=None,
                            measured_mult_exp=sp.nsimplify(u.mult_exp)))
    rule.uses = uses
    lit = {}
    for u in uses:
        var, mult, lr = _literal(convention, u.kind, optimizer)
        ai, ao = u.fan_in_exp, u.fan_out_exp
        lit[u.node] = (var, mult, lr, _exp(mult, ai, ao), _exp(var, ai, ao) / 2, _exp(lr, ai, ao))

    # std exponent s of the tensor: from a use that must keep its multiplier, else the anchor
    order = {"input-like": 0, "hidden": 1, "scalar-like": 2, "output-like": 3}
    anchor = min(uses, key=lambda u: order[u.kind])
    pinned = [u for u in uses if (p.name, u.node) in fixed]
    if pinned:
        cands = {sp.nsimplify(lit[u.node][3] + lit[u.node][4] - u.measured_mult_exp) for u in pinned}
        if len(cands) > 1:
            rule.problem = (
                f"{p.name} is used by {', '.join(_where(u) for u in pinned)}, "
                "which need different multipliers, and tensorprog cannot hook those modules "
                "(the weight is used functionally, or the module's output is not linear in it). "
                "Apply the multiplier by hand, e.g. wrap the use in its own nn.Linear.")
            return rule
        s = cands.pop()
        anchor = pinned[0]
    else:
        s = lit[anchor.node][4]
    lr_target = None
    for u in uses:
        var, mult, lr, m, su, lu = lit[u.node]
        u.shift = sp.nsimplify(su - s)  # Lemma J.1: multiplier * t, std / t, LR / t^k
        u.mult_exp = sp.nsimplify(m + u.shift)
        u.multiplier = sp.simplify(mult * _pretty(u.shift, u.fan_in_exp, u.fan_out_exp))
        l = sp.nsimplify(lu - k * u.shift)
        if lr_target is None:
            lr_target = l
        elif l != lr_target:
            rule.problem = (
                f"{p.name} is tied across uses ({', '.join(x.kind for x in uses)}) that no single "
                f"learning rate puts in muP under {optimizer.upper() if optimizer == 'sgd' else 'Adam'}: "
                "untie it, or give it per-use learning rates by hand.")
            return rule
    a = next(u for u in uses if u.node == anchor.node)
    var, mult, lr, m, su, lu = lit[a.node]
    t = _pretty(a.shift, a.fan_in_exp, a.fan_out_exp)
    rule.kind, rule.shift = a.kind, a.shift
    rule.multiplier = a.multiplier
    rule.init_var = sp.simplify(var / t**2)
    rule.mult_exp = a.mult_exp
    rule.init_exp = sp.nsimplify(s)
    rule.lr = sp.simplify(lr / t**k) if p.trainable else None
    rule.lr_exp = lr_target if p.trainable else None
    rule.fan_in_exp, rule.fan_out_exp = a.fan_in_exp, a.fan_out_exp
    # vector- / scalar-like parameters may start smaller than Theta(1): keep a smaller init
    if (all(u.role in ("vector", "scalar") for u in p.uses) and p.init_exp not in (None, "zero")):
        now = sp.nsimplify(p.init_exp) + a.measured_mult_exp
        target = s + a.mult_exp
        if now < target:
            rule.init_exp = sp.nsimplify(now - a.mult_exp)
            rule.notes.append(f"init kept smaller than the rule (effective n^{now} < n^{target}; "
                              "any init up to Theta(1) is muP for a vector- or scalar-like parameter).")
    if p.init_exp is None:
        rule.notes.append("its init scale follows no power law of the width: left as it is.")
    if not p.trainable:
        rule.notes.append("frozen (requires_grad=False): init only, no learning rate.")
    if any(u.shift != 0 for u in uses):
        rule.notes.append("moved by TP5 Lemma J.1 (t = "
                          + ", ".join(f"{u.module or '<top>'}: width_mult^{u.shift}" for u in uses if u.shift != 0)
                          + ") to keep one init and one learning rate for the tensor.")
    return rule


def _where(u: UseRule) -> str:
    return f"{u.op} in `{u.module or '<top>'}` ({u.kind})"


# ----------------------------------------------------------------------------- hooks

_DATA_POS = {"linear": "0", "addmm": "1", "conv1d": "0", "conv2d": "0", "conv3d": "0",
             "convolution": "0", "conv_transpose1d": "0", "conv_transpose2d": "0",
             "conv_transpose3d": "0", "bilinear": "0", "mm": None, "bmm": None, "matmul": None}


def _module_structure(graph: WidthGraph, path: str):
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


def _hooks(graph, params, structure):
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
            structure[path] = _module_structure(graph, path)
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


# ----------------------------------------------------------------------------- ops without params


def _ops(graph: WidthGraph) -> list[OpRule]:
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


def _explicit_problem(o: OpRule) -> str:
    what = "attention logits" if o.attention else "a contraction of two width-sized activations"
    return (f"{what} in `{o.module or '<top>'}` (node {o.node}: `{o.op}` over a dim ~ "
            f"n^{o.d_exp}) scaled ~ n^{o.scale_exp}; muP needs 1/d (TP5 Def 4.1). apply_mup "
            "patches only F.scaled_dot_product_attention, so fix this one by hand in that "
            f"module's forward: multiply the logits by (base_width / width)^{-o.factor_exp} "
            "(for 1/sqrt(d_head) now: use sqrt(d_head_at_base_width) / d_head), or compute the "
            "attention with F.scaled_dot_product_attention.")


# ----------------------------------------------------------------------------- text


def _fan(x) -> str:
    return "fin" if x == 0 else _e(x)


def _e(x) -> str:
    if x is None:
        return "-"
    if x == "zero":
        return "zero"
    x = sp.nsimplify(x)
    return "1" if x == 0 else ("n" if x == 1 else f"n^{x}")


def _m(x) -> str:
    if x is None:
        return "-"
    x = sp.nsimplify(x)
    return "1" if x == 0 else ("m" if x == 1 else f"m^{x}")


def _x(expr) -> str:
    if expr is None:
        return "-"
    num, den = sp.fraction(sp.sympify(expr))
    text = str(num) if den == 1 else (f"{num}/{den}" if den.is_Atom or den.is_Pow else f"{num}/({den})")
    return text.replace("**", "^")


def _format(r: Rules) -> str:
    from ..predict.analyze import _fold

    lines = [
        f"muP rules for {r.label}: convention {r.convention} ({_CONVENTION_NAMES[r.convention]}), "
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
        mult = ", ".join(sorted({_x(u.multiplier) for u in p.uses})) if p.uses else "-"
        fx = ", ".join(sorted({_m(u.factor_exp) for u in p.uses})) if p.uses else "-"
        rows.append((name, f"{p.kind:11s} {_fan(p.fan_in_exp):>6s} {_fan(p.fan_out_exp):>7s}  "
                           f"{_x(p.init_var):13s} {mult:15s} "
                           f"{(_x(p.lr) if p.trainable else 'frozen'):15s} {_m(p.init_factor_exp):>7s} "
                           f"{fx:>7s} {(_m(p.lr_exp) if p.trainable else '-'):>6s}"))
    for name, text, count in _fold(rows):
        label = name if count == 1 else f"{name} (x{count})"
        lines.append(f"  {label[:40]:40s} {text}")
    if r.hooks:
        lines += ["", "  multipliers as forward hooks (input x, output x):"]
        for name, text, count in _fold([((h.module or "<top>") + ".", f"{_m(h.pre_exp)}, {_m(h.post_exp)}")
                                         for h in r.hooks]):
            lines.append(f"    {name.rstrip('.')}{'' if count == 1 else f' (x{count})'}: {text}")
    if r.ops:
        lines += ["", "  contractions of two width-sized activations (need scale ~ 1/d, TP5 Def 4.1):"]
        for name, text, count in _fold([(o.module + ".", (
                f"{o.op} over d ~ {_e(o.d_exp)}: scale {_e(o.scale_exp)} -> {_e(o.needed_exp)}"
                + ("" if o.ok else f": multiply the scale by {_m(o.factor_exp)}"
                   + ("" if o.fixable else " BY HAND (explicit matmul)")))) for o in r.ops]):
            lines.append(f"    {name.rstrip('.') or '<top>'}{'' if count == 1 else f' (x{count})'}: {text}")
    pnotes = [(name, n) for name, p in r.params.items() for n in p.notes]
    if pnotes or r.notes:
        lines += [""]
        for name, text, count in _fold([(n + ".", t) for n, t in pnotes]):
            lines.append(f"  note: {name.rstrip('.')}{'' if count == 1 else f' (x{count})'}: {text}")
        for n in r.notes:
            lines.append(f"  note: {n}")
    if r.problems:
        lines += ["", "  problems:"] + [f"    - {p}" for p in r.problems]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- PyTorch


def _f(e) -> str:
    """Python source of width_mult ** e with ``m`` the width multiplier."""
    e = sp.nsimplify(e)
    return "m" if e == 1 else f"m ** {float(e)!r}"


def _pytorch(r: Rules) -> str:
    opt = r.optimizer
    out = [
        f'"""muP for {r.label}: convention {r.convention}, optimizer {opt}, base width {r.base_width}.',
        "",
        "Generated by tensorprog.rules. Every factor is (width / base_width) ** e, so at the base",
        "width each one is exactly 1. Usage:",
        "",
        "    model = factory(width)",
        "    mup_init_(model, width); mup_multipliers(model, width); mup_attention(model, width)",
        f"    opt = torch.optim.{'SGD' if opt == 'sgd' else 'AdamW'}(mup_param_groups(model, lr, width))",
        '"""',
        "import math",
        "",
        "import torch",
        "import torch.nn.functional as F",
        "",
        f"BASE_WIDTH = {r.base_width}",
        "",
        "",
        "def mup_init_(model, width, base_width=BASE_WIDTH):",
        '    """Rescale the freshly built weights (the distribution shape is kept)."""',
        "    m = width / base_width",
        "    with torch.no_grad():",
    ]
    body = []
    for name, p in r.params.items():
        if p.problem or p.init_factor_exp == 0:
            continue
        body.append(f"        model.get_parameter({name!r}).mul_({_f(p.init_factor_exp)})  "
                    f"# {p.kind}: init var {_x(p.init_var)} (now RMS ~ {_e(p.measured_init_exp)})")
    out += body or ["        pass"]
    out += ["", "", "def mup_multipliers(model, width, base_width=BASE_WIDTH):",
            '    """Forward multipliers as hooks: input factor (the weight\'s contraction only) and',
            '    output factor of each module. Returns the hook handles."""',
            "    m = width / base_width",
            "    handles = []"]
    for h in r.hooks:
        if h.pre_exp != 0:
            out.append(f"    handles.append(model.get_submodule({h.module!r}).register_forward_pre_hook("
                       f"lambda mod, args, f={_f(h.pre_exp)}: (args[0] * f,) + tuple(args[1:])))")
        if h.post_exp != 0:
            out.append(f"    handles.append(model.get_submodule({h.module!r}).register_forward_hook("
                       f"lambda mod, args, out, f={_f(h.post_exp)}: out * f))")
    out += ["    return handles"]
    fix = [o for o in r.ops if o.fixable]
    factors = [o.factor_exp for o in fix]
    out += ["", "", "def mup_attention(model, width, base_width=BASE_WIDTH):",
            '    """Scale the logits of every F.scaled_dot_product_attention call in model.forward to',
            '    ~ 1/d_head (TP5 Def 4.1): the call\'s scale (default 1/sqrt(d_head)) times a factor."""']
    if not fix or all(f == 0 for f in factors):
        out += ["    return []  # nothing to fix"]
    else:
        out += ["    m = width / base_width",
                f"    factors = [{', '.join(_f(f) for f in factors)}]  # one per call, in order",
                "    state = {'original': None, 'calls': 0}",
                "",
                "    def patched(query, key, value, *args, **kwargs):",
                "        f = factors[min(state['calls'], len(factors) - 1)]",
                "        state['calls'] += 1",
                "        args = list(args)",
                "        if len(args) >= 4:",
                "            scale = args[3]",
                "        else:",
                "            scale = kwargs.get('scale')",
                "        scale = (1.0 / math.sqrt(query.size(-1)) if scale is None else scale) * f",
                "        if len(args) >= 4:",
                "            args[3] = scale",
                "        else:",
                "            kwargs['scale'] = scale",
                "        return state['original'](query, key, value, *args, **kwargs)",
                "",
                "    def pre(mod, args):",
                "        state['original'], state['calls'] = F.scaled_dot_product_attention, 0",
                "        F.scaled_dot_product_attention = patched",
                "",
                "    def post(mod, args, out):",
                "        F.scaled_dot_product_attention = state['original']",
                "",
                "    return [model.register_forward_pre_hook(pre),",
                "            model.register_forward_hook(post, always_call=True)]"]
    hand = [o for o in r.ops if not o.fixable and not o.ok]
    for o in hand:
        out.append(f"# BY HAND: `{o.module or '<top>'}` computes attention logits with an explicit "
                   f"{o.op}; multiply them by {_f(o.factor_exp)} (scale ~ 1/d_head).")
    lrs = {name: p.lr_exp for name, p in r.params.items() if p.trainable and p.lr_exp not in (None, 0)
           and not p.problem}
    out += ["", "", "def mup_param_groups(model, lr, width, base_width=BASE_WIDTH, weight_decay=0.0):",
            '    """Optimizer param groups: lr * m ** e per parameter; weight decay divided by the same',
            '    factor, so lr * weight_decay stays constant in width (as the mup package does)."""',
            "    m = width / base_width",
            "    lr_exp = {"]
    out += [f"        {name!r}: {float(e)!r}," for name, e in lrs.items()]
    out += ["    }",
            "    groups = {}",
            "    for name, p in model.named_parameters():",
            "        if not p.requires_grad:",
            "            continue",
            "        e = lr_exp.get(name, 0.0)",
            "        g = groups.setdefault(e, {'params': [], 'lr': lr * m ** e,",
            "                                  'weight_decay': weight_decay * m ** -e})",
            "        g['params'].append(p)",
            "    return list(groups.values())",
            ""]
    return "\n".join(out)
