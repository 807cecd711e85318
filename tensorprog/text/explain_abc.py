"""``explain_abc`` / ``explain_preset``: the closed-form theory of the L-hidden-layer MLP
(``theory.ABC``) step by step: the parametrization and its invariants, the symmetry's canonical
form, r with symbols and with numbers, every theorem condition of ``ABC.why()`` and the verdict."""
from __future__ import annotations

from typing import Any

import sympy as sp

from ..errors import TensorprogError
from ..exponents import fmt
from ..theory.parse import parse_exponent

from .doc import Doc, expr, holds, tup

THEORY_TARGETS = ("mlp",)


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
    return ABC(a, b, c, p.optimizer, p.alignment, p.geometry, p.adjust_lr_fn)


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

    d = Doc(markdown)
    sgd = p.optimizer == "sgd"
    L = p.L
    opt = ("the update is linear in the gradient; TP4" if sgd else
           "the update is an entrywise, scale-invariant function of the gradient; TP4b, "
           "eps -> 0")
    d.title(f"Derivation: {label or 'abc-parametrization'}, MLP with L = {L} hidden "
            f"layer{'s' if L > 1 else ''}")
    d.para(f"Optimizer class: {p.optimizer} ({opt}). n is the width.")
    from ..theory.updates import alignment_name

    align = alignment_name(p.alignment, L)
    if p.geometry not in ("gradient", "entrywise") or align != "tp":
        d.para(f"Update geometry {p.geometry}, alignment {align or tup(p.alignment)}: the "
               "formulas below are TP's; the numbers use dW_l's entry size n^{-d_l} of this "
               "geometry and r_l = d_l - alpha_l f_l (Everett et al. 2024, arXiv 2407.05872; "
               "tensorprog.theory.updates).")

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
        rows.append([i + 1, _layer_kind(i + 1, L), expr(p.a[i]), expr(p.b[i]), expr(cs[i]),
                     expr(p.a[i] + p.b[i]), expr(U)])
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
        d.para(f"Canonical representative (a_1 = 0, shift t = {expr(-p.a[0])}):")
        d.formulas([f"a = {tup(can.a)}", f"b = {tup(can.b)}",
                    f"c = {tup(can.c) if isinstance(can.c, tuple) else expr(can.c)}"])
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
    d.formulas([f"r_{i + 1} = {expr(x)}" for i, x in enumerate(sym.r_layers)]
               + [f"r   = min({', '.join(f'r_{i + 1}' for i in range(L))})"])
    d.para("With numbers:")
    lines = []
    if sgd:
        A, Ur = p.readout_init, 2 * p.a[-1] + cs[-1]
        lines.append(f"readout term min(a_{{L+1}} + b_{{L+1}}, 2 a_{{L+1}} + {cL}) = "
                     f"min({expr(A)}, {expr(Ur)}) = {expr(sp.Min(A, Ur))}")
    lines += [f"r_{i + 1} = {expr(x)}" for i, x in enumerate(p.r_layers)]
    lines.append(f"r   = min({', '.join(expr(x) for x in p.r_layers)}) = {expr(p.r)}"
                 if L > 1 else f"r   = r_1 = {expr(p.r)}")
    d.formulas(lines)

    # 4. the conditions
    d.step("Step 4. The theorem conditions")
    d.para("Stable needs every 'stable (init)' and 'stable' row. Nontrivial needs stable and "
           "either 'nontrivial' row. Feature learning is stable with r = 0; the kernel regime "
           "is nontrivial with r > 0.")
    why = p.why()
    d.table(["group", "condition", "value", "holds", "source"],
            [[c.name, c.expression_text, expr(c.value), holds(c.holds), c.source] for c in why])
    stable_fail = [c for c in why if c.name.startswith("stable") and c.holds is False]
    verdicts = [
        f"stable: {holds(p.stable)}" + (f" (fails: {'; '.join(c.expression_text for c in stable_fail)})"
                                        if stable_fail else ""),
        f"nontrivial: {holds(p.nontrivial)}",
        f"feature learning (r = 0): {holds(p.feature_learning)}",
        f"kernel regime (r > 0): {holds(p.kernel_regime)}",
    ]
    d.bullets(verdicts)

    # 5. verdict
    d.step("Step 5. Verdict")
    regime = p.regime
    d.formulas([f"=> {regime}   (r = {expr(p.r)})"])
    A = p.readout_init
    if regime == "unstable":
        try:
            cstar = max_stable_lr_exponent(p.a, p.b, p.geometry, alignment=p.alignment,
                                           adjust_lr_fn=p.adjust_lr_fn)
            d.para("Some coordinate grows without bound as n -> infinity. With this a and b the "
                   f"largest stable global learning rate is n^{{-c*}} with c* = {expr(cstar)} "
                   "(theory.max_stable_lr_exponent).")
        except TheoryError as e:
            d.para(f"Some coordinate grows without bound as n -> infinity, and {e}.")
    elif regime == "trivial":
        d.para("Stable, but in the limit the function does not move: f_t = f_0 (TP4 Thm 3.4). "
               "The learning rates are too small for this width scaling.")
    elif regime == "kernel":
        d.para(f"Stable and nontrivial with r = {expr(p.r)} > 0: the features move by "
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
        size = ("exactly 0 (zero readout init)" if A == sp.oo else
                f"Theta({fmt(sp.Rational(1, 2) - A)})")
        d.para(f"At init the output is {size} "
               f"(a_{{L+1}} + b_{{L+1}} = {expr(A)})"
               + (": it vanishes in the limit, as in every feature-learning parametrization "
                  "(TP4 Cor 3.10)." if sp.Rational(1, 2) < A < sp.oo else "."))
    return d.render()


def explain_preset(name: str | None = None, L: int | None = None, optimizer: Any = "sgd", *,
                   a=None, b=None, c=None, lr_exponent=None, markdown: bool = False,
                   alignment: Any = "tp") -> str:
    """Build the ABC from a preset name or from a, b (and c or lr_exponent), then explain it.

    ``lr_exponent``: learning rate ~ n^{lr_exponent}, i.e. c = -lr_exponent (one value or one
    per layer). ``c``: TP4's c directly. ``optimizer`` may name a geometry's optimizer (muon,
    adafactor); ``alignment``: "tp", "full", "none" (``theory.ABC``). Bad input raises
    ``TensorprogError``.
    """
    import dataclasses

    from ..theory.abc import ABC, optimizer_class, preset

    def listify(x):
        if x is None:
            return None
        return x if isinstance(x, (list, tuple)) else [x]

    if c is not None and lr_exponent is not None:
        raise TensorprogError("give either c (learning rate n^{-c}) or lr_exponent "
                              "(learning rate n^{E}), not both")
    cval = listify(c)
    if lr_exponent is not None:
        cval = [-(parse_exponent(x, 'lr_exponent') if isinstance(x, str) else sp.sympify(x, strict=True))
                for x in listify(lr_exponent)]
    if cval is not None and len(cval) == 1:
        cval = cval[0]
    if L is not None and (isinstance(L, bool) or not isinstance(L, int) or L < 1):
        raise TensorprogError(f"--layers must be an integer >= 1, got {L!r}")
    if name is not None:
        if a is not None or b is not None:
            raise TensorprogError("give either a preset or --a/--b, not both")
        p = preset(name, 2 if L is None else L, optimizer_class(optimizer), c=cval)
        p = dataclasses.replace(p, optimizer=optimizer, alignment=alignment, geometry=None)
        label = f"{name} preset" if cval is None else f"{name} preset with c = {_cval(cval)}"
    else:
        if a is None or b is None:
            raise TensorprogError("give a preset (--preset SP|NTK|muP|MF) or both --a and --b "
                                  "(one exponent per layer: input, hidden..., readout)")
        if L is not None and len(a) != L + 1:
            raise TensorprogError(f"--layers {L} needs L + 1 = {L + 1} values for --a and --b; "
                                  f"got {len(a)}")
        p = ABC(a, b, 0 if cval is None else cval, optimizer, alignment)
        label = "abc-parametrization"
    return explain_abc(p, label=label, markdown=markdown)


def _cval(c) -> str:
    return tup(c) if isinstance(c, (list, tuple)) else expr(
        parse_exponent(c, 'c') if isinstance(c, str) else sp.sympify(c, strict=True))
