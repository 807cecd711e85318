"""``tensorprog rules``: derive the muP init, multiplier and LR of every parameter."""
from __future__ import annotations

import functools
import sys

import torch

from ..errors import TensorprogError
from ..transform.rules import CONVENTIONS
from .load import common_arguments, load_target

OPTIMIZER_HELP = (
    "adam (default) | sgd (a plain global LR), a torch.optim class (adafactor, muon, rmsprop...), "
    "a hybrid MATRIX+REST (muon+adamw: Muon on the hidden matrices, AdamW on everything else), "
    "or KEY=OPT pairs joined by commas, KEY a role (input, hidden, output, vector, scalar), a "
    "parameter name or 'default' (hidden=muon,default=adamw); muon:match_rms_adamw sets Muon's "
    "adjust_lr_fn")


def _optimizer_class(name: str):
    """torch.optim class (or a partial of Muon with its adjust_lr_fn) from a name."""
    base, _, adjust = name.strip().partition(":")
    classes = {k.lower(): v for k, v in vars(torch.optim).items()
               if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
               and v is not torch.optim.Optimizer}
    cls = classes.get(base.lower())
    if cls is None:
        raise TensorprogError(f"--optimizer: unknown optimizer {base!r}; torch.optim has "
                              f"{', '.join(sorted(classes))}. {OPTIMIZER_HELP}.")
    return functools.partial(cls, adjust_lr_fn=adjust) if adjust else cls


def parse_optimizer(text: str | None):
    """``--optimizer`` as ``rules`` takes it: "adam" / "sgd" (names), a class, or a dict
    role-or-name -> class for a hybrid (see ``OPTIMIZER_HELP``)."""
    text = (text or "adam").strip()
    if text.lower() in ("adam", "adamw", "sgd"):
        return "adam" if text.lower() == "adamw" else text.lower()
    if "+" in text:
        parts = text.split("+")
        if len(parts) != 2 or not all(parts):
            raise TensorprogError(f"--optimizer {text!r}: a hybrid is MATRIX+REST, e.g. muon+adamw")
        return {"hidden": _optimizer_class(parts[0]), "default": _optimizer_class(parts[1])}
    if "=" in text:
        table = {}
        for pair in text.split(","):
            key, eq, name = pair.partition("=")
            if not eq or not key.strip() or not name.strip():
                raise TensorprogError(f"--optimizer {text!r}: write KEY=OPT pairs joined by "
                                      "commas, e.g. hidden=muon,default=adamw")
            if key.strip() in table:
                raise TensorprogError(f"--optimizer {text!r}: {key.strip()!r} is given twice; "
                                      "name each role or parameter once")
            table[key.strip()] = _optimizer_class(name)
        return table
    return _optimizer_class(text)


def add_arguments(parser):
    """Arguments of ``tensorprog rules``: FILE.py:factory or --example NAME, --optimizer,
    --convention, --base-width, --json, --pytorch, --eps-scaling, --zero-init, --base-depth,
    --family."""
    common_arguments(parser)
    for action in parser._actions:
        if action.dest == "optimizer":
            action.help = OPTIMIZER_HELP
    parser.add_argument("--convention", default="table3", choices=CONVENTIONS,
                        help="table3 (default), table8 (the mup package), table9 (TP4), unit")
    parser.add_argument("--base-width", type=int, help="width where every factor is 1 "
                        "(default: the smallest traced width)")
    parser.add_argument("--alignment", default="tp", choices=["tp", "everett", "full", "none"],
                        help="alignment the learning rates assume (Everett et al. 2024): tp "
                        "(default, the tables'), full (= everett) or none (Adam-like optimizers)")
    parser.add_argument("--pytorch", help="write ready-to-paste PyTorch code here ('-': stdout)")
    parser.add_argument("--eps-scaling", default="constant", choices=["constant", "mup"],
                        help="--pytorch code: keep Adam's eps (default) or scale it per parameter "
                        "like its muP gradient (as apply_mup(eps_scaling='mup'))")
    parser.add_argument("--zero-init", nargs="+", default=(), choices=["readout", "query"],
                        help="--pytorch code: also emit mup_zero_init_, starting the readout and/or "
                        "the attention query at zero (TP5 App. D.2; as apply_mup(zero_init=...))")
    parser.add_argument("--device", default="cpu", help="cpu, or meta to trace without weights")
    g = parser.add_argument_group("depth factors (TP6 / CompleteP; as rules(base_depth=...))")
    g.add_argument("--base-depth", dest="base_depth", type=int, metavar="L0",
                   help="also give the depth factors as powers of L/L0: the traced model's block "
                   "count (branch multiplier, block learning rates, Adam eps)")
    g.add_argument("--family", choices=("completep", "depth_mup"),
                   help="the depth family of those factors (default completep; needs --base-depth)")
    return parser


def _depth_options(args) -> tuple[int | None, str]:
    """(base_depth, family) from --base-depth / --family, checked before the trace."""
    base_depth, family = getattr(args, "base_depth", None), getattr(args, "family", None)
    if base_depth is None:
        if family is not None:
            raise TensorprogError("--family sets the depth factors' family: add --base-depth L0 "
                                  "(the traced model's block count), e.g. --base-depth 2.")
        return None, "completep"
    if base_depth < 1:
        raise TensorprogError(f"--base-depth must be a positive integer, got {base_depth}.")
    return base_depth, family or "completep"


def run(args) -> int:
    """Print the table; --json / --pytorch write the other forms."""
    from ..transform.rules import rules

    from ..transform.optspec import assign_kind

    if getattr(args, "zero_init", None) and not getattr(args, "pytorch", None):
        raise TensorprogError("--zero-init shapes the --pytorch code (mup_zero_init_): add "
                              "--pytorch FILE (or '-'), or drop --zero-init.")
    base_depth, family = _depth_options(args)
    optimizer = parse_optimizer(args.optimizer)
    args.optimizer = assign_kind(optimizer)  # the zoo builds its examples for "adam" / "sgd"
    t = load_target(args)
    r = rules(t.factory, tuple(args.widths or t.widths), example_inputs=t.example_inputs,
              optimizer=optimizer, convention=args.convention,
              alignment=getattr(args, "alignment", "tp"),
              base_width=args.base_width, device=getattr(args, "device", "cpu"), label=t.label,
              base_depth=base_depth, depth_family=family)
    print(r)
    if args.json:
        r.to_json(args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if getattr(args, "pytorch", None):
        code = r.to_pytorch(getattr(args, "eps_scaling", "constant"),
                            tuple(getattr(args, "zero_init", ()) or ()))
        if args.pytorch == "-":
            print(code)
        else:
            with open(args.pytorch, "w") as f:
                f.write(code)
            print(f"wrote {args.pytorch}", file=sys.stderr)
    return 0
