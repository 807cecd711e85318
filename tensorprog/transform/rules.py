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

from ..exponents import fmt
from ..errors import TensorprogError
from ..graph.trace import trace
from ..graph.widthgraph import WidthGraph
from ..jsonio import JSONMixin
from ..validate import check_base_width, check_widths
from ..rng import preserves_rng
from .hooks import HookRule, OpRule, derive_hooks, derive_ops, explicit_problem
from .optspec import spec_to_dict
from .conventions import (CONVENTION_NAMES, CONVENTIONS, FAN_IN, FAN_OUT, KINDS, TABLES,  # noqa: F401
                          WIDTH_MULT, check_convention, convention_table, fan_power, kind_of,
                          width_exp)

__all__ = ["rules", "Rules", "ParamRule", "UseRule", "HookRule", "OpRule", "CONVENTIONS", "KINDS",
           "FAN_IN", "FAN_OUT", "WIDTH_MULT", "convention_table", "CONVENTION_NAMES"]

ZERO = sp.Integer(0)


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
    optimizer: str | None = None  # the class of the optimizer that owns it (when one was given)
    lr_adam_exp: Any = None  # the Adam-equivalent LR exponent before the optimizer's geometry
    eps_exp: Any = None  # Adam's eps ~ n^eps_exp: the muP gradient's entry size (see _eps_rule)

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


@dataclass(eq=False)
class Rules(JSONMixin):
    """What ``rules`` found: per-parameter rules, the hooks that carry multipliers, and the
    contractions that need a 1/d scale. ``str()`` a table, ``to_dict()`` / ``to_json()``,
    ``to_pytorch()`` code to paste. ``from_json`` / ``from_dict`` read it back into equal rules
    (without ``graph``, which JSON does not carry; the optimizer ``owners`` by class name)."""

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
    owners: dict = field(default_factory=dict, repr=False)  # param -> OptSpec (optspec.py)
    depth: Any = None  # predict.depth.DepthRules when ``rules`` is given a base_depth

    @property
    def convention_name(self) -> str:
        return CONVENTION_NAMES[self.convention]

    @property
    def problems(self) -> list[str]:
        out = [p.problem for p in self.params.values() if p.problem]
        for o in self.ops:
            if not o.ok and not o.fixable:
                out.append(explicit_problem(o))
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
                "optimizer": p.optimizer, "lr_adam_exp": s(p.lr_adam_exp), "eps_exp": s(p.eps_exp),
                "notes": p.notes, "problem": p.problem} for k, p in self.params.items()},
            "hooks": [{"module": h.module, "input_factor": s(WIDTH_MULT**h.pre_exp),
                       "output_factor": s(WIDTH_MULT**h.post_exp), "params": h.params}
                      for h in self.hooks],
            "ops": [{"node": o.node, "module": o.module, "op": o.op, "attention": o.attention,
                     "d_exp": s(o.d_exp), "scale_exp": s(o.scale_exp), "needed": "1/d",
                     "needed_exp": s(o.needed_exp), "factor": s(WIDTH_MULT**o.factor_exp),
                     "fixable": o.fixable, "ok": o.ok} for o in self.ops],
            "notes": self.notes, "problems": self.problems, "label": self.label,
            "owners": {n: spec_to_dict(s) for n, s in (self.owners or {}).items()},
            "depth": None if self.depth is None else {
                "family": self.depth.family, "base_depth": self.depth.base_depth,
                "optimizer": self.depth.optimizer},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Rules":
        """Inverse of ``to_dict`` (decoded JSON: ``jsonio.read_json``). Exponents and the
        expressions in fan_in / fan_out / width_mult are read with ``jsonio.read_exponent`` and
        ``jsonio.parse_expression`` (arithmetic only, nothing evaluated)."""
        from ..jsonio import from_jsonable, read_exponent as e, parse_expression
        from ..predict.depth import depth_rules
        from .optspec import specs_from_dicts

        d = from_jsonable(d)  # plain json.loads output too

        names = {"fan_in": FAN_IN, "fan_out": FAN_OUT, "width_mult": WIDTH_MULT}

        def x(text):
            return parse_expression(text, names)

        def power(text):  # "width_mult**(-1/2)" -> -1/2
            return sp.nsimplify(x(text).as_coeff_exponent(WIDTH_MULT)[1])

        def use(u):
            return UseRule(node=u["node"], op=u["op"], module=u["module"], role=u["role"],
                           kind=u["kind"], fan_in_exp=None, fan_out_exp=None,
                           multiplier=x(u["multiplier"]), mult_exp=e(u["mult_exp"]),
                           measured_mult_exp=e(u["measured_mult_exp"]))

        params = {k: ParamRule(
            name=k, aliases=list(p["aliases"]), shape=tuple(p["shape"]), role=p["role"],
            kind=p["kind"], trainable=p["trainable"], fan_in_exp=e(p["fan_in_exp"]),
            fan_out_exp=e(p["fan_out_exp"]), init_var=x(p["init_var"]),
            multiplier=x(p["multiplier"]), lr=x(p["lr"]), init_exp=e(p["init_exp"]),
            mult_exp=e(p["mult_exp"]), lr_exp=e(p["lr_exp"]),
            measured_init_exp=e(p["measured_init_exp"]), measured_lr_exp=e(p["measured_lr_exp"]),
            uses=[use(u) for u in p["uses"]], notes=list(p["notes"]), problem=p["problem"],
            optimizer=p["optimizer"], lr_adam_exp=e(p["lr_adam_exp"]),
            eps_exp=None if p.get("eps_exp") is None else e(p["eps_exp"]))
            for k, p in d["params"].items()}
        hooks = [HookRule(module=h["module"], pre_exp=power(h["input_factor"]),
                          post_exp=power(h["output_factor"]), params=list(h["params"]))
                 for h in d["hooks"]]
        ops = [OpRule(node=o["node"], module=o["module"], op=o["op"], attention=o["attention"],
                      d_exp=e(o["d_exp"]), scale_exp=e(o["scale_exp"]),
                      needed_exp=e(o["needed_exp"]), fixable=o["fixable"]) for o in d["ops"]]
        return cls(convention=d["convention"], optimizer=d["optimizer"],
                   base_width=d["base_width"], widths=tuple(d["widths"]), params=params,
                   hooks=hooks, ops=ops, notes=list(d["notes"]), label=d.get("label", "model"),
                   depth=None if d.get("depth") is None else depth_rules(**d["depth"]),
                   owners=specs_from_dicts(d.get("owners") or {}))

    @property
    def verdict(self) -> str:
        """"ready" when every parameter and contraction has a rule the generated code applies,
        else "needs manual changes" (see ``problems``)."""
        return "needs manual changes" if self.problems else "ready"

    def __str__(self) -> str:
        from ..text.rules import format_rules

        return format_rules(self)

    def to_pytorch(self, eps_scaling: str = "constant", zero_init=()) -> str:
        """Python source (``mup_init_``, ``mup_multipliers``, ``mup_attention``, ``mup_param_groups``;
        factors 1 at the base width); eps_scaling="mup" scales Adam's eps as ``apply_mup`` does;
        zero_init ("readout", "query") adds ``mup_zero_init_`` as ``apply_mup`` has it."""
        from .codegen import to_pytorch

        return to_pytorch(self, eps_scaling, zero_init)


# ----------------------------------------------------------------------------- derivation


@preserves_rng
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
    progress: bool = False,
    alignment: Any = "tp",
    base_depth: int | None = None,
    depth_family: str = "completep",
) -> Rules:
    """The muP rules of every parameter of ``factory`` (width -> nn.Module, or a traced
    ``WidthGraph``) in ``convention`` for ``optimizer``. ``base_width`` (default: the smallest
    width) is where every relative factor is 1.

    optimizer: "sgd", "adam", an optimizer class (AdamW, RMSprop... are Adam-like; Muon and
    Adafactor are sized by their own geometry), a ``functools.partial`` of one
    (``partial(torch.optim.Muon, adjust_lr_fn="match_rms_adamw")``), a dict from parameter names
    or roles (plus "default") to those, or a callable ``(name, role) -> optimizer`` (see
    ``tensorprog.transform.optspec``). Each parameter's LR follows the optimizer that owns it:
    the convention's Adam LR exponent minus the entry exponent of that optimizer's direction
    (Muon "original": constant for n x n hidden weights, the spectral condition of Yang, Simon,
    Bernstein 2023; Adafactor: Adam's minus the parameter's RMS exponent).

    alignment: "tp" (default; the tables' assumption), "full" / "everett" or "none" (Everett et
    al. 2024, arXiv 2407.05872), or an ``ops.Alignment``: see ``align_learning_rates``.

    base_depth: also give the depth factors (``Rules.depth``, a ``predict.depth.DepthRules``)
    of ``depth_family`` ("completep", the default, or "depth_mup"): branch multiplier, block
    learning rates and Adam eps as powers of L / base_depth (TP6, arXiv 2310.02244; CompleteP,
    arXiv 2505.01618 Table 1)."""
    from .optspec import assign

    check_convention(convention)
    base = check_base_width(base_width) if base_width is not None else None
    from ..predict.depth import check_depth_options
    base_depth = check_depth_options(base_depth, depth_family, TensorprogError)
    if not isinstance(factory, WidthGraph):
        check_widths(widths)  # before the (slow) trace
    graph = factory if isinstance(factory, WidthGraph) else trace(
        factory, widths, example_inputs=example_inputs, device=device, progress=progress)
    opt, owners = assign(optimizer, graph.params)
    base = base if base is not None else min(graph.widths)
    plain = isinstance(optimizer, str)  # "adam" / "sgd": no optimizer object, Adam's own LR
    r = derive(graph, opt, convention, base, label=label,
               steps=None if plain else {n: s.step for n, s in owners.items()})
    r.owners = owners
    align_learning_rates(r, alignment)
    if base_depth is not None:
        from ..predict.depth import depth_rules
        r.depth = depth_rules(depth_family, base_depth, "sgd" if opt == "sgd" else "adam")
        r.notes.append(f"depth: {r.depth}")
    return r


def align_learning_rates(r: Rules, alignment: Any) -> None:
    """Re-size ``r``'s learning rates for another alignment of dW z_0 (Everett et al. 2024,
    §3): an update contracted over a fan-in n^f gains n^{alpha f} instead of TP's n^f, so the
    largest stable (maximal) update is n^{(1 - alpha) f} larger and so is each LR of a
    parameter that contracts over the width (hidden, output-like). Adam-like optimizers only:
    their layers decouple (``theory.max_stable_lr_exponent``); under SGD the readout's LR sizes
    every layer's gradient. The init rules stay: they are stable under every alignment in
    [1/2, 1]. ``r`` is changed in place."""
    from ..ops import alignment as resolve

    try:
        al = resolve(alignment)
    except ValueError as err:
        raise TensorprogError(str(err)) from None
    extra = 1 - sp.nsimplify(al.dw_z0)
    if extra == 0:
        return
    if r.optimizer == "sgd":
        raise TensorprogError(
            f"alignment {al.name!r} in rules is for Adam-like optimizers: under SGD the readout's "
            "learning rate sizes every layer's gradient, so the layers' rules do not shift one by "
            "one. Use tensorprog.theory.max_stable_lr_exponent(a, b, 'sgd', per_layer=True, "
            f"alignment={al.name!r}) for the MLP.")
    for rule in r.params.values():
        f = rule.fan_in_exp
        if rule.lr_exp is None or not f or f <= 0:
            continue
        shift = sp.nsimplify(extra * f)
        rule.lr_exp = sp.nsimplify(rule.lr_exp + shift)
        if rule.lr_adam_exp is not None:
            rule.lr_adam_exp = sp.nsimplify(rule.lr_adam_exp + shift)
        rule.lr = sp.simplify(rule.lr * fan_power(shift, f, rule.fan_out_exp))
        rule.notes.append(f"alignment {al.name}: dW z_0 sums its fan-in with exponent "
                          f"{al.dw_z0}, so the LR is n^{shift} larger than the table's "
                          "(Everett et al. 2024).")
    r.notes.append(f"learning rates for alignment {al.name!r} (Everett et al. 2024, arXiv "
                   "2407.05872), not the tables' TP alignment.")


def derive(graph: WidthGraph, optimizer: str, convention: str, base_width: int, *,
           label: str = "model", steps: dict | None = None) -> Rules:
    """``rules`` on an already traced graph (optimizer: "sgd" or "adam"; steps: parameter
    name -> ``Step`` of the optimizer that owns it, for its geometry)."""
    structure = {}
    fixed: set = set()
    notes: list[str] = []
    for _ in range(8):  # fixing a use can move another module's factors: iterate to a fixpoint
        params = {name: _param_rule(graph, p, optimizer, convention, fixed,
                                    (steps or {}).get(name))
                  for name, p in graph.params.items()}
        hooks, newly = derive_hooks(graph, params, structure)
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
    ops = derive_ops(graph)
    if any(not o.ok for o in ops if o.fixable):
        notes.append("attention logits need scale ~ 1/d_head (TP5 Def 4.1): multiply the scale of "
                     "each scaled_dot_product_attention listed by the factor shown.")
    return Rules(convention=convention, optimizer=optimizer, base_width=base_width,
                 widths=tuple(graph.widths), params=params, hooks=hooks, ops=ops, notes=notes,
                 label=label, graph=graph)


def _literal(convention, kind, optimizer):
    var, mult, sgd, adam = TABLES[convention][kind]
    return var, mult, (sgd if optimizer == "sgd" else adam)


def _param_rule(graph, p, optimizer, convention, fixed, step=None) -> ParamRule:
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
        lit[u.node] = (var, mult, lr, width_exp(mult, ai, ao), width_exp(var, ai, ao) / 2, width_exp(lr, ai, ao))

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
        u.multiplier = sp.simplify(mult * fan_power(u.shift, u.fan_in_exp, u.fan_out_exp))
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
    t = fan_power(a.shift, a.fan_in_exp, a.fan_out_exp)
    rule.kind, rule.shift = a.kind, a.shift
    rule.multiplier = a.multiplier
    rule.init_var = sp.simplify(var / t**2)
    rule.mult_exp = a.mult_exp
    rule.init_exp = sp.nsimplify(s)
    rule.lr = sp.simplify(lr / t**k) if p.trainable else None
    rule.lr_exp = lr_target if p.trainable else None
    rule.fan_in_exp, rule.fan_out_exp = a.fan_in_exp, a.fan_out_exp
    # vector- / scalar-like parameters may start smaller than Theta(1): keep a smaller init --
    # not under Adafactor, whose step is lr * RMS(W): a muP update outgrows a smaller init, and
    # the next step, sized by the grown RMS, is larger by the same factor (it blows up)
    scaled = step is not None and step.geometry == "parameter-scaled"
    if scaled and all(u.role in ("vector", "scalar") for u in p.uses) and p.trainable:
        rule.notes.append(f"{step.optimizer} sizes its step by RMS(W), so the rule's init is "
                          "applied even where the init is smaller (a smaller one would be outgrown "
                          "by the first update and the steps after it would grow with the width).")
    elif (all(u.role in ("vector", "scalar") for u in p.uses) and p.init_exp not in (None, "zero")):
        now = sp.nsimplify(p.init_exp) + a.measured_mult_exp
        target = s + a.mult_exp
        if now < target:
            rule.init_exp = sp.nsimplify(now - a.mult_exp)
            rule.notes.append(f"init kept smaller than the rule (effective {fmt(now)} < {fmt(target)}; "
                              "any init up to Theta(1) is muP for a vector- or scalar-like parameter).")
    if step is not None:
        rule.optimizer = step.optimizer
        _geometry_lr(rule, p, step)
    _eps_rule(rule)
    if p.init_exp is None:
        rule.notes.append("its init scale follows no power law of the width: left as it is.")
    if not p.trainable:
        rule.notes.append("frozen (requires_grad=False): init only, no learning rate.")
    if any(u.shift != 0 for u in uses):
        rule.notes.append("moved by TP5 Lemma J.1 (t = "
                          + ", ".join(f"{u.module or '<top>'}: width_mult^{u.shift}" for u in uses if u.shift != 0)
                          + ") to keep one init and one learning rate for the tensor.")
    return rule


def _eps_rule(rule: ParamRule) -> None:
    """Adam's eps scaled like the parameter's gradient entries in muP, so that eps stays as far
    below them at every width (TP5 App. B / Everett et al. 2024 §4): the gradient of w is
    n^{mult} x (backprop vector) x (input), whose entries are Theta(1) for a finite fan-out
    (the loss's own gradient) and Theta(1/n) for a width-sized one (in muP every backprop
    vector inside the network is as large as the readout's entries, 1/n)."""
    if not rule.trainable or rule.mult_exp is None or rule.shift != 0 or rule.problem:
        return
    wide_out = rule.fan_out_exp is None or rule.fan_out_exp > 0
    rule.eps_exp = sp.nsimplify(rule.mult_exp - (1 if wide_out else 0))


def _where(u: UseRule) -> str:
    return f"{u.op} in `{u.module or '<top>'}` ({u.kind})"


def _geometry_lr(rule: ParamRule, p, step) -> None:
    """The LR of the optimizer that owns the parameter: Adam's, divided by the entry size of its
    own direction (orthogonalised Muon, parameter-scaled Adafactor); the same conversion
    ``analyze`` makes, so the two agree."""
    from .optspec import direction_exp

    rule.lr_adam_exp = rule.lr_exp
    if rule.lr_exp is None:
        return
    d = direction_exp(step, rule.init_exp, p.dims)
    if d == 0:
        return
    rule.lr_exp = sp.nsimplify(rule.lr_exp - d)
    rule.lr = sp.simplify(rule.lr / fan_power(d, rule.fan_in_exp, rule.fan_out_exp))
    why = ("its step's entries are lr * RMS(W) ~ n^" + str(d) if step.geometry == "parameter-scaled"
           else f"its orthogonalised step ({step.hyper.get('adjust_lr_fn') or 'original'} "
                f"adjust_lr_fn) has entries ~ lr * n^{d}")
    rule.notes.append(f"{step.optimizer}: {why}, so its LR is the Adam rule's times n^{-d} "
                      f"(LR exponent {rule.lr_adam_exp} -> {rule.lr_exp}).")
