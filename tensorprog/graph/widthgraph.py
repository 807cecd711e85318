"""The traced program as plain data: a networkx graph whose nodes carry width exponents, and one
record per parameter (TP4's abc exponents, fan-in and fan-out, role).

Sign convention everywhere: an ``*_exp`` is the exponent e of the quantity ~ n^e, so the abc of
TP4 are a = -mult_exp, b = -init_exp, c = -lr_exp.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import networkx as nx
import sympy as sp
import torch

from ..jsonio import JSONMixin, jsonable

# ----------------------------------------------------------------------------- records


@dataclass
class ParamUse:
    """One place where the graph consumes a parameter."""

    node: str  # the consuming op node
    op: str  # its short op name, e.g. "linear"
    kind: str  # "matrix" (contracted), "vector" (elementwise / norm gain / bias), "unknown"
    fan_in: tuple[int, ...]  # parameter dims that the op contracts
    fan_out: tuple[int, ...]  # parameter dims that index the op's output
    role: str  # input / hidden / output / vector / scalar / unknown
    mult_exp: Any  # width exponent of the scalar multipliers on this use (TP4's -a)
    pos: str | None = None  # argument position through which the parameter enters the op


@dataclass
class ParamInfo:
    """Everything tensorprog knows about one parameter (a tied parameter appears once)."""

    name: str
    node: str  # its placeholder node in the graph
    shapes: dict[int, tuple[int, ...]]
    dims: tuple  # width exponent of each dim
    trainable: bool
    uses: list[ParamUse] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # other names of a tied parameter
    nodes: list[str] = field(default_factory=list)  # all placeholders (one per alias in export)
    init_rms: dict[int, float] = field(default_factory=dict)
    init_mean: dict[int, float] = field(default_factory=dict)
    init_exp: Any = None  # RMS ~ n^init_exp (= -b); "zero" when zero-initialised
    init_fit: float | None = None  # the raw least-squares slope behind init_exp
    lr: dict[int, float] = field(default_factory=dict)
    lr_exp: Any = None  # learning rate ~ n^lr_exp (= -c); None without an optimizer
    weight_decay: dict[int, float] = field(default_factory=dict)
    wd_exp: Any = None
    eps: dict[int, float] = field(default_factory=dict)  # Adam-like eps per width (when set)
    eps_exp: Any = None  # eps ~ n^eps_exp; "zero" when eps = 0; None when not read
    grad_rms: dict[int, float] = field(default_factory=dict)  # RMS loss gradient (eps's scale)
    step: Any = None  # the optimizer's update for this parameter (graph.optimizers.Step)
    zero_blocks: dict = field(default_factory=dict)  # {dim: (blocks, [zero block indices])}

    @property
    def primary(self) -> ParamUse | None:
        return self.uses[0] if self.uses else None

    @property
    def role(self) -> str:
        roles = list(dict.fromkeys(u.role for u in self.uses))
        return "+".join(roles) if roles else "unused"

    @property
    def fan_in(self) -> tuple[int, ...]:
        return self.primary.fan_in if self.primary else ()

    @property
    def fan_out(self) -> tuple[int, ...]:
        return self.primary.fan_out if self.primary else ()

    def dims_exp(self, dims: Sequence[int]):
        """Width exponent of the product of ``dims`` (fan_in or fan_out); None if unknown."""
        vals = [self.dims[d] for d in dims]
        return None if any(v is None for v in vals) else sp.Add(*vals, evaluate=True) + 0

    @property
    def fan_in_exp(self):
        return self.dims_exp(self.fan_in)

    @property
    def fan_out_exp(self):
        return self.dims_exp(self.fan_out)

    @property
    def mult_exp(self):
        return self.primary.mult_exp if self.primary else sp.Integer(0)


@dataclass
class WidthGraph(JSONMixin):
    """The traced program, annotated with width exponents.

    ``nx`` is a networkx MultiDiGraph: one node per ATen node (attributes: ``kind``, ``op``,
    ``target``, ``module``, ``shapes``, ``dims``, ``scalars``, ``param``/``buffer``/``input``),
    one edge per tensor argument (attribute ``pos``: the argument position).
    """

    nx: nx.MultiDiGraph
    params: dict[str, ParamInfo]
    widths: tuple[int, ...]
    order: list[str]
    programs: dict[int, Any] = field(default_factory=dict, repr=False)
    optimizer: str | None = None
    warnings: list[str] = field(default_factory=list)

    def node(self, name: str) -> dict:
        return self.nx.nodes[name]

    def inputs(self, name: str) -> list[str]:
        """Tensor inputs of a node, in argument order."""
        edges = sorted(self.nx.in_edges(name, data=True), key=lambda e: e[2]["order"])
        return [u for u, _, _ in edges]

    def unknown_power_laws(self) -> list[str]:
        return [n for n in self.order if any(d is None for d in (self.node(n)["dims"] or ()))]

    # ---------------------------------------------------------------- export

    def to_dict(self) -> dict:
        """Plain JSON-able data: exponents as strings ("1/2"), None as null."""
        def node_dict(name):
            a = self.node(name)
            return {
                "name": name, "kind": a["kind"], "op": a["op"], "target": a["target"],
                "module": a["module"], "shapes": {str(w): s for w, s in a["shapes"].items()},
                "dims": jsonable(a["dims"]), "scalars": jsonable(a["scalars"]),
                "param": a.get("param"), "buffer": a.get("buffer"), "input": a.get("input"),
                "inputs": self.inputs(name), "args": jsonable(a["args"]),
            }

        def param_dict(p: ParamInfo):
            return {
                "name": p.name, "node": p.node, "shape": p.shapes[self.widths[-1]],
                "dims": jsonable(p.dims), "role": p.role, "trainable": p.trainable,
                "fan_in": list(p.fan_in), "fan_out": list(p.fan_out),
                "fan_in_exp": jsonable(p.fan_in_exp), "fan_out_exp": jsonable(p.fan_out_exp),
                "init_exp": jsonable(p.init_exp), "init_fit": p.init_fit,
                "init_rms": {str(w): v for w, v in p.init_rms.items()},
                "mult_exp": jsonable(p.mult_exp), "lr_exp": jsonable(p.lr_exp),
                "lr": {str(w): v for w, v in p.lr.items()}, "wd_exp": jsonable(p.wd_exp),
                "eps_exp": jsonable(p.eps_exp),
                "uses": [{"node": u.node, "op": u.op, "kind": u.kind, "role": u.role,
                          "fan_in": list(u.fan_in), "fan_out": list(u.fan_out),
                          "mult_exp": jsonable(u.mult_exp)} for u in p.uses],
            }

        return {
            "widths": list(self.widths), "optimizer": self.optimizer, "warnings": self.warnings,
            "nodes": [node_dict(n) for n in self.order],
            "params": {k: param_dict(p) for k, p in self.params.items()},
        }

    def to_dot(self, path: str | None = None) -> str:
        """Graphviz DOT: nodes labelled with op and dim exponents; parameters as boxes."""
        lines = ["digraph tensorprog {", "  rankdir=TB; node [fontsize=10];"]
        for n in self.order:
            a = self.node(n)
            dims = "[" + ", ".join("?" if d is None else str(d) for d in (a["dims"] or ())) + "]"
            label = f"{a.get('param') or n}\\n{a['op']} {dims}"
            shape = "box" if a.get("param") else "ellipse"
            lines.append(f'  "{n}" [label="{label}", shape={shape}];')
        for u, v, d in self.nx.edges(data=True):
            lines.append(f'  "{u}" -> "{v}" [label="{d["pos"]}"];')
        lines.append("}")
        text = "\n".join(lines)
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text




# ----------------------------------------------------------------------------- op vocabulary


def short_op(target) -> str:
    """'aten.linear.default' -> 'linear', 'transformers.grouped_mm_fallback.default' ->
    'grouped_mm_fallback' (any op namespace); builtins keep their name ('getitem')."""
    name = getattr(target, "__name__", None) if not isinstance(target, str) else target
    s = str(target)
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) or s.startswith("aten."):
        parts = s.replace("torch.ops.", "").split(".")
        return parts[1] if len(parts) > 1 else parts[0]
    return name or s


