"""What the commands run on: a zoo example (--example) or a user file ``FILE.py:factory``.

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
from ..validate import check_file_path

__all__ = ["Target", "load_target", "load_file", "common_arguments", "check_outputs",
           "check_device", "write_check", "OUTPUT_FLAGS"]

#: argparse dests of the options that name a file to write
OUTPUT_FLAGS = ("json", "plot", "dot", "pytorch")


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
    module = load_file(path)
    factory = _attr(module, name, path, "factory")
    inputs = _attr(module, args.inputs, path, "--inputs") if args.inputs else getattr(module, "example_inputs", None)
    opt = (_attr(module, args.make_optimizer, path, "--make-optimizer") if args.make_optimizer
           else getattr(module, "make_optimizer", None))
    loss = _attr(module, args.loss, path, "--loss") if getattr(args, "loss", None) else getattr(module, "loss", None)
    return Target(args.target, factory, inputs, opt, loss, (64, 128, 256))


def load_file(path):
    """Import the Python file at ``path`` as a module (its folder on sys.path meanwhile)."""
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


def common_arguments(p: argparse.ArgumentParser):
    """The target arguments shared by analyze, trace and rules."""
    p.add_argument("target", nargs="?", help="FILE.py:factory (factory: width -> nn.Module)")
    p.add_argument("--example", help="a built-in model instead: mlp, cnn or gpt")
    p.add_argument("--param", default="mup", help="zoo parametrization: sp, ntk, mup, mup_table8")
    p.add_argument("--widths", type=int, nargs="+", help="widths to trace (default 64 128 256)")
    p.add_argument("--optimizer", help="sgd | adam | adamw (zoo), or the class for a plain global LR")
    p.add_argument("--inputs", help="name of example_inputs in FILE (tuple or width -> tuple)")
    p.add_argument("--make-optimizer", help="name of make_optimizer(model) in FILE")
    p.add_argument("--json", help="write the result as JSON here")


def check_outputs(args) -> None:
    """Every output path the command will write (--json, --plot, --dot, --pytorch; '-' is
    stdout) can be written, checked before the run starts (``validate.check_file_path``)."""
    for dest in OUTPUT_FLAGS:
        path = getattr(args, dest, None)
        if not path or path == "-":
            continue
        check_file_path(path, f"--{dest} {path!r}", example="out." + _EXT.get(dest, "txt"))


_EXT = {"json": "json", "plot": "png", "dot": "dot", "pytorch": "py"}


def check_device(name, allow_auto: bool = False, here: bool = True) -> None:
    """--device names a device torch knows and this machine has (checked before the run);
    ``here=False``: the runs train elsewhere (``check --backend ray``), so CUDA need not be here."""
    import torch

    if name is None or (allow_auto and name == "auto"):
        return
    choices = "cpu, cuda, cuda:N" + (", meta" if not allow_auto else ", auto")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise TensorprogError(f"--device {name!r} is not a device; use one of {choices}") from None
    if dev.type == "cuda" and here:
        if not torch.cuda.is_available():
            raise TensorprogError(f"--device {name}: CUDA is not available on this machine; use "
                                  "--device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TensorprogError(f"--device {name}: this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "meta", "mps"):
        raise TensorprogError(f"--device {name!r}: tensorprog runs on {choices}")


def write_check(rep, args) -> int:
    """Print a check's report, write its --json / --plot; exit code 1 if refuted, else 0."""
    print(rep)
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot and getattr(rep, "widths", True):  # a check stopped before any width: no plot
        rep.plot(args.plot)
        print(f"wrote {args.plot}")
    return 1 if rep.verdict == "refuted" else 0
