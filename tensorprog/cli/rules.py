"""``tensorprog rules``: derive the muP init, multiplier and LR of every parameter."""
from __future__ import annotations

import sys

from ..transform.rules import CONVENTIONS
from .load import common_arguments, load_target


def add_arguments(parser):
    """Arguments of ``tensorprog rules``: FILE.py:factory or --example NAME, --optimizer,
    --convention, --base-width, --json, --pytorch."""
    common_arguments(parser)
    parser.add_argument("--convention", default="table3", choices=CONVENTIONS,
                        help="table3 (default), table8 (the mup package), table9 (TP4), unit")
    parser.add_argument("--base-width", type=int, help="width where every factor is 1 "
                        "(default: the smallest traced width)")
    parser.add_argument("--pytorch", help="write ready-to-paste PyTorch code here ('-': stdout)")
    parser.add_argument("--device", default="cpu", help="cpu, or meta to trace without weights")
    return parser


def run(args) -> int:
    """Print the table; --json / --pytorch write the other forms."""
    from ..transform.rules import rules

    t = load_target(args)
    optimizer = args.optimizer or "adam"
    r = rules(t.factory, tuple(args.widths or t.widths), example_inputs=t.example_inputs,
              optimizer="adam" if optimizer == "adamw" else optimizer, convention=args.convention,
              base_width=args.base_width, device=getattr(args, "device", "cpu"), label=t.label)
    print(r)
    if args.json:
        r.to_json(args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if getattr(args, "pytorch", None):
        code = r.to_pytorch()
        if args.pytorch == "-":
            print(code)
        else:
            with open(args.pytorch, "w") as f:
                f.write(code)
            print(f"wrote {args.pytorch}", file=sys.stderr)
    return 0
