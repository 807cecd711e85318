"""``tensorprog explain``: a verdict derived step by step, in words and numbers.

Two things can be explained:

* **The closed-form theory of the L-hidden-layer MLP** (``theory.ABC``): a named preset or any
  (a, b, c). ``explain_abc`` prints the parametrization and its invariants, the symmetry's
  canonical form, r with symbols (as ``theory`` computes it, with SymPy symbols for a, b, c) and
  then with numbers, every theorem condition of ``ABC.why()`` with its value and source, and the
  verdict.
* **One parameter of a traced model** (``analyze.Report``): ``explain_parameter`` prints its
  dims and their width exponents, the ops that consume it and why that gives its role, the
  measured init, multiplier and learning-rate exponents, the two invariants of the abc symmetry
  (A = a + b and U = 2a + c for SGD, a + c for Adam) against each class's rule
  (``analyze.expected``), its layer's r, the problems found at its ops, and the fix.

Both render as terminal text or, with ``markdown=True``, as Markdown.

Command line (``cli/explain.py``)::

    tensorprog explain mlp --preset SP --optimizer sgd --layers 3 --lr-exponent 0
    tensorprog explain mlp --a -1/2 0 1/2 --b 1/2 1/2 1/2 --c 0
    tensorprog explain --example gpt --param sp --parameter readout.weight
    tensorprog explain model.py:factory --parameter blocks.0.attn.query.weight --markdown

``--lr-exponent E`` means learning rate ~ n^E (as ``analyze --lr-rule``), i.e. c = -E;
``--c`` gives TP4's c directly. Lists take rationals (``0 1/2 -1/2``) or one comma-separated
word (``--a=-1/2,0,1/2``).
"""
from __future__ import annotations

import difflib
import fnmatch
import re
import textwrap
from typing import Any, Sequence

import sympy as sp

from ..errors import TensorprogError
from ..exponents import fmt

__all__ = ["explain_abc", "explain_preset", "explain_parameter", "find_parameter", "rule_text",
           "update_text", "THEORY_TARGETS"]

THEORY_TARGETS = ("mlp",)


# --------------------------------------------------------------------------- rendering


class _Doc:
    """Terminal text or Markdown from the same calls."""

    def __init__(self, markdown: bool = False, width: int = 92):
        self.md = markdown
        self.width = width
        self.lines: list[str] = []

    def _gap(self):
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def title(self, text: str):
        self._gap()
        self.lines += [f"## {text}"] if self.md else [text, "=" * min(len(text), self.width)]
        self.lines.append("")

    def step(self, text: str):
        self._gap()
        self.lines += [f"### {text}"] if self.md else [text, "-" * min(len(text), self.width)]
        self.lines.append("")

    def para(self, text: str):
        self._gap()
        self.lines += [text] if self.md else textwrap.wrap(text, self.width)
        self.lines.append("")

    def formulas(self, lines: Sequence[str]):
        self._gap()
        if self.md:
            self.lines += ["```text", *lines, "```"]
        else:
            self.lines += [f"    {x}" for x in lines]
        self.lines.append("")

    def bullets(self, items: Sequence[str]):
        self._gap()
        for item in items:
            if self.md:
                self.lines.append(f"- {item}")
            else:
                self.lines += textwrap.wrap(item, self.width, initial_indent="  - ",
                                            subsequent_indent="    ")
        self.lines.append("")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]):
        self._gap()
        rows = [[str(c) for c in r] for r in rows]
        if self.md:
            esc = lambda x: x.replace("|", "\\|")  # noqa: E731
            self.lines.append("| " + " | ".join(esc(h) for h in header) + " |")
            self.lines.append("|" + "|".join("---" for _ in header) + "|")
            self.lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        else:
            w = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
                 for i, h in enumerate(header)]
            self.lines.append("  " + "  ".join(str(h).ljust(w[i]) for i, h in enumerate(header)).rstrip())
            self.lines.append("  " + "  ".join("-" * w[i] for i in range(len(header))))
            self.lines += ["  " + "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()
                           for r in rows]
        self.lines.append("")

    def render(self) -> str:
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n"


def _e(x) -> str:
    """An exponent or expression, readable: Min -> min, 2*a_1 -> 2 a_1, oo -> inf."""
    if x is None:
        return "-"
    if x == sp.oo:
        return "inf"
    if x == -sp.oo:
        return "-inf"
    s = sp.sstr(x)
    s = s.replace("Min(", "min(").replace("Max(", "max(")
    return re.sub(r"(\d)\*(?=[A-Za-z(])", r"\1 ", s).replace("*", " ")


def _tup(xs) -> str:
    return "(" + ", ".join(_e(x) for x in xs) + ")"


def _holds(h) -> str:
    return "yes" if h is True else "NO" if h is False else "depends"


# --------------------------------------------------------------------------- theory


def _layer_kind(l: int, L: int) -> str:
    if l == 1:
        return "input (finite fan-in)"
    if l == L + 1:
        return "readout (finite fan-out)"
    return "hidden (n x n)"


def _symbolic(p):
    """The same parametrization with SymPy symbols for a, b, c (c per layer if p's c is)."""
    from ..theory.abc import ABC

    n = p.L + 1
    a = sp.symbols(f"a_1:{n + 1}")
    b = sp.symbols(f"b_1:{n + 1}")
    c = sp.symbols(f"c_1:{n + 1}") if isinstance(p.c, tuple) else sp.Symbol("c")
    return ABC(a, b, c, p.optimizer)


def _named_equivalent(p) -> list[str]:
    from ..theory.abc import TheoryError, preset

    out = []
    for name in ("SP", "NTK", "muP", "MF"):
        try:
            q = preset(name, p.L, p.optimizer)
        except TheoryError:
            continue
        if p.equivalent(q):
            out.append(name)
        elif name == "SP" and p.optimizer == "sgd" and p.equivalent(preset(name, p.L, "sgd", c=1)):
            out.append("SP with LR 1/n")
    return out


def explain_abc(p, *, label: str | None = None, markdown: bool = False) -> str:
    """The derivation of a ``theory.ABC``'s verdict, step by step."""
    from ..theory.abc import TheoryError, max_stable_lr_exponent

    d = _Doc(markdown)
    sgd = p.optimizer == "sgd"
    L = p.L
    opt = ("the update is linear in the gradient; TP4" if sgd else
           "the update is an entrywise, scale-invariant function of the gradient; TP4b, "
           "eps -> 0")
    d.title(f"Derivation: {label or 'abc-parametrization'}, MLP with L = {L} hidden "
            f"layer{'s' if L > 1 else ''}")
    d.para(f"Optimizer class: {p.optimizer} ({opt}). n is the width.")

    # 1. the parametrization
    d.step("Step 1. The parametrization and its invariants")
    d.para("Layer l uses W^l = n^{-a_l} w^l, with w^l_ij ~ N(0, n^{-2 b_l}), and trains w^l "
           "with learning rate eta n^{-c_l}. Two combinations are what the network sees: "
           "A_l = a_l + b_l, the entry size of the effective weight W^l at init (n^{-A_l}), and "
           + ("U_l = 2 a_l + c_l, the size of one SGD step on W^l per unit gradient of W^l."
              if sgd else
              "U_l = a_l + c_l, the entry size of one Adam step on W^l (Adam's step on w^l is "
              "Theta(n^{-c_l}) whatever the gradient's size)."))
    cs = p.c_layers
    rows = []
    for i in range(L + 1):
        U = (2 * p.a[i] + cs[i]) if sgd else (p.a[i] + cs[i])
        rows.append([i + 1, _layer_kind(i + 1, L), _e(p.a[i]), _e(p.b[i]), _e(cs[i]),
                     _e(p.a[i] + p.b[i]), _e(U)])
    d.table(["l", "layer", "a_l", "b_l", "c_l", "A_l = a_l + b_l",
             "U_l = 2a_l + c_l" if sgd else "U_l = a_l + c_l"], rows)

    # 2. the symmetry
    d.step("Step 2. The symmetry")
    shift = "(a_l + t, b_l - t, c - 2t)" if sgd else "(a_l + t, b_l - t, c_l - t)"
    src = "TP4 Eq. 5" if sgd else "TP4b Prop 2.2.3"
    d.para(f"Shifting every layer by {shift} leaves every A_l and U_l, hence the training "
           f"dynamics at every width, unchanged ({src}). So only the invariants matter, and "
           "the verdict can be read off any representative.")
    can = p.canonical()
    if p.a[0] == 0:
        d.para("This parametrization already is the canonical representative (a_1 = 0).")
    else:
        d.para(f"Canonical representative (a_1 = 0, shift t = {_e(-p.a[0])}):")
        d.formulas([f"a = {_tup(can.a)}", f"b = {_tup(can.b)}",
                    f"c = {_tup(can.c) if isinstance(can.c, tuple) else _e(can.c)}"])
    same = _named_equivalent(p)
    if same:
        d.para(f"It is equivalent (same canonical form) to the named parametrization: "
               f"{', '.join(same)}.")

    # 3. r
    d.step("Step 3. r: how far the features move")
    sym = _symbolic(p)
    cL = "c_{L+1}" if isinstance(p.c, tuple) else "c"
    if sgd:
        cl = "c_l" if isinstance(p.c, tuple) else "c"
        d.para("r_l is the exponent of the change of layer l's output after training: "
               "Delta h^l = Theta(n^{-r_l}) (TP4 Prop 5.3). Under SGD the update of layer l is "
               "n^{-c_l - 2 a_l} times its gradient, and the gradient reaching the hidden "
               "layers passes through the readout, whose entries after training are "
               f"n^{{-min(a_{{L+1}} + b_{{L+1}}, 2 a_{{L+1}} + {cL})}}: its init or its own "
               "update, whichever is larger:")
        d.formulas([f"r_l = min(a_{{L+1}} + b_{{L+1}}, 2 a_{{L+1}} + {cL}) + {cl} - 1 + 2 a_l "
                    "+ I(l = 1)",
                    "r   = min_l r_l                       (TP4 Def 3.2)"])
    else:
        d.para("r_l is the exponent of the change of layer l's output after training: "
               "Delta h^l = Theta(n^{-r_l}). Under Adam the step on W^l has entries "
               "n^{-(a_l + c_l)}; it meets an input vector correlated with it (LLN), gaining "
               "the fan-in: n for hidden layers, 1 for the input layer (TP4b):")
        d.formulas(["r_1 = a_1 + c_1,   r_l = a_l + c_l - 1  (2 <= l <= L)",
                    "r   = min_l r_l"])
    d.para(f"With symbols, as tensorprog.theory computes it for L = {L}:")
    d.formulas([f"r_{i + 1} = {_e(x)}" for i, x in enumerate(sym.r_layers)]
               + [f"r   = min({', '.join(f'r_{i + 1}' for i in range(L))})"])
    d.para("With numbers:")
    lines = []
    if sgd:
        A, Ur = p.readout_init, 2 * p.a[-1] + cs[-1]
        lines.append(f"readout term min(a_{{L+1}} + b_{{L+1}}, 2 a_{{L+1}} + {cL}) = "
                     f"min({_e(A)}, {_e(Ur)}) = {_e(sp.Min(A, Ur))}")
    lines += [f"r_{i + 1} = {_e(x)}" for i, x in enumerate(p.r_layers)]
    lines.append(f"r   = min({', '.join(_e(x) for x in p.r_layers)}) = {_e(p.r)}"
                 if L > 1 else f"r   = r_1 = {_e(p.r)}")
    d.formulas(lines)

    # 4. the conditions
    d.step("Step 4. The theorem conditions")
    d.para("Stable needs every 'stable (init)' and 'stable' row. Nontrivial needs stable and "
           "either 'nontrivial' row. Feature learning is stable with r = 0; the kernel regime "
           "is nontrivial with r > 0.")
    why = p.why()
    d.table(["group", "condition", "value", "holds", "source"],
            [[c.name, c.expression_text, _e(c.value), _holds(c.holds), c.source] for c in why])
    stable_fail = [c for c in why if c.name.startswith("stable") and c.holds is False]
    verdicts = [
        f"stable: {_holds(p.stable)}" + (f" (fails: {'; '.join(c.expression_text for c in stable_fail)})"
                                        if stable_fail else ""),
        f"nontrivial: {_holds(p.nontrivial)}",
        f"feature learning (r = 0): {_holds(p.feature_learning)}",
        f"kernel regime (r > 0): {_holds(p.kernel_regime)}",
    ]
    d.bullets(verdicts)

    # 5. verdict
    d.step("Step 5. Verdict")
    regime = p.regime
    d.formulas([f"=> {regime}   (r = {_e(p.r)})"])
    A = p.readout_init
    if regime == "unstable":
        try:
            cstar = max_stable_lr_exponent(p.a, p.b, p.optimizer)
            d.para("Some coordinate grows without bound as n -> infinity. With this a and b the "
                   f"largest stable global learning rate is n^{{-c*}} with c* = {_e(cstar)} "
                   "(theory.max_stable_lr_exponent).")
        except TheoryError as e:
            d.para(f"Some coordinate grows without bound as n -> infinity, and {e}.")
    elif regime == "trivial":
        d.para("Stable, but in the limit the function does not move: f_t = f_0 (TP4 Thm 3.4). "
               "The learning rates are too small for this width scaling.")
    elif regime == "kernel":
        d.para(f"Stable and nontrivial with r = {_e(p.r)} > 0: the features move by "
               f"{fmt(-p.r)} -> 0 and f evolves by a fixed kernel (TP4 Thm 3.8). By the "
               "Dynamical Dichotomy (TP4 Cor 3.9) it cannot learn features.")
    elif regime == "feature learning":
        maximal = all(x == 0 for x in p.r_layers)
        d.para("Stable with r = 0: the last layer's features move by Theta(1) (TP4 Thm 3.6), "
               "so this parametrization learns features and is not a kernel method (TP4 Cor 3.9)."
               + (" Every layer updates maximally (all r_l = 0), which singles out muP "
                  "(TP4 Thm 5.6)." if maximal else
                  " Not every layer updates maximally: the layers with r_l > 0 are frozen in "
                  "the limit."))
    if A.is_number and regime != "unstable":
        d.para(f"At init the output is Theta({fmt(sp.Rational(1, 2) - A)}) "
               f"(a_{{L+1}} + b_{{L+1}} = {_e(A)})"
               + (": it vanishes in the limit, as in every feature-learning parametrization "
                  "(TP4 Cor 3.10)." if A > sp.Rational(1, 2) else "."))
    return d.render()


def explain_preset(name: str | None = None, L: int | None = None, optimizer: Any = "sgd", *,
                   a=None, b=None, c=None, lr_exponent=None, markdown: bool = False) -> str:
    """Build the ABC from a preset name or from a, b (and c or lr_exponent), then explain it.

    ``lr_exponent``: learning rate ~ n^{lr_exponent}, i.e. c = -lr_exponent (one value or one
    per layer). ``c``: TP4's c directly. Bad input raises ``TensorprogError``.
    """
    from ..theory.abc import ABC, preset

    def listify(x):
        if x is None:
            return None
        return x if isinstance(x, (list, tuple)) else [x]

    if c is not None and lr_exponent is not None:
        raise TensorprogError("give either c (learning rate n^{-c}) or lr_exponent "
                              "(learning rate n^{E}), not both")
    cval = listify(c)
    if lr_exponent is not None:
        cval = [-sp.Rational(x) if isinstance(x, (int, str)) else -x for x in listify(lr_exponent)]
    if cval is not None and len(cval) == 1:
        cval = cval[0]
    if L is not None and (isinstance(L, bool) or not isinstance(L, int) or L < 1):
        raise TensorprogError(f"--layers must be an integer >= 1, got {L!r}")
    if name is not None:
        if a is not None or b is not None:
            raise TensorprogError("give either a preset or --a/--b, not both")
        p = preset(name, 2 if L is None else L, optimizer, c=cval)
        label = f"{name} preset" if cval is None else f"{name} preset with c = {_cval(cval)}"
    else:
        if a is None or b is None:
            raise TensorprogError("give a preset (--preset SP|NTK|muP|MF) or both --a and --b "
                                  "(one exponent per layer: input, hidden..., readout)")
        if L is not None and len(a) != L + 1:
            raise TensorprogError(f"--layers {L} needs L + 1 = {L + 1} values for --a and --b; "
                                  f"got {len(a)}")
        p = ABC(a, b, 0 if cval is None else cval, optimizer)
        label = "abc-parametrization"
    return explain_abc(p, label=label, markdown=markdown)


def _cval(c) -> str:
    return _tup(c) if isinstance(c, (list, tuple)) else _e(sp.sympify(c))


# --------------------------------------------------------------------------- one parameter


def find_parameter(report, name: str) -> list[str]:
    """Names in ``report.params`` that ``name`` designates: exact, a glob pattern
    (``blocks.*.attn.query.weight``), a tied alias, or a unique dotted suffix."""
    params = report.params
    if name in params:
        return [name]
    for pname, info in report.graph.params.items():
        if name in info.aliases:
            return [pname]
    if any(ch in name for ch in "*?["):
        hits = [k for k in params if fnmatch.fnmatchcase(k, name)]
        if hits:
            return hits
    hits = [k for k in params if k.endswith("." + name)]
    if len(hits) == 1:
        return hits
    close = difflib.get_close_matches(name, list(params), n=5, cutoff=0.4)
    if len(hits) > 1:
        raise TensorprogError(f"parameter {name!r} is ambiguous: {', '.join(hits[:8])}. Give the "
                              "full name (or a pattern such as blocks.*.attn.query.weight).")
    names = ", ".join(close) if close else ", ".join(list(params)[:12])
    raise TensorprogError(f"no parameter {name!r} in this model. "
                          f"{'Did you mean' if close else 'Its parameters include'}: {names}.")


def _c0(report) -> dict:
    """The global LR exponent SP and NTK are matched with: the value of U - offset that the
    most parameter entries agree on (as analyze's classifier does); muP fixes it at 0."""
    from ..predict.analyze import expected

    votes: dict[str, dict] = {"SP": {}, "NTK": {}}
    for pv in report.params.values():
        numel = 1
        for s in pv.shape:
            numel *= s
        for u in pv.uses:
            if u.U is None or u.fan_in_exp is None or u.role == "unknown":
                continue
            for cls in votes:
                _, off = expected(cls, u.role, u.fan_in_exp, u.fan_out_exp or sp.Integer(0),
                                  report.optimizer)
                votes[cls][u.U - off] = votes[cls].get(u.U - off, 0) + numel
    out = {k: (max(v, key=v.get) if v else sp.Integer(0)) for k, v in votes.items()}
    out["muP"] = sp.Integer(0)
    return out


_ROLE_WHY = {
    "input": "it maps a finite dim to an infinite one (finite fan-in, infinite fan-out): an "
             "input weight, vector-like (TP5 Table 3: init 1/fan_in, like biases)",
    "hidden": "it maps an infinite dim to an infinite one: a hidden weight, matrix-like "
              "(TP5 Table 3)",
    "output": "it maps an infinite dim to a finite one (infinite fan-in, finite fan-out): an "
              "output (readout) weight (TP5 Table 3)",
    "vector": "it is used elementwise (a bias, a norm gain or shift) and has an infinite dim: "
              "vector-like, treated like an input weight with fan-in 1 (TP5 App B)",
    "scalar": "it has no infinite dim: scalar-like, constant in everything (TP5 App B)",
    "unknown": "the op that consumes it has no role rule; tensorprog cannot classify this use",
}


def rule_text(rule) -> str:
    """An init rule of ``analyze.expected`` in words: ("eq", 1/2) -> 'A = 1/2'."""
    kind, v = rule
    if kind == "eq":
        return f"A = {_e(v)}"
    if kind == "eq0":
        return f"A = {_e(v)} or zero init"
    if kind == "ge":
        return f"A >= {_e(v)}"
    if kind == "in" and isinstance(v, (tuple, list, set, frozenset)):
        vals = list(dict.fromkeys(v))
        text = f"A = {_e(vals[0])}" if len(vals) == 1 else "A in {" + ", ".join(_e(x) for x in vals) + "}"
        return text + " or zero init"
    return f"A {kind} {_e(v) if not isinstance(v, (tuple, list)) else _tup(v)}"


def update_text(offset, free: bool) -> str:
    """The update rule's right-hand side: '1', 'c0', '1/2 + c0'."""
    if not free:
        return _e(offset)
    return "c0" if offset == 0 else f"{_e(offset)} + c0"


def _dims_text(p, dims) -> str:
    if not dims:
        return "none"
    return ", ".join(f"dim {d} (~ {fmt(p.dims[d]) if p.dims[d] is not None else '?'})" for d in dims)


def explain_parameter(report, name: str, *, label: str | None = None,
                      markdown: bool = False) -> str:
    """Why ``report`` gives parameter ``name`` its role, classes and fix."""
    from ..predict.analyze import expected, init_ok

    hits = find_parameter(report, name)
    name = hits[0]
    pv = report.params[name]
    info = report.graph.params[name]
    graph = report.graph
    opt = report.optimizer
    sgd = opt == "sgd"
    widths = list(graph.widths)
    d = _Doc(markdown)
    d.title(f"Parameter {name}" + (f" of {label}" if label else ""))
    d.para(f"Traced at widths {', '.join(map(str, widths))}; optimizer class '{opt}'"
           + (f" (read from {graph.optimizer})" if graph.optimizer else
              " (no optimizer given: one global learning rate assumed)")
           + f". The model's verdict: {report.parametrization}, {report.regime}.")
    if len(hits) > 1:
        d.para(f"{len(hits)} parameters match {hits[0]!r}'s pattern; showing the first. The "
               f"others: {', '.join(hits[1:6])}{' ...' if len(hits) > 6 else ''}.")
    if info.aliases:
        d.para(f"It is tied: the same tensor is also named {', '.join(info.aliases)}.")

    # 1. shape
    d.step("Step 1. Shape and width exponents")
    rows = []
    for k, e in enumerate(info.dims):
        sizes = ", ".join(str(info.shapes[w][k]) for w in widths)
        kind = "finite" if e == 0 else "infinite" if e is not None and e > 0 else "no power law"
        rows.append([k, sizes, fmt(e) if e is not None else "?", kind])
    d.table(["dim", f"size at n = {', '.join(map(str, widths))}", "~", "kind"], rows)

    # 2. uses and role
    d.step("Step 2. How the graph uses it, and its role")
    d.para("The role comes from how an op consumes the parameter, not from the module type: "
           "the dims an op contracts are its fan-in, the dims that index the op's output its "
           "fan-out; a dim is infinite when its size grows with the width.")
    for k, (use, uv) in enumerate(zip(info.uses, pv.uses), start=1):
        module = graph.node(use.node)["module"] or "(top level)"
        if use.kind == "matrix":
            how = (f"contracted over {_dims_text(info, use.fan_in)} (fan-in ~ "
                   f"{fmt(uv.fan_in_exp)}); output indexed by {_dims_text(info, use.fan_out)} "
                   f"(fan-out ~ {fmt(uv.fan_out_exp)})")
            if use.op == "embedding":
                how = (f"an embedding lookup: rows picked by a token index over "
                       f"{_dims_text(info, use.fan_in)}, output along "
                       f"{_dims_text(info, use.fan_out)}")
        elif use.kind == "vector":
            how = f"used elementwise along {_dims_text(info, use.fan_out)}"
        else:
            how = "consumed by an op without a role rule"
        mult = "" if use.mult_exp == 0 else f"; scalar multiplier on this use ~ {fmt(use.mult_exp)}"
        d.bullets([f"use {k}: op `{use.op}` at node `{use.node}` (module `{module}`): {how}{mult}. "
                   f"Role {use.role}: {_ROLE_WHY.get(use.role, use.role)}."])

    # 3. measured exponents
    d.step("Step 3. The exponents measured across widths")
    rows = []
    if info.init_rms:
        iw = sorted(info.init_rms)
        rms = ", ".join(f"{info.init_rms[w]:.4g}" for w in iw)
        fit = f" (fitted slope {info.init_fit:.3f})" if info.init_fit is not None else ""
        b = "inf (zero init)" if pv.init_exp == "zero" else _e(-pv.init_exp) if pv.init_exp is not None else "?"
        rows.append(["init RMS", f"{rms} at n = {', '.join(map(str, iw))}",
                     fmt(pv.init_exp) + fit, f"b = {b}"])
    rows.append(["multiplier", "scalar factors in the graph on its primary use", fmt(pv.mult_exp),
                 f"a = {_e(-pv.mult_exp)}"])
    if info.lr:
        lrw = sorted(info.lr)
        lrs = ", ".join(f"{info.lr[w]:.4g}" for w in lrw)
        c = "no training" if pv.lr_exp == "zero" else _e(-pv.lr_exp) if pv.lr_exp is not None else "?"
        rows.append(["learning rate", f"{lrs} at n = {', '.join(map(str, lrw))}", fmt(pv.lr_exp),
                     f"c = {c}"])
    else:
        rows.append(["learning rate", "no optimizer read: one global LR", "1", "c = 0"])
    d.table(["quantity", "measured", "~ n^e", "TP4 exponent"], rows)

    # 4. invariants and the classes
    d.step("Step 4. The invariants, against each class's rule")
    d.para("The abc symmetry moves a, b, c together, so a parameter is judged by two invariants "
           "per use: A = a + b (the effective weight's entry size at init is n^{-A}; the use's "
           "own multiplier counts in a) and "
           + ("U = 2a + c (an SGD step moves the effective weight by n^{-U} times its gradient)."
              if sgd else "U = a + c (an Adam step moves the effective weight by n^{-U} per entry).")
           + " Each class fixes both as functions of the fan-in and fan-out exponents "
           "(tensorprog.analyze.expected); SP and NTK share one global LR exponent c0, which "
           "is the value most parameter entries agree with, muP fixes c0 = 0.")
    c0 = _c0(report)
    mismatch = []
    for k, uv in enumerate(pv.uses, start=1):
        if uv.role == "unknown" or uv.fan_in_exp is None:
            d.para(f"use {k} ({uv.op}): no rule applies (unknown role).")
            continue
        ai, ao = uv.fan_in_exp, uv.fan_out_exp or sp.Integer(0)
        d.para(f"use {k} ({uv.op}, role {uv.role}, fan-in ~ {fmt(ai)}, fan-out ~ {fmt(ao)}): "
               f"A = {_e(uv.A)}{' (zero init)' if uv.A == sp.oo else ''}, "
               f"U = {_e(uv.U) if uv.U is not None else '- (not trained)'}.")
        rows, matched = [], []
        for cls in ("muP", "SP", "NTK"):
            rule, off = expected(cls, uv.role, ai, ao, opt)
            init_is_ok = init_ok(rule, uv.A)
            want_u = off + c0[cls]
            upd_ok = uv.U is None or uv.U == want_u
            if init_is_ok and upd_ok:
                matched.append(cls)
            free = "" if cls == "muP" else f" (c0 = {_e(c0[cls])})"
            rows.append([cls, rule_text(rule), "ok" if init_is_ok else "no",
                         f"U = {update_text(off, cls != 'muP')}{free}",
                         "ok" if upd_ok else "no", "yes" if init_is_ok and upd_ok else "no"])
        d.table(["class", "init rule", "init", "update rule", "update", "matches"], rows)
        if set(matched) != set(uv.classes):
            mismatch.append(k)
    if mismatch:
        d.para(f"(note: for use {mismatch} this recomputation differs from analyze's classes "
               f"{pv.classes}; the report's classes are authoritative.)")
    d.para(f"Classes of this parameter (every use must match): {', '.join(pv.classes) or 'none'}.")

    # 5. r of its layer
    rs = [(uv, uv.r) for uv in pv.uses if uv.r is not None]
    if rs:
        d.step("Step 5. Its layer's r")
        for uv, r in rs:
            meaning = ("Theta(1): maximal, as muP wants for every layer" if r == 0 else
                       f"{fmt(-r)} -> 0: this layer barely moves (kernel-like)" if r > 0 else
                       f"{fmt(-r)}: it blows up; in an unstable model sizes compound from "
                       "step to step, so read the sign, not the size of this exponent")
            d.para(f"After {len(report.propagation.steps) - 1} steps the engine finds this "
                   f"layer's own update moving its output by {meaning} (r = {_e(r)}).")

    # 6. problems and fix
    modules = {graph.node(u.node)["module"] for u in info.uses}
    probs = [pr for pr in report.problems if pr.module in modules or pr.node in
             {u.node for u in info.uses}]
    d.step(f"Step {6 if rs else 5}. Problems at its ops, and the fix")
    if probs:
        d.bullets([f"{pr.module or pr.node}: {pr.what} {pr.when} (~ {fmt(pr.exponent)})"
                   for pr in probs])
    else:
        d.para("No problem reported at the ops that use it.")
    if pv.fixes:
        d.bullets([f"fix: {f}" for f in pv.fixes])
    elif "muP" in pv.classes:
        d.para("No fix needed: it already follows muP (TP5 Table 3, or an equivalent form under "
               "the abc symmetry).")
    elif not pv.trainable:
        d.para("It is not trained, so no learning-rate rule applies.")
    return d.render()
