"""Command line: ``tensorprog analyze | trace | check | rules | explain`` on a zoo example or
``FILE.py:factory``.

``analyze`` and ``check`` with ``--depths`` run in depth instead: a factory (width, depth) at one
width and growing depths (``cli/depth.py``).

One module per subcommand (``add_arguments(parser)`` and ``run(args) -> exit code``); how a
target is loaded lives in ``cli/load.py``. Nothing outside ``cli/`` imports from here.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import TensorprogError
from .load import Target, check_device, check_outputs, load_target

__all__ = ["main", "build_parser", "Target", "load_target"]

#: (subcommand, module under tensorprog.cli, help)
COMMANDS = (
    ("analyze", "analyze", "trace at several widths and give the verdict"),
    ("trace", "trace", "print the width-annotated parameters; --json/--dot export"),
    ("explain", "explain", "derive a verdict step by step: the MLP theory "
                           "(explain mlp --preset muP) or one parameter of a model"),
    ("rules", "rules", "derive the muP init, multiplier and LR of every parameter"),
    ("check", "check", "train at growing widths and test every prediction"),
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="tensorprog", description="Tensor Programs calculator: is your model muP, SP or NTK?")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, help_text in COMMANDS:
        mod = importlib.import_module(f"{__name__}.{module}")
        p = sub.add_parser(name, help=help_text)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv=None) -> int:
    """Run one command; its exit code. A user error (``TensorprogError``, or a file that cannot
    be written) is one line on stderr and exit 2; Ctrl-C is "tensorprog: interrupted" and exit 130
    (128 + SIGINT), no traceback. Output paths and --device are checked before the run. torch's
    own log records (torch.export prints the tracebacks of the failures it reports) are
    silenced: the error message says what failed."""
    logging.disable(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
        check_outputs(args)
        check_device(getattr(args, "device", None), allow_auto=args.command == "check",
                     here=getattr(args, "backend", "serial") != "ray")
        return args.func(args) or 0
    except TensorprogError as e:
        print(f"tensorprog: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing an output failed after all (disk full, removed folder...)
        print(f"tensorprog: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tensorprog: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
