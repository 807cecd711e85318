"""``tensorprog trace``: print the width-annotated parameters; --json / --dot export the graph."""
from __future__ import annotations

from .load import common_arguments, load_target


def add_arguments(p) -> None:
    common_arguments(p)
    p.add_argument("--dot", help="write Graphviz DOT here")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from ..graph.trace import trace

    t = load_target(args)
    graph = trace(t.factory, tuple(args.widths or t.widths), example_inputs=t.example_inputs,
                  make_optimizer=t.make_optimizer, device=args.device, progress=True)
    for name, p in graph.params.items():
        print(f"{name:50s} {p.role:14s} dims {[str(d) for d in p.dims]} fan_in {list(p.fan_in)} "
              f"init {p.init_exp} mult {p.mult_exp} lr {p.lr_exp}")
    if args.json:
        graph.to_json(args.json)
    if args.dot:
        graph.to_dot(args.dot)
    return 0
