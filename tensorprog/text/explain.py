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

import sympy as sp

from ..errors import TensorprogError
from ..exponents import fmt

__all__ = ["explain_abc", "explain_preset", "explain_parameter", "find_parameter", "rule_text",
           "update_text", "THEORY_TARGETS"]



from .doc import Doc, expr, tup
from .explain_abc import THEORY_TARGETS, explain_abc, explain_preset


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
    from ..predict.classes import expected

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
        return f"A = {expr(v)}"
    if kind == "eq0":
        return f"A = {expr(v)} or zero init"
    if kind == "ge":
        return f"A >= {expr(v)}"
    if kind == "in" and isinstance(v, (tuple, list, set, frozenset)):
        vals = list(dict.fromkeys(v))
        text = f"A = {expr(vals[0])}" if len(vals) == 1 else "A in {" + ", ".join(expr(x) for x in vals) + "}"
        return text + " or zero init"
    return f"A {kind} {expr(v) if not isinstance(v, (tuple, list)) else tup(v)}"


def update_text(offset, free: bool) -> str:
    """The update rule's right-hand side: '1', 'c0', '1/2 + c0'."""
    if not free:
        return expr(offset)
    return "c0" if offset == 0 else f"{expr(offset)} + c0"


def _dims_text(p, dims) -> str:
    if not dims:
        return "none"
    return ", ".join(f"dim {d} (~ {fmt(p.dims[d]) if p.dims[d] is not None else '?'})" for d in dims)


def explain_parameter(report, name: str, *, label: str | None = None,
                      markdown: bool = False) -> str:
    """Why ``report`` gives parameter ``name`` its role, classes and fix."""
    from ..predict.classes import expected, init_ok

    hits = find_parameter(report, name)
    name = hits[0]
    pv = report.params[name]
    info = report.graph.params[name]
    graph = report.graph
    opt = report.optimizer
    sgd = opt == "sgd"
    widths = list(graph.widths)
    d = Doc(markdown)
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
        b = "inf (zero init)" if pv.init_exp == "zero" else expr(-pv.init_exp) if pv.init_exp is not None else "?"
        rows.append(["init RMS", f"{rms} at n = {', '.join(map(str, iw))}",
                     fmt(pv.init_exp) + fit, f"b = {b}"])
    rows.append(["multiplier", "scalar factors in the graph on its primary use", fmt(pv.mult_exp),
                 f"a = {expr(-pv.mult_exp)}"])
    if info.lr:
        lrw = sorted(info.lr)
        lrs = ", ".join(f"{info.lr[w]:.4g}" for w in lrw)
        c = "no training" if pv.lr_exp == "zero" else expr(-pv.lr_exp) if pv.lr_exp is not None else "?"
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
           "(tensorprog.analyze.expected). SP and NTK each leave one global learning-rate "
           "exponent c0 free (the same for every parameter of the model, but not the same "
           "for SP as for NTK): c0 below is, per class, the value most parameter entries "
           "agree with; muP fixes c0 = 0.")
    c0 = _c0(report)
    mismatch = []
    for k, uv in enumerate(pv.uses, start=1):
        if uv.role == "unknown" or uv.fan_in_exp is None:
            d.para(f"use {k} ({uv.op}): no rule applies (unknown role).")
            continue
        ai, ao = uv.fan_in_exp, uv.fan_out_exp or sp.Integer(0)
        d.para(f"use {k} ({uv.op}, role {uv.role}, fan-in ~ {fmt(ai)}, fan-out ~ {fmt(ao)}): "
               f"A = {expr(uv.A)}{' (zero init)' if uv.A == sp.oo else ''}, "
               f"U = {expr(uv.U) if uv.U is not None else '- (not trained)'}.")
        rows, matched = [], []
        for cls in ("muP", "SP", "NTK"):
            rule, off = expected(cls, uv.role, ai, ao, opt)
            init_is_ok = init_ok(rule, uv.A)
            want_u = off + c0[cls]
            upd_ok = uv.U is None or uv.U == want_u
            if init_is_ok and upd_ok:
                matched.append(cls)
            free = "" if cls == "muP" else f" (c0 = {expr(c0[cls])})"
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
                   f"layer's own update moving its output by {meaning} (r = {expr(r)}).")

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
        d.bullets([f"fix: {f}" if len(pv.fixes) == 1 else
                   f"fix, alternative {k + 1} of {len(pv.fixes)} (all its changes together): {f}"
                   for k, f in enumerate(pv.fixes)])
    elif "muP" in pv.classes:
        d.para("No fix needed: it already follows muP (TP5 Table 3, or an equivalent form under "
               "the abc symmetry).")
    elif not pv.trainable:
        d.para("It is not trained, so no learning-rate rule applies.")
    return d.render()
