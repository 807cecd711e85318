"""The verdict: which parametrization a model is in, whether it trains stably, and the fix.

Two views that must agree, both from the traced graph alone:

1. **Per parameter** (TP5 Table 3, App J): the measured exponents a = -mult_exp, b = -init_exp,
   c = -lr_exp give two invariants of the abc symmetry (TP4 Eq. 5, TP4b Prop 2.2.3):
   the effective init scale ``A = a + b`` and the effective update scale ``U = 2a + c`` (SGD) or
   ``U = a + c`` (Adam). Each class (SP, NTK, muP) fixes both as functions of the fan-in and
   fan-out exponents; a parameter matches the classes whose rules it satisfies.
2. **Dynamics** (``engine.propagate``): activation, logit and output sizes at init and after
   three steps give stability, nontriviality, r per layer and the regime (TP4 Thms 3.3-3.8).

The model's name is the class every parameter (and every attention op) matches; else "mixed".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


from .engine import NEG, ZERO, Propagation, Unresolved, propagate
from ..errors import TensorprogError, TraceError
from ..exponents import fmt
from ..graph.trace import trace
from ..graph.uses import chain_end, is_view
from .features import own_update, zero_data
from .attention import attention_verdicts
from .classes import CLASSES, INF, direction_exp, expected, init_ok  # noqa: F401 (re-exported)
from .fixes import mup_fixes
from .records import AttentionVerdict, Change, FixSet, ParamVerdict, Problem, UseVerdict
from ..graph.widthgraph import WidthGraph
from ..jsonio import JSONMixin, jsonable
from ..validate import check_steps, check_widths
from ..rng import preserves_rng



@dataclass
class SavedGraph:
    """What a report read back from JSON keeps of its traced graph and propagation."""

    widths: tuple[int, ...]
    warnings: list[str]
    steps: int


@dataclass(eq=False)
class Report(JSONMixin):
    """What ``analyze`` found. ``str(report)`` is a readable table; ``to_dict()`` is JSON-able;
    ``from_json`` / ``from_dict`` read it back into an equal report, whose ``graph`` is then a
    ``SavedGraph`` (widths, warnings, steps) and ``propagation`` None."""

    parametrization: str
    stable: bool
    stable_init: bool
    nontrivial: bool
    feature_learning: bool
    kernel_regime: bool
    regime: str
    r: Any
    every_layer_maximal: bool
    optimizer: str
    params: dict[str, ParamVerdict]
    attention: list[AttentionVerdict]
    constants: list[dict]
    problems: list[Problem]
    output_init: Any
    output_change: Any
    unknown_ops: dict[str, list[str]]
    notes: list[str]
    graph: WidthGraph = field(repr=False)
    propagation: Propagation = field(repr=False)
    undetermined: list[dict] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Training steps the dynamics were propagated for."""
        if self.propagation is None:
            return self.graph.steps
        return len(self.propagation.steps) - 1

    def not_mup(self) -> list[ParamVerdict]:
        return [p for p in self.params.values() if p.trainable and "muP" not in p.classes]

    def to_dict(self) -> dict:
        j = jsonable
        return {
            "parametrization": self.parametrization, "optimizer": self.optimizer,
            "stable": self.stable, "stable_init": self.stable_init, "nontrivial": self.nontrivial,
            "feature_learning": self.feature_learning, "kernel_regime": self.kernel_regime,
            "regime": self.regime, "r": j(self.r), "every_layer_maximal": self.every_layer_maximal,
            "output": {"init": j(self.output_init), "change": j(self.output_change)},
            "widths": list(self.graph.widths), "steps": self.steps,
            "params": {k: {
                "role": p.role, "shape": list(p.shape), "trainable": p.trainable,
                "fan_in_exp": j(p.fan_in_exp), "fan_out_exp": j(p.fan_out_exp),
                "init_exp": j(p.init_exp), "mult_exp": j(p.mult_exp), "lr_exp": j(p.lr_exp),
                "classes": p.classes, "fixes": p.fixes,
                "fix_sets": [{"name": f.name, "init_exp": j(f.init_exp), "mult_exp": j(f.mult_exp),
                              "lr_exp": j(f.lr_exp), "text": f.text,
                              "changes": [{"what": c.what, "now": j(c.now), "to": j(c.to),
                                           "node": c.node} for c in f.changes]}
                             for f in p.fix_sets],
                "uses": [{"node": u.node, "op": u.op, "role": u.role, "A": j(u.A), "U": j(u.U),
                          "r": j(u.r), "mult_exp": j(u.mult_exp), "classes": u.classes}
                         for u in p.uses]} for k, p in self.params.items()},
            "attention": [{"node": a.node, "module": a.module, "d_head_exp": j(a.d_head_exp),
                           "scale_exp": j(a.scale_exp), "kind": a.kind,
                           "logits_init": j(a.logits_init), "logits_trained": j(a.logits_trained)}
                          for a in self.attention],
            "constants": j(self.constants),
            "problems": [{"node": p.node, "module": p.module, "what": p.what, "when": p.when,
                          "exponent": j(p.exponent)} for p in self.problems],
            "unknown_ops": self.unknown_ops, "undetermined": self.undetermined, "notes": self.notes,
            "warnings": self.graph.warnings,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        """Inverse of ``to_dict`` (decoded JSON: ``jsonio.read_json``); exponents are read back
        with ``jsonio.read_exponent`` (no evaluation)."""
        from ..jsonio import from_jsonable, read_exponent as e

        d = from_jsonable(d)  # plain json.loads output too

        def use(u):
            return UseVerdict(node=u["node"], op=u["op"], role=u["role"], fan_in_exp=None,
                              fan_out_exp=None, mult_exp=e(u["mult_exp"]), A=e(u["A"]),
                              U=e(u["U"]), r=e(u["r"]), classes=list(u["classes"]))

        def fix_set(f):
            return FixSet(name=f["name"], init_exp=e(f["init_exp"]), mult_exp=e(f["mult_exp"]),
                          lr_exp=e(f["lr_exp"]), text=f["text"],
                          changes=[Change(what=c["what"], now=e(c["now"]), to=e(c["to"]),
                                          node=c["node"]) for c in f["changes"]])

        params = {k: ParamVerdict(
            name=k, role=p["role"], shape=tuple(p["shape"]), trainable=p["trainable"],
            fan_in_exp=e(p["fan_in_exp"]), fan_out_exp=e(p["fan_out_exp"]),
            init_exp=e(p["init_exp"]), mult_exp=e(p["mult_exp"]), lr_exp=e(p["lr_exp"]),
            uses=[use(u) for u in p["uses"]], classes=list(p["classes"]), fixes=list(p["fixes"]),
            fix_sets=[fix_set(f) for f in p["fix_sets"]]) for k, p in d["params"].items()}
        attention = [AttentionVerdict(
            node=a["node"], module=a["module"], d_head_exp=e(a["d_head_exp"]),
            scale_exp=e(a["scale_exp"]), kind=a["kind"], logits_init=e(a["logits_init"]),
            logits_trained=e(a["logits_trained"])) for a in d["attention"]]
        problems = [Problem(node=p["node"], module=p["module"], what=p["what"], when=p["when"],
                            exponent=e(p["exponent"])) for p in d["problems"]]
        graph = SavedGraph(widths=tuple(d["widths"]), warnings=list(d.get("warnings", [])),
                           steps=d.get("steps", 3))
        return cls(parametrization=d["parametrization"], stable=d["stable"],
                   stable_init=d["stable_init"], nontrivial=d["nontrivial"],
                   feature_learning=d["feature_learning"], kernel_regime=d["kernel_regime"],
                   regime=d["regime"], r=e(d["r"]), every_layer_maximal=d["every_layer_maximal"],
                   optimizer=d["optimizer"], params=params, attention=attention,
                   constants=d["constants"], problems=problems,
                   output_init=e(d["output"]["init"]), output_change=e(d["output"]["change"]),
                   unknown_ops=d["unknown_ops"], notes=list(d["notes"]), graph=graph,
                   propagation=None, undetermined=d.get("undetermined", []))

    @property
    def verdict(self) -> str:
        """The short answer: "muP", "SP", "NTK" or what else ``parametrization`` says."""
        return self.parametrization

    def __str__(self) -> str:
        from ..text.report import format_report

        return format_report(self)




# ----------------------------------------------------------------------------- analyze


@preserves_rng
def analyze(
    factory: Callable | WidthGraph,
    widths: Sequence[int] = (64, 128, 256),
    *,
    example_inputs=None,
    make_optimizer=None,
    optimizer: str | None = None,
    alignment="tp",
    steps: int = 3,
    device: str = "cpu",
    init_widths=None,
    progress: bool = False,
    adam_eps: str = "limit",
) -> Report:
    """Trace ``factory`` (or take a traced ``WidthGraph``) and return the verdict.

    optimizer: "sgd" or "adam" class; a plain string with no ``make_optimizer`` means one
    global learning rate for every parameter. With ``make_optimizer`` the class is read from
    the optimizer it builds (AdamW, RMSprop, Lion... are "adam"-like; SGD with momentum "sgd").
    alignment: "tp" (Tensor Programs, default), "everett" / "full" (Everett et al. 2024's full
    alignment: W_0 dz is CLT-like for the readout too) or "none" (their no alignment: every
    term CLT-like); the same names work in ``theory.ABC`` and ``max_stable_lr_exponent``. progress: print trace's progress lines
    (stderr), the same keyword as ``check`` and ``sweep``. adam_eps: "limit" (default: Adam's
    step in the eps -> 0 limit, TP4b) or "asymptotic" (the eps read from the optimizer, with its
    width exponent: a gradient below eps makes the step SGD-like); theory note 9.
    """
    from ..graph.optimizers import optimizer_class as steps_class
    from ..theory.abc import optimizer_class

    from ..ops import alignment as resolve_alignment

    steps = check_steps(steps)  # before the (slow) trace
    try:
        resolve_alignment(alignment)
    except ValueError as err:
        raise TraceError(str(err)) from None
    if not isinstance(factory, WidthGraph):
        check_widths(widths, error=TraceError)
    graph = factory if isinstance(factory, WidthGraph) else trace(
        factory, widths, example_inputs=example_inputs, make_optimizer=make_optimizer,
        device=device, init_widths=init_widths, progress=progress)
    if graph.optimizer is not None:
        opt = steps_class(graph) or optimizer_class(graph.optimizer)
        if optimizer is not None and optimizer_class(optimizer) != opt:
            graph.warnings.append(
                f"optimizer={optimizer!r} ignored: make_optimizer builds {graph.optimizer}.")
    else:
        opt = optimizer_class(optimizer or "adam")
    prop = propagate(graph, opt, steps=steps, align=alignment, adam_eps=adam_eps)
    report = _verdict(graph, prop, opt)
    if adam_eps == "limit":
        note = _eps_note(graph, prop)
        if note:
            report.notes.append(note)
    coupled = [n for n, p in graph.params.items() if p.trainable and p.step is not None
               and p.step.adam_like and not p.step.decoupled and p.wd_exp not in (None, "zero")]
    if coupled:
        report.notes.append(
            f"coupled (L2) weight decay under {graph.optimizer} ({', '.join(map(repr, coupled[:4]))}"
            + (f" and {len(coupled) - 4} more" if len(coupled) > 4 else "") + "): wd p is added "
            "to the gradient before the normalisation, and the prediction counts the step as if "
            "it followed the gradient (aligned with the features), an upper bound: where wd |p| "
            "outgrows |g| the step follows sign(p) and changes the features less. Decoupled decay "
            "(AdamW, decoupled_weight_decay=True) is modelled exactly.")
    report.notes.extend(w for w in graph.warnings if w.startswith("the model branches on data"))
    if graph.optimizer is None:
        report.notes.insert(0, f"no optimizer factory: {opt}-like updates with one global learning "
                               "rate for every parameter" + ("" if optimizer else " (the default; "
                               "pass optimizer='sgd' or make_optimizer=...)") + ".")
    return report


def _verdict(graph: WidthGraph, prop: Propagation, opt: str) -> Report:
    init, final = prop.steps[0], prop.final
    notes: list[str] = []
    problems: list[Problem] = []

    # --- layers: features, their r_l, and their sizes
    params: dict[str, ParamVerdict] = {}
    r_layers = []
    for name, p in graph.params.items():
        uses = []
        for u in p.uses:
            A = _A(p, u)
            U = _U(p, u, opt)
            uv = UseVerdict(node=u.node, op=u.op, role=u.role, fan_in_exp=p.dims_exp(u.fan_in),
                            fan_out_exp=p.dims_exp(u.fan_out), mult_exp=u.mult_exp, A=A, U=U)
            if u.kind == "matrix" and u.role in ("input", "hidden") \
                    and not zero_data(graph, prop, u.node, always=True):
                feat = chain_end(graph, u.node)
                # r_l as TP4 Def 3.2 defines it: the second step, the first whose update sees
                # the readout's own change in the backward pass (later steps of an unstable
                # model only compound).
                own = own_update(graph, prop, u.node)
                shift = init[feat].x - init[u.node].x if init[u.node].x not in (NEG, INF) else ZERO
                uv.r = -(own + shift) if own != NEG else INF
                r_layers.append(uv.r)
                _check_feature(graph, prop, feat, u.node, p, problems)
            uses.append(uv)
        params[name] = ParamVerdict(
            name=name, role=p.role, shape=p.shapes[graph.widths[-1]], trainable=p.trainable,
            fan_in_exp=p.fan_in_exp, fan_out_exp=p.fan_out_exp, init_exp=p.init_exp,
            mult_exp=p.mult_exp, lr_exp=p.lr_exp, uses=uses, classes=[], fixes=[])

    # --- attention and width-dependent constants
    attention = attention_verdicts(graph, prop, problems)
    constants = _constants(graph)

    # --- outputs
    out = prop.outputs[0] if prop.outputs else None
    trainable = [p for p in graph.params.values() if p.trainable]
    if not trainable:
        raise TensorprogError(
            "the model has no trainable parameters: there is no training to analyse and no "
            "parametrization to name. Check requires_grad (a frozen model) or that the factory "
            "registers its weights as nn.Parameter.")
    if out and trainable and all(init[n].g == NEG for p in trainable for n in p.nodes):
        raise TensorprogError(
            f"no gradient reaches any parameter from the model's output `{out}` (an integer or "
            "detached output, e.g. argmax): there is no training to analyse. Return the logits "
            "(or the loss) instead.")
    if len(prop.outputs) > 1:
        notes.append(f"the model returns {len(prop.outputs)} tensors; the loss is taken to depend "
                     f"on the first, `{out}` (the others are not trained against).")
    out_x = init[out].x if out else ZERO
    out_dx = final[out].dx if out else NEG
    if out and out_x > 0:
        problems.append(Problem(out, graph.node(out)["module"], "output blows up", "at init", out_x))
    grown = _first_growth(prop, out) if out else None
    if grown:
        problems.append(Problem(out, graph.node(out)["module"], "output blows up",
                                f"after step {grown[0]}", grown[1]))
        out_dx = grown[1]
    if out and graph.node(out)["dims"] and any(d != 0 for d in graph.node(out)["dims"] if d is not None):
        notes.append("the model's output has a width-dependent dim: there is no finite readout, so "
                     "nontriviality refers to the per-coordinate change of that output.")
    if opt == "adam":
        _adam_readout_check(graph, params, notes, out_dx)

    stable_init = not any(p.when == "at init" for p in problems)  # plain bools below: JSON-able
    problems.sort(key=lambda p: (p.when != "at init", p.when, graph.order.index(p.node)))
    stable = not problems
    nontrivial = bool(stable and out_dx == 0)
    r = min(r_layers) if r_layers else INF
    feature_learning = bool(stable and r == 0)
    kernel = bool(nontrivial and r > 0)
    regime = ("unstable" if not stable else "feature learning" if feature_learning
              else "kernel" if kernel else "trivial")
    maximal = bool(r_layers) and all(x == 0 for x in r_layers)

    # --- classes, checked against the dynamics
    name = _classify(graph, params, attention, opt, notes)
    name = _consistent(name, stable, nontrivial, feature_learning, kernel, problems, notes)
    sliced = _sliced_inits(graph)
    blocking = (prop.blocking(out) if out else []) + sliced
    undetermined = [vars(u) for u in list(prop.undetermined.values()) + sliced]
    if blocking:
        name, regime = "undetermined", "undetermined"
        stable = nontrivial = feature_learning = kernel = maximal = None
        notes.insert(0, "undetermined: the engine cannot size "
                     + "; ".join(str(u) for u in blocking[:5])
                     + ("" if len(blocking) <= 5 else f"; and {len(blocking) - 5} more")
                     + ". Its size feeds the output, so no verdict is given. To fix: "
                     + "; or ".join(dict.fromkeys(u.fix for u in blocking)) + ".")
    custom = sorted({a["custom_backward"] for _, a in graph.nx.nodes(data=True) if a.get("custom_backward")})
    if custom and opt == "adam":
        notes.append(f"custom autograd.Function {', '.join(custom)}: export sees its forward only; the "
                     "Adam-like verdict holds whatever its backward's size, as long as it is not zero.")
    if prop.undetermined and not blocking:
        notes.append("ops the engine could not size, none of which reaches the output: "
                     + "; ".join(str(u) for u in prop.undetermined.values()))
    return Report(parametrization=name, stable=stable, stable_init=stable_init,
                  nontrivial=nontrivial, feature_learning=feature_learning, kernel_regime=kernel,
                  regime=regime, r=r, every_layer_maximal=maximal, optimizer=opt, params=params,
                  attention=attention, constants=constants, problems=problems,
                  output_init=out_x, output_change=out_dx, unknown_ops=dict(prop.unknown),
                  undetermined=undetermined,
                  notes=notes, graph=graph, propagation=prop)


def _sliced_inits(graph) -> list:
    """Parameters whose blocks are initialised differently (one zero, others not): one init
    exponent cannot describe them, so the verdict cannot rest on it."""
    out = []
    for p in graph.params.values():
        for d, (k, zeros) in p.zero_blocks.items():
            node = p.primary.node if p.primary else p.node
            out.append(Unresolved(
                node=node, op=graph.node(node)["op"], module=graph.node(node)["module"], source="",
                reason=f"parameter {p.name!r} is zero on block(s) {zeros} of {k} along dim {d} and "
                       "random elsewhere (a fused weight with a zero-initialised slice): one init "
                       "exponent cannot describe it",
                fix=f"keep the slices of {p.name!r} as separate parameters, or initialise them alike"))
    return out


def _A(p, u):
    if p.init_exp == "zero":
        return INF
    b = -(p.init_exp if p.init_exp is not None else ZERO)
    return -u.mult_exp + b


def _U(p, u, opt):
    """The update invariant with the Adam-equivalent LR: an orthogonalised (Muon) or
    parameter-scaled (Adafactor) step of lr moves each entry by lr times its direction's size,
    which is what an Adam step of that size does; the class rules then apply unchanged."""
    if p.lr_exp == "zero" or not p.trainable:
        return None
    c = -(p.lr_exp if p.lr_exp is not None else ZERO) - direction_exp(p)
    a = -u.mult_exp
    return (2 * a + c) if opt == "sgd" else (a + c)


def _first_growth(prop, node, get=lambda s: s.dx):
    """(step, exponent) of the first step at which ``get`` of the node exceeds Theta(1).

    Exponents of an unstable model compound from step to step; the first step's is the one
    a measurement at small widths sees, so that is the one reported."""
    for t, sizes in enumerate(prop.steps[1:], start=1):
        v = get(sizes[node])
        if v > 0:
            return t, v
    return None


def _check_feature(graph, prop, feat, layer, p, problems):
    """Features must be Theta(1) at init (TP4 Thm 3.3: a_l + b_l fixed) and stay O(1)."""
    x = prop.steps[0][feat].x
    mod = graph.node(layer)["module"] or graph.node(feat)["module"]
    if p.init_exp != "zero" and x != 0 and not zero_data(graph, prop, layer):
        problems.append(Problem(feat, mod, "output blows up" if x > 0 else "output vanishes",
                                "at init", x))
    grown = _first_growth(prop, feat)
    if grown:
        problems.append(Problem(feat, mod, "output blows up", f"after step {grown[0]}", grown[1]))


def _constants(graph):
    """Every width-dependent scalar: numeric arguments of ops, and one-element buffers (Gemma's
    ``embed_scale``), each named by the op and module that apply it."""
    out = []
    for n in graph.order:
        a = graph.node(n)
        for pos, s in a["scalars"].items():
            if len(set(s["values"])) <= 1:
                continue
            if a["kind"] == "placeholder":  # a buffer: name it by the ops that use it
                users = list(graph.nx.successors(n))
                while any(is_view(graph, u) for u in users):  # through casts and views
                    users = [v for u in users for v in (graph.nx.successors(u) if is_view(graph, u) else [u])]
                for user in dict.fromkeys(u for u in users if not graph.node(u)["op"].startswith("_assert")):
                    u = graph.node(user)
                    out.append({"node": user, "op": u["op"], "module": u["module"] or a.get("buffer"),
                                "arg": a.get("buffer"), "values": s["values"], "exp": s["exp"]})
                continue
            out.append({"node": n, "op": a["op"], "module": a["module"],
                        "arg": pos, "values": s["values"], "exp": s["exp"]})
    return out


def _adam_readout_check(graph, params, notes, out_dx):
    """A readout whose Adam update outgrows its init (b > c): the output's change is what
    stability asks of the readout, and the engine sizes it (out_dx > 0 is already a problem), so
    this is a note, not a problem (theory note 9: TP4b Thm 2.8.12's b <= c is read as the
    condition for the limit's form, not for stability; a measurement to width 4096 is flat)."""
    for name, pv in params.items():
        p = graph.params[name]
        for u in pv.uses:
            if u.role != "output" or p.init_exp == "zero" or u.U is None:
                continue
            b = -p.init_exp
            c = -(p.lr_exp if p.lr_exp is not None else ZERO)
            if b > c:
                notes.append(
                    f"the readout {name!r} has an update that outgrows its init (b - c = {b - c}; "
                    "TP4b Thm 2.8.12's b <= c): after training the readout is its accumulated "
                    "updates, not its init. The output's change "
                    + ("stays Theta(1), so this is not an instability" if out_dx <= 0 else
                       "grows, which the problems list") + " (theory note 9).")


#: the eps note looks this far past the largest analysed width
EPS_HORIZON = 100


def eps_crossover(eps: float, grad: float, e, g, width: int) -> float:
    """The width where Adam's eps ~ eps (width / n)^e meets the gradient's RMS entry
    ~ grad (width / n)^g (g < e): n* = width (eps / grad)^(1 / (g - e)). Past it the step is
    SGD-like, lr g / eps (Everett et al. 2024, arXiv 2407.05872, §4: eps underflow)."""
    return width * (eps / grad) ** (1.0 / float(g - e))


def _eps_note(graph, prop) -> str | None:
    """Entrywise (Adam-family) parameters whose eps shrinks slower than their gradient, noted
    only where it matters: their gradient's RMS (measured at the largest width, ``grad_rms``)
    falls to eps within ``EPS_HORIZON`` times the largest analysed width. Without a measured
    gradient every such parameter is listed."""
    from .engine import eps_exp
    from ..ops import mx
    init, top = prop.steps[0], max(graph.widths)
    hit = []
    for name, p in graph.params.items():
        e = eps_exp(p)
        if e is None or not p.trainable:
            continue
        g = mx(*(init[n].g for n in p.nodes if n in init))
        if g == NEG or g >= e:
            continue
        eps, grad = p.eps.get(top), p.grad_rms.get(top)
        cross = eps_crossover(eps, grad, e, g, top) if eps and grad else None
        if cross is not None and cross > EPS_HORIZON * top:
            continue
        hit.append((name, e, g, cross))
    if not hit:
        return None

    def where(c):
        if c is None:
            return ""
        return (", already above the gradient's RMS" if c <= top
                else f", reaching the gradient's RMS near width {c:.3g}")

    shown = "; ".join(f"{n!r} (eps ~ {fmt(e)}, gradient ~ {fmt(g)}{where(c)})"
                      for n, e, g, c in hit[:4])
    more = f"; and {len(hit) - 4} more" if len(hit) > 4 else ""
    return ("Adam's eps outgrows the gradient it divides: " + shown + more + ". Past that width "
            "the step is SGD-like (lr g / eps) and smaller than the eps -> 0 limit this verdict "
            "assumes (adam_eps='asymptotic' predicts it); eps ~ 1/fan_in for hidden weights "
            "keeps it Adam-like (theory note 9).")


def _classify(graph, params, attention, opt, notes) -> str:
    """Per-use and per-parameter classes, muP fixes, and the model's name.

    SP and NTK leave the global LR exponent c0 free: it is fixed as the value most parameter
    entries agree with, and a parameter matches the class only with that c0."""
    votes: dict[str, dict] = {k: {} for k in CLASSES}
    for name, pv in params.items():
        numel = _numel(pv.shape)
        for u in pv.uses:
            for cls in ("SP", "NTK"):
                if u.U is not None and u.fan_in_exp is not None and u.role != "unknown":
                    _, offset = expected(cls, u.role, u.fan_in_exp, u.fan_out_exp or ZERO, opt)
                    votes[cls][u.U - offset] = votes[cls].get(u.U - offset, 0) + numel
    c0 = {k: (max(v, key=v.get) if v else ZERO) for k, v in votes.items()}
    c0["muP"] = ZERO
    ok = {k: True for k in CLASSES}
    for name, pv in params.items():
        p = graph.params[name]
        per_use = []
        for u in pv.uses:
            if u.role == "unknown" or u.fan_in_exp is None:
                continue
            u.classes = [cls for cls in CLASSES if _use_matches(cls, u, opt, c0[cls])]
            per_use.append(set(u.classes))
        pv.classes = [k for k in CLASSES if all(k in s for s in per_use)] if per_use else list(CLASSES)
        for k in CLASSES:
            if p.trainable and k not in pv.classes:
                ok[k] = False
        if p.trainable and "muP" not in pv.classes:
            pv.fix_sets = mup_fixes(p, pv, opt)
            pv.fixes = [fs.text for fs in pv.fix_sets]
    for a in attention:
        if a.kind == "1/d":
            ok["SP"] = ok["NTK"] = False
        elif a.kind == "1/sqrt(d)":
            ok["muP"] = False
        elif a.kind != "fixed d_head":
            ok["SP"] = ok["NTK"] = ok["muP"] = False
    names = [k for k in CLASSES if ok[k]]
    if not names:
        return "mixed"
    if names[0] == "muP" and not any(u.role == "hidden" for pv in params.values() for u in pv.uses):
        notes.append("no hidden (width x width) weight: muP here coincides with the mean-field "
                     "parametrization (MF; TP4 §2, one hidden layer).")
    if names[0] in ("SP", "NTK") and c0[names[0]] != 0:
        notes.append(f"{names[0]} with a global learning rate ~ n^{-c0[names[0]]}.")
    return names[0]


def _consistent(name, stable, nontrivial, feature_learning, kernel, problems, notes) -> str:
    """The class named from the abc exponents must agree with the engine's own dynamics (TP4
    Thms 3.3-3.8): muP (whose LR exponents are fixed) is stable, nontrivial and feature learning;
    NTK (whose global LR is free, so it may be unstable) never learns features. Where they
    disagree the model is "mixed", and the report says why."""
    if name == "NTK" and feature_learning:  # NTK's free global LR may make it unstable, never FL
        why = "feature learning (r = 0)"
    elif name == "muP" and not feature_learning:
        why = ("unstable: " + "; ".join(f"{p.module or p.node} {p.what} {p.when}" for p in problems[:3])
               if not stable else "trivial (the output does not move)" if not nontrivial
               else "not feature learning (r > 0)")
    else:
        return name
    notes.append(f"every parameter follows {name}'s abc rules, but the engine's dynamics are {why}; "
                 "the model is named mixed.")
    return "mixed"


def _use_matches(cls, u, opt, c0) -> bool:
    rule, offset = expected(cls, u.role, u.fan_in_exp, u.fan_out_exp or ZERO, opt)
    return init_ok(rule, u.A) and (u.U is None or u.U - offset == c0)


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
