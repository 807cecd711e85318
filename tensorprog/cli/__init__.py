"""Command line: ``tensorprog analyze | check | trace | explain`` on a zoo example or ``FILE.py:factory``.

A user file names a factory ``width -> nn.Module``; it may also define ``example_inputs``
(a tuple, or a callable ``width -> tuple``), ``make_optimizer(model)`` and ``loss(out, inputs)``,
which are picked up by name (override with --inputs / --make-optimizer / --loss).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TensorprogError


@dataclass
class Target:
    """What the commands run on: a factory and its companions."""

    label: str
    factory: Callable
    example_inputs: Any
    make_optimizer: Callable | None
    loss: Callable | None
    widths: tuple[int, ...]


def load_target(args) -> Target:
    """A zoo example (--example) or a FILE.py:factory spec."""
    if getattr(args, "example", None):
        from ..zoo import example

        try:
            ex = example(args.example, param=args.param, optimizer=args.optimizer or "adam")
        except ValueError as e:
            raise TensorprogError(str(e)) from None
        return Target(ex.name, ex.factory, ex.example_inputs, ex.make_optimizer, ex.loss, ex.widths)
    if not getattr(args, "target", None):
        raise TensorprogError("name a model: FILE.py:factory, or --example mlp|cnn|gpt.")
    path, _, name = args.target.partition(":")
    if not name:
        raise TensorprogError(
            f"{args.target!r} names no factory: write FILE.py:factory (the function width -> model).")
    module = _load_file(path)
    factory = _attr(module, name, path, "factory")
    inputs = _attr(module, args.inputs, path, "--inputs") if args.inputs else getattr(module, "example_inputs", None)
    opt = (_attr(module, args.make_optimizer, path, "--make-optimizer") if args.make_optimizer
           else getattr(module, "make_optimizer", None))
    loss = _attr(module, args.loss, path, "--loss") if getattr(args, "loss", None) else getattr(module, "loss", None)
    return Target(args.target, factory, inputs, opt, loss, (64, 128, 256))


def _load_file(path):
    if not os.path.isfile(path):
        raise TensorprogError(f"no such file: {path!r}. Give the path of a Python file that defines "
                              "the model factory, e.g. models/my_net.py:make_model.")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise TensorprogError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.pop(0)
    return module


def _attr(module, name, path, what):
    if not hasattr(module, name):
        names = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")]
        raise TensorprogError(f"{path} has no {name!r} ({what}); callables there: {', '.join(names[:12])}.")
    return getattr(module, name)


def _common(p: argparse.ArgumentParser):
    p.add_argument("target", nargs="?", help="FILE.py:factory (factory: width -> nn.Module)")
    p.add_argument("--example", help="a built-in model instead: mlp, cnn or gpt")
    p.add_argument("--param", default="mup", help="zoo parametrization: sp, ntk, mup, mup_table8")
    p.add_argument("--widths", type=int, nargs="+", help="widths to trace (default 64 128 256)")
    p.add_argument("--optimizer", help="sgd | adam | adamw (zoo), or the class for a plain global LR")
    p.add_argument("--inputs", help="name of example_inputs in FILE (tuple or width -> tuple)")
    p.add_argument("--make-optimizer", help="name of make_optimizer(model) in FILE")
    p.add_argument("--json", help="write the result as JSON here")


def _parse_lr_rule(items):
    """['hidden=-1', 'output=-1'] -> {'hidden': -1, 'output': -1} (LR ~ n^exp per role)."""
    import sympy as sp

    out = {}
    for item in items or ():
        role, _, exp = item.partition("=")
        if role not in ("input", "hidden", "output", "vector", "scalar") or not exp:
            raise TensorprogError(f"--lr-rule {item!r}: write ROLE=EXPONENT with ROLE in input, "
                                  "hidden, output, vector, scalar (e.g. hidden=-1 for LR ~ 1/width).")
        try:
            out[role] = sp.Rational(exp)
        except (TypeError, ValueError):
            raise TensorprogError(f"--lr-rule {item!r}: {exp!r} is not a number; write e.g. "
                                  "hidden=-1 or output=-1/2.") from None
    return out


def cmd_analyze(args) -> int:
    from ..predict.analyze import analyze
    from ..graph.trace import trace

    lr_rule = _parse_lr_rule(args.lr_rule)  # bad input fails before the (slow) trace
    t = load_target(args)
    widths = tuple(args.widths or t.widths)
    graph = trace(t.factory, widths, example_inputs=t.example_inputs,
                  make_optimizer=None if lr_rule else t.make_optimizer,
                  device=args.device, verbose=True)
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


def cmd_trace(args) -> int:
    from ..graph.trace import trace

    t = load_target(args)
    graph = trace(t.factory, tuple(args.widths or t.widths), example_inputs=t.example_inputs,
                  make_optimizer=t.make_optimizer, device=args.device, verbose=True)
    for name, p in graph.params.items():
        print(f"{name:50s} {p.role:14s} dims {[str(d) for d in p.dims]} fan_in {list(p.fan_in)} "
              f"init {p.init_exp} mult {p.mult_exp} lr {p.lr_exp}")
    if args.json:
        graph.to_json(args.json)
    if args.dot:
        graph.to_dot(args.dot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorprog", description="Tensor Programs calculator: is your model muP, SP or NTK?")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="trace at several widths and give the verdict")
    _common(p)
    p.add_argument("--lr-rule", nargs="+", metavar="ROLE=EXP",
                   help="learning rate ~ n^EXP per role instead of reading an optimizer")
    p.add_argument("--alignment", default="tp", choices=["tp", "everett"],
                   help="tp (default) or everett")
    p.add_argument("--device", default="cpu", help="cpu, or meta to trace without weights")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("trace", help="print the width-annotated parameters; --json/--dot export")
    _common(p)
    p.add_argument("--dot", help="write Graphviz DOT here")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_trace)

    from ..text.explain import add_cli_arguments as explain_arguments, cli_main as explain_main

    p = sub.add_parser("explain", help="derive a verdict step by step: the MLP theory "
                                       "(explain mlp --preset muP) or one parameter of a model")
    explain_arguments(p)
    p.set_defaults(func=explain_main)

    from ..transform.rules import add_cli_arguments as rules_arguments, cli_main as rules_main

    p = sub.add_parser("rules", help="derive the muP init, multiplier and LR of every parameter")
    rules_arguments(p)
    p.set_defaults(func=rules_main)

    try:
        from ..measure.check import add_cli_arguments, cli_main
    except ImportError:
        pass
    else:
        p = sub.add_parser("check", help="train at growing widths and test every prediction")
        add_cli_arguments(p)
        p.set_defaults(func=cli_main)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except TensorprogError as e:
        print(f"tensorprog: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
