"""``tensorprog check``: train at growing widths and test every prediction."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from ..errors import CheckError, TensorprogError
from ..measure.check import check
from ..measure.runner import default_optimizer, resolve_device
from .depth import add_depth_arguments, run_check as run_depth, wants_depth
from .load import load_file, write_check

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``tensorprog check`` on an argparse (sub)parser."""
    parser.add_argument("target", nargs="?", help="FILE.py:factory (a function width -> nn.Module). "
                        "The file may also define example_inputs, make_optimizer, loss, data.")
    parser.add_argument("--example", choices=("mlp", "cnn", "gpt", "resmlp"),
                        help="check a zoo example instead of a file (resmlp: with --depths)")
    parser.add_argument("--param", default="mup", choices=("sp", "ntk", "mup", "mup_table8"),
                        help="zoo parametrization (with --example)")
    parser.add_argument("--optimizer", default=None, choices=("adam", "sgd", "adamw"),
                        help="optimizer (zoo) or default optimizer class for a file without "
                             "make_optimizer (default adam)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: adam 1e-3, sgd 1e-2)")
    parser.add_argument("--widths", nargs="+", default=None,
                        help="widths, space- or comma-separated (default 64 ... 2048; a zoo "
                             "example on the CPU: 64 128 256 512)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 3; "
                        "with --depths 2)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3; with --depths 2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--plot", default=None, help="write the coordinate-check PNG here")
    parser.add_argument("--json", default=None, help="write the full report as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--max-memory", dest="max_memory", default="auto",
                        help="refuse widths whose estimated training memory exceeds this: auto "
                             "(the device's free memory, default), none (no check), or a size "
                             "such as 8GiB, 500MB, 1e9")
    parser.add_argument("--backend", default="serial", choices=("serial", "local", "ray"),
                        help="where the (width, seed) runs train: serial (this process, default), "
                             "local (a process pool), ray (one Ray task per run; one GPU each on "
                             "CUDA)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (local) or CPUs of a fresh local Ray instance (ray); "
                             "default one per CPU")
    parser.add_argument("--inputs", help="name of example_inputs in FILE (default: example_inputs)")
    parser.add_argument("--make-optimizer", dest="make_optimizer",
                        help="name of make_optimizer(model) in FILE (default: make_optimizer)")
    parser.add_argument("--loss", help="name of loss(output, inputs) in FILE (default: loss)")
    add_depth_arguments(parser, check=True)
    return parser


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in re.split(r"[,\s]+", str(s).strip()) if x]
    except ValueError:
        raise CheckError(f"--widths must be integers (e.g. --widths 64 128 256), got {s!r}.") from None


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def memory_limit(text: str):
    """--max-memory: "auto", "none" or a size ("8GiB", "500MB", "1e9" bytes) -> check's
    ``max_memory`` ("auto", None or bytes)."""
    t = str(text).strip().lower()
    if t in ("auto", "none"):
        return None if t == "none" else "auto"
    m = re.fullmatch(r"(\d+(?:\.\d*)?(?:e\d+)?)\s*([a-z]*)", t)
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise CheckError(f"--max-memory {text!r}: write auto, none, or a size such as 8GiB, "
                         "500MB or 1e9 (bytes).")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _load_target(target: str, importable: bool = False):
    """(module, factory) for FILE.py:factory, with the CLI's own file loader. ``importable``:
    also register the module under its name, with its folder on sys.path, so that worker
    processes (``--backend local``, which pickle functions by module and name) import it."""
    if ":" not in target:
        raise CheckError(f"target must be FILE.py:factory, got {target!r}.")
    path, name = target.rsplit(":", 1)
    mod = load_file(path)
    if importable:
        import os
        folder = os.path.dirname(os.path.abspath(path))
        if mod.__name__ in sys.modules and getattr(sys.modules[mod.__name__], "__file__", None) \
                != mod.__file__:
            raise CheckError(f"{path}: a module named {mod.__name__!r} is already imported; "
                             "rename the file to run it with --backend local.")
        sys.modules[mod.__name__] = mod
        if folder not in sys.path:
            sys.path.insert(0, folder)
    if not hasattr(mod, name):
        raise CheckError(f"{path} defines no {name!r} (the factory width -> model).")
    return mod, getattr(mod, name)


def run(args: argparse.Namespace) -> int:
    """Run ``tensorprog check``; returns the exit code (0 unless a prediction is refuted: 1)."""
    if wants_depth(args):
        return run_depth(args)
    max_memory = memory_limit(args.max_memory)
    kw: dict[str, Any] = {}
    if args.example:
        from ..zoo import example
        ex = example(args.example, param=args.param, optimizer=args.optimizer or "adam", lr=args.lr)
        factory = ex.factory
        kw.update(example_inputs=ex.example_inputs, make_optimizer=ex.make_optimizer, loss=ex.loss)
        on_cpu = (args.device == "cpu" if args.backend == "ray" and args.device != "auto"
                  else resolve_device(args.device).type == "cpu")  # ray: the workers' device
        default_widths = (64, 128, 256, 512) if on_cpu else (64, 128, 256, 512, 1024, 2048)
    elif args.target:
        mod, factory = _load_target(args.target, importable=args.backend == "local")
        names = {"example_inputs": getattr(args, "inputs", None),
                 "make_optimizer": getattr(args, "make_optimizer", None),
                 "loss": getattr(args, "loss", None), "data": None}
        for key, name in names.items():
            if name and not hasattr(mod, name):
                raise CheckError(f"{args.target.rsplit(':', 1)[0]} defines no {name!r} (for {key}).")
            if hasattr(mod, name or key):
                kw[key] = getattr(mod, name or key)
        if "make_optimizer" not in kw:
            kw["make_optimizer"] = default_optimizer("sgd" if args.optimizer == "sgd" else "adam",
                                                     args.lr)
        default_widths = (64, 128, 256, 512, 1024, 2048)
    else:
        raise CheckError("give FILE.py:factory or --example NAME.")
    widths = [w for item in args.widths for w in _int_list(item)] if args.widths else default_widths
    rep = check(factory, widths, steps=3 if args.steps is None else args.steps,
                seeds=3 if args.seeds is None else args.seeds, device=args.device,
                progress=not args.quiet, max_memory=max_memory, backend=args.backend,
                workers=args.workers, **kw)
    code = write_check(rep, args)
    if rep.partial:  # Ctrl-C: the finished runs are reported (and saved); then as any Ctrl-C
        raise KeyboardInterrupt
    return code


def main(argv=None) -> int:  # standalone: python -m tensorprog.cli.check ...
    parser = add_arguments(argparse.ArgumentParser(prog="tensorprog check"))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except TensorprogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
