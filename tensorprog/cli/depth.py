"""Depth on the command line: ``analyze`` and ``check`` with ``--depths`` trace / train a factory
``(width, depth) -> nn.Module`` at one width and growing depths (TP6, arXiv 2310.02244;
CompleteP, arXiv 2505.01618) instead of growing widths.

::

    tensorprog analyze --example resmlp --depth-form completep --depths 2 4 8 --json d.json
    tensorprog check --example gpt --depth-form depth_mup --depths 2 4 8 16 32 --plot d.png
    tensorprog analyze my_net.py:make_model --depths 2 4 8 --width 64

A file's factory takes (width, depth); ``example_inputs``, ``make_optimizer`` and ``loss`` are
picked up by name as for width (``cli/load.py``). The zoo's depth examples are ``resmlp`` and
``gpt`` in the depth forms standard, depth_mup and completep (``zoo.depth_example``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TensorprogError
from .load import load_target, write_check

__all__ = ["add_depth_arguments", "wants_depth", "run_analyze", "run_check"]

DEPTH_EXAMPLES = ("resmlp", "gpt")
DEPTH_FORMS = ("standard", "depth_mup", "completep")


def add_depth_arguments(p, check: bool = False) -> None:
    """--depths, --width, --depth-form (and, for analyze, --family / --base-depth)."""
    g = p.add_argument_group("depth (a factory (width, depth); TP6 / CompleteP)")
    g.add_argument("--depths", nargs="+", metavar="L",
                   help="scale depth instead of width: the block counts to "
                        f"{'train' if check else 'trace'} at (e.g. 2 4 8{' 16 32' * check})")
    g.add_argument("--width", type=int, help="the fixed width of a depth run (default: the "
                   f"example's, {32 if check else 64} for a file)")
    g.add_argument("--depth-form", dest="depth_form", choices=DEPTH_FORMS,
                   help="zoo depth example (--example resmlp | gpt) in this form (default standard)")
    if not check:
        g.add_argument("--family", choices=("completep", "depth_mup"),
                       help="the family the fix aims at (default: the model's own, else completep)")
        g.add_argument("--base-depth", dest="base_depth", type=int,
                       help="L0 of the fix's factors (default: the smallest depth)")


def wants_depth(args) -> bool:
    """Whether the command runs in depth: --depths given (the other depth options need it)."""
    if getattr(args, "depths", None):
        return True
    given = [f for f, d in (("--width", "width"), ("--depth-form", "depth_form"),
                            ("--family", "family"), ("--base-depth", "base_depth"))
             if getattr(args, d, None) is not None]
    if given:
        raise TensorprogError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a "
                              "depth run: add --depths, e.g. --depths 2 4 8.")
    if getattr(args, "example", None) == "resmlp":
        raise TensorprogError("resmlp is a depth example: add --depths, e.g. --depths 2 4 8.")
    return False


@dataclass
class DepthTarget:
    label: str
    factory: Callable
    example_inputs: Any
    make_optimizer: Callable | None
    loss: Callable | None
    width: int


def _depths(items) -> list[int]:
    try:
        ds = [int(x) for item in items for x in str(item).replace(",", " ").split()]
    except ValueError:
        raise TensorprogError(f"--depths must be integers (e.g. --depths 2 4 8), got "
                              f"{' '.join(items)!r}.") from None
    if len(set(ds)) < 2 or min(ds) < 1:
        raise TensorprogError(f"--depths: give two or more distinct positive block counts, e.g. "
                              f"--depths 2 4 8 (got {' '.join(items)}).")
    return sorted(set(ds))


def _refuse_width_options(args) -> None:
    if getattr(args, "widths", None):
        raise TensorprogError("--depths runs at one width: give --width N, not --widths.")
    if getattr(args, "lr_rule", None):
        raise TensorprogError("--lr-rule sets width exponents; it does not apply with --depths.")
    device = getattr(args, "device", None)
    if device not in (None, "cpu", "auto"):
        raise TensorprogError(f"--device {device}: depth runs are on the CPU; drop --device.")
    if args.width is not None and args.width < 1:
        raise TensorprogError(f"--width must be a positive integer, got {args.width}.")


def load_depth_target(args, default_width: int) -> DepthTarget:
    """The zoo depth example (--example resmlp | gpt, --depth-form) or FILE.py:factory."""
    if getattr(args, "example", None):
        from ..zoo import depth_example

        if args.example not in DEPTH_EXAMPLES:
            raise TensorprogError(f"--example {args.example} has no depth form; the depth "
                                  f"examples are {', '.join(DEPTH_EXAMPLES)} (or give "
                                  "FILE.py:factory with a factory (width, depth)).")
        try:
            ex = depth_example(args.example, args.depth_form or "standard", param=args.param,
                               optimizer=args.optimizer or "adam", lr=getattr(args, "lr", None))
        except ValueError as e:
            raise TensorprogError(str(e)) from None
        return DepthTarget(ex.name, ex.factory, ex.example_inputs, ex.make_optimizer, ex.loss,
                           args.width or ex.width)
    if args.depth_form:
        raise TensorprogError("--depth-form chooses a zoo depth example: use it with --example "
                              "resmlp | gpt (a file's factory sets its own depth factors).")
    t = load_target(args)
    return DepthTarget(t.label, t.factory, t.example_inputs, t.make_optimizer, t.loss,
                       args.width or default_width)


def run_analyze(args) -> int:
    """``tensorprog analyze --depths ...``: ``predict.depth.analyze_depth``'s report."""
    from ..predict.depth import analyze_depth

    _refuse_width_options(args)
    depths = _depths(args.depths)
    if args.base_depth is not None and args.base_depth < 1:
        raise TensorprogError(f"--base-depth must be a positive integer, got {args.base_depth}.")
    t = load_depth_target(args, 64)
    print(f"[tensorprog] tracing {t.label} at width {t.width}, depths {depths}", file=sys.stderr)
    report = analyze_depth(t.factory, depths, width=t.width, example_inputs=t.example_inputs,
                           make_optimizer=t.make_optimizer, family=args.family,
                           base_depth=args.base_depth)
    print(report)
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def run_check(args) -> int:
    """``tensorprog check --depths ...``: ``measure.depth.check_depth``; exit 1 if refuted."""
    import torch

    from ..measure.depth import check_depth
    from ..measure.runner import DEFAULT_LR

    _refuse_width_options(args)
    depths = _depths(args.depths)
    t = load_depth_target(args, 32)
    make_optimizer = t.make_optimizer
    if make_optimizer is None:  # as the width check: Adam (or SGD) at the default LR
        kind = "sgd" if args.optimizer == "sgd" else "adam"
        lr = args.lr or DEFAULT_LR[kind]
        cls = torch.optim.SGD if kind == "sgd" else torch.optim.Adam

        def make_optimizer(m):
            return cls(m.parameters(), lr=lr)
    steps = 2 if args.steps is None else args.steps
    seeds = 2 if args.seeds is None else args.seeds
    if steps < 1 or seeds < 1:
        raise TensorprogError("--steps and --seeds must be at least 1 in a depth check.")
    if not args.quiet:
        print(f"[tensorprog] depth check of {t.label} at width {t.width}, depths {depths}, "
              f"{steps} step(s), {seeds} seed(s)", file=sys.stderr)
    rep = check_depth(t.factory, depths, width=t.width, example_inputs=t.example_inputs,
                      make_optimizer=make_optimizer, loss=t.loss, steps=steps, seeds=seeds)
    return write_check(rep, args)
