"""``tensorprog analyze``: trace at several widths and print the verdict."""
from __future__ import annotations

import sys

from ..errors import TensorprogError
from .depth import add_depth_arguments, run_analyze as run_depth, wants_depth
from .load import common_arguments, load_target


def add_arguments(p) -> None:
    common_arguments(p)
    p.add_argument("--lr-rule", nargs="+", metavar="ROLE=EXP",
                   help="learning rate ~ n^EXP per role instead of reading an optimizer")
    p.add_argument("--alignment", default="tp", choices=["tp", "everett", "full", "none"],
                   help="tp (default), full (= everett: Everett et al. 2024 full alignment) or none")
    p.add_argument("--device", default="cpu", help="cpu, or meta to trace without weights")
    add_depth_arguments(p)


def parse_lr_rule(items):
    """['hidden=-1', 'output=-1'] -> {'hidden': -1, 'output': -1} (LR ~ n^exp per role)."""
    from ..theory.parse import parse_exponent

    out = {}
    for item in items or ():
        role, _, exp = item.partition("=")
        if role not in ("input", "hidden", "output", "vector", "scalar") or not exp:
            raise TensorprogError(f"--lr-rule {item!r}: write ROLE=EXPONENT with ROLE in input, "
                                  "hidden, output, vector, scalar (e.g. hidden=-1 for LR ~ 1/width).")
        try:
            out[role] = parse_exponent(exp, f"--lr-rule {role}", symbols=False)
        except TensorprogError:
            raise TensorprogError(f"--lr-rule {item!r}: {exp!r} is not a number; write e.g. "
                                  "hidden=-1 or output=-1/2.") from None
    return out


def run(args) -> int:
    from ..graph.trace import trace
    from ..predict.analyze import analyze

    if wants_depth(args):
        return run_depth(args)
    lr_rule = parse_lr_rule(args.lr_rule)  # bad input fails before the (slow) trace
    t = load_target(args)
    widths = tuple(args.widths or t.widths)
    graph = trace(t.factory, widths, example_inputs=t.example_inputs,
                  make_optimizer=None if lr_rule else t.make_optimizer,
                  device=args.device, progress=True)
    for name, p in graph.params.items():
        rule = lr_rule.get(p.role.split("+")[0])
        if rule is not None:
            p.lr_exp = rule
    report = analyze(graph, optimizer=args.optimizer if graph.optimizer is None else None,
                     alignment=args.alignment)
    print(report)
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
