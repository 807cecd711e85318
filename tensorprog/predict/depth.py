"""The depth verdict: TP6's conditions on a residual network's branch multipliers and learning
rates, read from the depth exponents ``graph.depth.trace_depth`` fits.

For the stream x^l = x^{l-1} + L^-alpha g^l(x^{l-1}) whose blocks move by L^-gamma per step
(TP6, arXiv 2310.02244, §2-4; CompleteP, arXiv 2505.01618, §3):

* stable at init iff alpha >= 1/2: the L branch outputs are independent at init and add up like a
  CLT sum, L^{1/2 - alpha} (with pre-norm branches the stream grows like L^{max(0, 1/2 - alpha)};
  without normalisation each block multiplies the stream's mean square by 1 + Theta(L^-2alpha),
  an exponential growth (1 + L^-2alpha)^L for alpha < 1/2);
* stable in training iff alpha + gamma >= 1, nontrivial iff alpha + gamma <= 1: the blocks' changes
  are correlated (one loss moves them all) and add up like an LLN sum, L^{1 - alpha - gamma};
* gamma from the learning rate's depth exponent (LR ~ L^-c) and the optimizer's geometry
  (``graph.optimizers``): an entrywise-normalised step (Adam) is the LR itself, gamma = c; a
  gradient step (SGD) carries the multiplier L^-alpha of the block's gradient, gamma = alpha + c;
* Adam's eps must shrink like the gradient entries, eps ~ L^-alpha (CompleteP Table 1), or it
  dominates the step at large depth.

Families: standard residual (alpha = 0), Depth-muP (alpha = 1/2, TP6: Adam LR eta / sqrt(L), SGD
LR constant), CompleteP (alpha = 1, CompleteP Table 1: no depth factor in the Adam LR). Both sit on
alpha + gamma = 1; the papers disagree on which to use (TP6 argues alpha = 1/2 maximises feature
diversity for one-layer blocks; CompleteP argues alpha = 1 keeps every layer of a multi-layer
block non-lazy) and hence on the Adam LR exponent in depth (-1/2 or 0). ``family`` picks the
fix; the default is CompleteP (``DEFAULT_FAMILY``) because the zoo's and most practical blocks
have more than one layer, where TP6 (§9) itself finds Depth-muP's limit degenerate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from ..errors import TraceError
from ..jsonio import JSONMixin, jsonable
from ..graph.depth import DepthTrace, branch_count_at, trace_depth
from ..validate import check_widths, positive_int

HALF = sp.Rational(1, 2)

#: family -> branch-multiplier exponent alpha (m ~ L^-alpha)
FAMILIES: dict[str, Any] = {"depth_mup": HALF, "completep": sp.Integer(1)}
FAMILY_NAMES = {"standard": "standard residual", "depth_mup": "Depth-muP", "completep": "CompleteP"}
DEFAULT_FAMILY = "completep"


@dataclass(frozen=True)
class DepthRules:
    """A family's depth exponents (quantity ~ (L / L_0)^e) and ``at(depth)``'s factors."""

    family: str
    base_depth: int
    optimizer: str  # "adam" (any scale-invariant step) or "sgd"
    alpha: Any
    mult_exp: Any  # branch multiplier
    lr_exp: Any  # learning rate of every parameter inside the blocks
    eps_exp: Any  # Adam's eps inside the blocks (None for SGD)

    def at(self, depth: int) -> dict[str, float]:
        """Factors at ``depth`` relative to ``base_depth`` (1 at the base depth)."""
        r = depth / self.base_depth
        out = {"branch_multiplier": r ** float(self.mult_exp), "lr": r ** float(self.lr_exp)}
        if self.eps_exp is not None:
            out["eps"] = r ** float(self.eps_exp)
        return out

    def __str__(self) -> str:
        eps = "" if self.eps_exp is None else f", Adam eps x (L/L0)^{self.eps_exp}"
        return (f"{FAMILY_NAMES[self.family]} (base depth {self.base_depth}): branch multiplier "
                f"(L/L0)^{self.mult_exp}, block learning rates x (L/L0)^{self.lr_exp}{eps}")


def depth_rules(family: str = DEFAULT_FAMILY, base_depth: int = 2,
                optimizer: str = "adam") -> DepthRules:
    """The depth rules of ``family`` ("depth_mup" or "completep") for an Adam-like ("adam") or
    gradient ("sgd") step: multiplier L^-alpha; LR L^{alpha - 1} (Adam) or L^{2 alpha - 1} (SGD),
    so that alpha + gamma = 1; Adam eps L^-alpha (module docstring)."""
    if family not in FAMILIES:
        raise TraceError(f"unknown depth family {family!r}; choose one of {sorted(FAMILIES)} "
                         f"(default {DEFAULT_FAMILY!r}).")
    if optimizer not in ("adam", "sgd"):
        raise TraceError("optimizer must be 'adam' (any scale-invariant step) or 'sgd', got "
                         f"{optimizer!r}.")
    base_depth = positive_int(base_depth, "base_depth", TraceError,
                              "L_0, the depth where every depth factor is 1")
    a = FAMILIES[family]
    lr = a - 1 if optimizer == "adam" else 2 * a - 1
    eps = -a if optimizer == "adam" else None
    return DepthRules(family, int(base_depth), optimizer, a, -a, lr, eps)


def check_depth_options(base_depth, family, error=TraceError):
    """``base_depth`` (None or a positive int) and ``family`` as ``rules`` / ``apply_mup`` take
    them: an unknown family is an error, and so is a family other than the default without a
    base depth (it would be silently ignored)."""
    if family not in FAMILIES:
        raise error(f"unknown depth_family {family!r}; choose one of {sorted(FAMILIES)} "
                    f"(default {DEFAULT_FAMILY!r}).")
    if base_depth is None:
        if family != DEFAULT_FAMILY:
            raise error(f"depth_family={family!r} has no effect without base_depth: pass "
                        "base_depth=L0 (and a factory taking (width, depth)) for depth factors, "
                        "or drop depth_family.")
        return None
    return positive_int(base_depth, "base_depth", error,
                        "L_0, the depth where every depth factor is 1")


@dataclass
class KindVerdict:
    """One kind of branch: its exponents and TP6's conditions."""

    kind: str
    alpha: Any
    gamma: Any
    stable_init: bool | None
    stable_train: bool | None
    nontrivial: bool | None
    eps_scaled: bool | None
    stream_init_exp: Any  # None: no power law (exponential growth) or unknown
    block_init_exp: Any
    stream_change_exp: Any
    block_change_exp: Any
    block_change_uncapped: Any
    family: str
    lr_exp: Any = None  # the block weights' learning rate ~ L^lr_exp ("zero": not trained)
    eps_exp: Any = None
    init_exp: Any = None  # init RMS of the branch's last weights ~ L^init_exp
    wd_exp: Any = None  # weight decay ~ L^wd_exp (reported; TP6 / CompleteP put no condition on it)
    notes: list[str] = field(default_factory=list)


def _family_of(alpha) -> str:
    if alpha is None:
        return "undetermined"
    return {sp.Integer(0): "standard", HALF: "depth_mup", sp.Integer(1): "completep"}.get(
        sp.nsimplify(alpha), f"alpha = {alpha}")


def kind_verdict(k) -> KindVerdict:
    """TP6's conditions for one ``graph.depth.BranchKind`` (module docstring)."""
    notes = list(k.notes)
    alpha = None if k.mult_exp is None else -k.mult_exp
    alpha_init = alpha
    if alpha is not None and k.init_exp not in (None, 0):
        notes.append(f"its last weights' init RMS scales like L^{k.init_exp} (fit "
                     f"{k.init_fit:+.2f}; GPT-2 style): a multiplier at init only, so at init "
                     f"alpha = {alpha - k.init_exp}, in training alpha = {alpha}")
        alpha_init = alpha - k.init_exp
    gamma = None
    if alpha is not None and k.lr_exp not in (None, "zero") and k.adam_like is not None:
        c = -k.lr_exp
        if k.geometry == "parameter-scaled" and k.init_exp is not None:
            c = c - k.init_exp
        gamma = c if k.adam_like else alpha + c
    stream = block = s_change = b_change = uncapped = None
    stable_init = None if alpha_init is None else bool(alpha_init >= HALF)
    if alpha_init is not None:
        if k.normalised:
            stream = sp.Max(0, HALF - alpha_init)
        elif alpha_init >= HALF:
            stream = sp.Integer(0)
        else:
            notes.append(f"no normalisation in the branch and alpha = {alpha_init} < 1/2 at init: "
                         "each block multiplies the stream's mean square by 1 + Theta(L^-2alpha), "
                         "an exponential growth in depth (no power law)")
        block = None if stream is None else (-alpha_init if k.normalised else -alpha_init + stream)
    stable_train = nontrivial = None
    if gamma is not None:
        stable_train, nontrivial = bool(alpha + gamma >= 1), bool(alpha + gamma <= 1)
        s_change = 1 - alpha - gamma
        if stream is not None:
            rel = s_change - stream  # relative change of the stream a block reads
            uncapped = -alpha + sp.Max(-gamma, rel)
            b_change = -alpha + sp.Max(-gamma, sp.Min(0, rel)) if k.normalised else uncapped
    elif k.lr_exp == "zero":
        notes.append("its learning rate is zero: the branch does not train")
    if k.wd_exp not in (None, "zero", 0):
        notes.append(f"its weight decay scales like L^{k.wd_exp}: reported only (no depth "
                     "condition on weight decay is applied)")
    eps_scaled = None
    if k.adam_like and k.eps_exp is not None and alpha is not None:
        eps_scaled = True if k.eps_exp == "zero" else bool(k.eps_exp <= -alpha)
    if k.weights_per_branch > 1 and alpha == HALF:
        notes.append(f"{k.weights_per_branch} weight matrices per branch: TP6 (§9) finds no "
                     "parametrization of multi-layer blocks whose infinite-depth limit keeps "
                     "every layer learning at alpha = 1/2; CompleteP (alpha = 1) is built for them")
    return KindVerdict(kind=k.kind, alpha=alpha, gamma=gamma, stable_init=stable_init,
                       stable_train=stable_train, nontrivial=nontrivial, eps_scaled=eps_scaled,
                       stream_init_exp=stream, block_init_exp=block, stream_change_exp=s_change,
                       block_change_exp=b_change, block_change_uncapped=uncapped,
                       family=_family_of(alpha), lr_exp=k.lr_exp, eps_exp=k.eps_exp,
                       wd_exp=k.wd_exp, init_exp=k.init_exp, notes=notes)


@dataclass(eq=False)
class DepthReport(JSONMixin):
    """What ``analyze_depth`` found. ``str(report)`` reads; ``to_dict()`` is JSON-able."""

    applies: bool
    statement: str
    family: str
    stable_init: bool | None
    stable_train: bool | None
    nontrivial: bool | None
    optimizer: str | None
    kinds: dict[str, KindVerdict]
    fix: list[str]
    rules: DepthRules | None
    notes: list[str]
    trace: DepthTrace = field(repr=False, default=None)
    depths: tuple[int, ...] | None = None  # the traced depths (kept when read back from JSON)

    @property
    def stream_init_exp(self):
        """The stream's depth exponent at init (the largest of its branch kinds')."""
        es = [v.stream_init_exp for v in self.kinds.values()]
        return None if not es or any(e is None for e in es) else sp.Max(*es)

    @property
    def stream_change_exp(self):
        es = [v.stream_change_exp for v in self.kinds.values()]
        return None if not es or any(e is None for e in es) else sp.Max(*es)

    def to_dict(self) -> dict:
        return jsonable({
            "applies": self.applies, "statement": self.statement, "family": self.family,
            "stable_init": self.stable_init, "stable_train": self.stable_train,
            "nontrivial": self.nontrivial, "optimizer": self.optimizer,
            "kinds": {k: v.__dict__ for k, v in self.kinds.items()}, "fix": self.fix,
            "rules": None if self.rules is None else self.rules.__dict__, "notes": self.notes,
            "depths": None if self.depths is None else list(self.depths)})

    @classmethod
    def from_dict(cls, d: dict) -> "DepthReport":
        """Inverse of ``to_dict`` (without ``trace``, which JSON does not carry)."""
        from ..jsonio import from_jsonable, read_exponent

        d = from_jsonable(d)  # plain json.loads output too
        plain = {"kind", "stable_init", "stable_train", "nontrivial", "eps_scaled", "family",
                 "notes"}
        kinds = {name: KindVerdict(**{k: v if k in plain else read_exponent(v)
                                      for k, v in kv.items()})
                 for name, kv in d["kinds"].items()}
        r = d["rules"]
        return cls(applies=d["applies"], statement=d["statement"], family=d["family"],
                   stable_init=d["stable_init"], stable_train=d["stable_train"],
                   nontrivial=d["nontrivial"], optimizer=d["optimizer"], kinds=kinds,
                   fix=list(d["fix"]), notes=list(d["notes"]),
                   rules=None if r is None else depth_rules(r["family"], r["base_depth"],
                                                            r["optimizer"]),
                   depths=None if d["depths"] is None else tuple(d["depths"]))

    def __str__(self) -> str:
        lines = [f"depth: {self.statement}"]
        if not self.applies:
            return lines[0]
        yn = {True: "yes", False: "NO", None: "undetermined"}
        lines.append(f"  stable at init (alpha >= 1/2): {yn[self.stable_init]}; stable in training "
                     f"(alpha + gamma >= 1): {yn[self.stable_train]}; nontrivial (alpha + gamma "
                     f"<= 1): {yn[self.nontrivial]}")
        w = max([24] + [len(k) for k in self.kinds])
        lines.append(f"  {'branch':{w}s} {'alpha':>6s} {'gamma':>6s} {'stream':>9s} {'block':>9s} "
                     f"{'d stream':>9s}  eps")
        for v in self.kinds.values():
            e = {True: "scaled", False: "NOT scaled", None: "-"}[v.eps_scaled]
            lines.append(f"  {v.kind:{w}s} {_num(v.alpha):>6s} {_num(v.gamma):>6s} "
                         f"{_lexp(v.stream_init_exp):>9s} {_lexp(v.block_init_exp):>9s} "
                         f"{_lexp(v.stream_change_exp):>9s}  {e}")
        for f in self.fix:
            lines.append(f"  fix: {f}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


def _num(e) -> str:
    return "?" if e is None else str(e)


def _lexp(e) -> str:
    if e is None:
        return "?"
    return "1" if e == 0 else f"L^{e}"


def _all(values):
    vs = list(values)
    return None if any(v is None for v in vs) else all(vs)


def _fix(kinds, opt, family, base_depth, eps_matters) -> tuple[list[str], DepthRules | None]:
    if opt is None:
        return [], None
    rules = depth_rules(family, base_depth, opt)
    out = []
    for v in kinds.values():
        if v.alpha != rules.alpha:
            now = "?" if v.alpha is None else _lexp(-v.alpha)
            out.append(f"`{v.kind}`: branch multiplier (L/L0)^{rules.mult_exp} (now {now})")
        lr = 0 if v.lr_exp is None else v.lr_exp
        if lr != rules.lr_exp:
            out.append(f"`{v.kind}`: learning rates inside the blocks x (L/L0)^{rules.lr_exp} "
                       f"(now {_lexp(lr) if lr != 'zero' else 'zero'})")
        if v.init_exp not in (None, 0):
            out.append(f"`{v.kind}`: initialise its last weights without a depth factor (now "
                       f"{_lexp(v.init_exp)}): the branch multiplier does the depth scaling")
        eps = 0 if v.eps_exp in (None, "zero") else v.eps_exp
        if eps_matters and rules.eps_exp is not None and eps != rules.eps_exp:
            out.append(f"`{v.kind}`: Adam eps inside the blocks x (L/L0)^{rules.eps_exp} "
                       f"(now {_lexp(eps)})")
    return list(dict.fromkeys(out)), rules


def analyze_depth(factory, depths=(2, 4, 8), *, width: int = 64, widths=None, example_inputs=None,
                  make_optimizer=None, family: str | None = None, base_depth: int | None = None,
                  seed: int = 0) -> DepthReport:
    """Depth verdict of ``factory(width, depth)`` (module docstring). ``widths`` (default
    (width, 2 width)) are where the branch count is checked not to change with the width.
    ``family`` ("completep" or "depth_mup") is the fix's target; default: the model's own when it
    is one of them, else ``DEFAULT_FAMILY``. ``base_depth`` (default: the smallest depth) is L_0
    of the fix's factors. The width verdict is ``analyze``'s, unchanged."""
    if family is not None and family not in FAMILIES:
        raise TraceError(f"unknown depth family {family!r}; choose one of {sorted(FAMILIES)}.")
    if base_depth is not None:
        base_depth = positive_int(base_depth, "base_depth", TraceError,
                                  "L_0, the depth where every depth factor is 1")
    width = positive_int(width, "width", TraceError, "the width every depth is built at")
    if widths is not None:
        widths = check_widths(widths, error=TraceError, what="widths",
                              why="to check that the block count does not change with the width")
    trace = trace_depth(factory, depths, width=width, example_inputs=example_inputs,
                        make_optimizer=make_optimizer, seed=seed)
    d0 = trace.depths[0]
    counts = branch_count_at(factory, widths or (width, 2 * width), d0, example_inputs, seed)
    if len(set(counts.values())) > 1:
        raise TraceError(
            f"at depth {d0} the number of residual branches changes with the width ({counts}): "
            "the model's block count grows with its width, so width and depth cannot be scaled "
            "apart. Make the depth its own argument, factory(width, depth), with a block count "
            "that does not depend on the width.")
    if not trace.kinds:
        return DepthReport(applies=False, statement=(
            f"no residual branches found (no add of a stream and a branch computed from it "
            f"through weights, at depths {list(trace.depths)}): depth scaling (TP6 / CompleteP) "
            "does not apply to this model"), family="none", stable_init=None, stable_train=None,
            nontrivial=None, optimizer=None, kinds={}, fix=[], rules=None,
            notes=list(trace.warnings), trace=trace, depths=tuple(trace.depths))
    kinds = {name: kind_verdict(k) for name, k in trace.kinds.items()}
    like = {k.adam_like for k in trace.kinds.values() if k.adam_like is not None}
    opt = None if not like else "mixed" if len(like) > 1 else "adam" if like.pop() else "sgd"
    fams = {v.family for v in kinds.values()}
    fam = fams.pop() if len(fams) == 1 else "mixed"
    on_line = _all(v.stable_train and v.nontrivial if v.stable_train is not None else None
                   for v in kinds.values())
    name = FAMILY_NAMES.get(fam, fam)
    if fam in ("depth_mup", "completep") and on_line is False:
        name += " multiplier, learning rates off alpha + gamma = 1"
    elif fam in ("depth_mup", "completep") and on_line is None:
        name += " multiplier (learning rates not read: pass make_optimizer)"
    target = family or (fam if fam in FAMILIES else DEFAULT_FAMILY)
    fix, rules = _fix(kinds, opt if opt in ("adam", "sgd") else None, target,
                      base_depth or d0, opt == "adam")
    notes = list(trace.warnings)
    stable = _all(v.stable_init for v in kinds.values())
    for v in kinds.values():
        notes.extend(f"`{v.kind}`: {n}" for n in v.notes)
    if fam == "standard" and not stable and all(k.normalised for k in trace.kinds.values()):
        notes.append("standard residual: the stream grows like L^{1/2} at init with pre-norm "
                     "branches")
    if opt is None:
        notes.append("no optimizer read (pass make_optimizer): the training conditions and the "
                     "fix are undetermined")
    if opt == "mixed":
        notes.append("some branches step by their gradient (SGD), others scale-invariantly: "
                     "no single fix is given")
    count = sum(k.counts[d0] for k in trace.kinds.values())
    statement = (f"{len(trace.kinds)} kind(s) of residual branch, {count} branches at depth "
                 f"{d0}; family: {name}")
    return DepthReport(applies=True, statement=statement, family=fam, stable_init=stable,
                       stable_train=_all(v.stable_train for v in kinds.values()),
                       nontrivial=_all(v.nontrivial for v in kinds.values()), optimizer=opt,
                       kinds=kinds, fix=fix, rules=rules, notes=notes, trace=trace,
                       depths=tuple(trace.depths))
