"""``tensorprog explain``: the closed-form MLP theory (``explain mlp --preset muP``) or one
parameter of a model (``explain FILE.py:factory --parameter NAME``), step by step."""
from __future__ import annotations

import re

from ..errors import TensorprogError
from ..theory.parse import parse_exponent
from ..text.explain import THEORY_TARGETS, explain_parameter, explain_preset
from .load import load_target


def rationals(values, what: str) -> list:
    """Command-line numbers (``0 1/2 -1/2`` or ``-1/2,0,1/2``) -> SymPy rationals (None: not given)."""
    if values is None:
        return None
    out = []
    for v in values:
        out += [x for x in str(v).replace(",", " ").split() if x]
    if not out:
        raise TensorprogError(f"{what}: give at least one number")
    for x in out:
        if not re.fullmatch(r"[+-]?(\d+(/\d+)?|\d*\.\d+)", x):
            raise TensorprogError(f"{what}: {x!r} is not a rational number (write e.g. 0, 1/2, "
                                  "-1/2 or 0.5)")
    return [parse_exponent(x, what, symbols=False) for x in out]


def add_arguments(parser):
    """Arguments of ``tensorprog explain`` (the parser is a subparser of cli.build_parser)."""
    # let "-1/2" be a value, not an option (argparse only knows "-1" and "-0.5")
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+/\d+$")
    parser.add_argument("target", nargs="?",
                        help="'mlp' for the closed-form theory of the L-hidden-layer MLP, or "
                             "FILE.py:factory (with --parameter)")
    t = parser.add_argument_group("closed-form MLP theory (target 'mlp')")
    t.add_argument("--preset", help="SP, NTK, muP or MF (MF needs --layers 1)")
    t.add_argument("--layers", type=int, help="L, the number of hidden layers (default 2)")
    t.add_argument("--lr-exponent", nargs="+", metavar="E",
                   help="learning rate ~ n^E, so c = -E (one value, or one per layer)")
    t.add_argument("--a", nargs="+", metavar="A", help="a_1 ... a_{L+1} (multipliers n^{-a})")
    t.add_argument("--b", nargs="+", metavar="B", help="b_1 ... b_{L+1} (init std n^{-b})")
    t.add_argument("--c", nargs="+", metavar="C",
                   help="c (learning rate n^{-c}): one value or c_1 ... c_{L+1}")
    m = parser.add_argument_group("one parameter of a model (FILE.py:factory or --example)")
    m.add_argument("--parameter", metavar="NAME",
                   help="the parameter to explain: a full name, a pattern "
                        "(blocks.*.attn.query.weight) or a unique suffix (readout.weight)")
    m.add_argument("--example", help="a built-in model: mlp, cnn or gpt")
    m.add_argument("--param", default="mup",
                   help="zoo parametrization of --example: sp, ntk, mup, mup_table8")
    m.add_argument("--widths", type=int, nargs="+", help="widths to trace (default 64 128 256)")
    m.add_argument("--inputs", help="name of example_inputs in FILE")
    m.add_argument("--make-optimizer", help="name of make_optimizer(model) in FILE")
    m.add_argument("--alignment", default="tp", choices=["tp", "everett", "full", "none"],
                   help="tp (default) or everett")
    m.add_argument("--device", default="cpu", help="cpu, or meta to trace without weights")
    parser.add_argument("--optimizer",
                        help="theory: any optimizer name (SGD, Adam, AdamW, Lion...; default "
                             "sgd); model: sgd | adam | adamw for --example")
    parser.add_argument("--markdown", action="store_true", help="print Markdown")
    return parser


def run(args) -> int:
    target = args.target
    theory_flags = [f for f in ("preset", "layers", "lr_exponent", "a", "b", "c")
                    if getattr(args, f, None) is not None]
    if target is not None and target.lower() in THEORY_TARGETS:
        if args.parameter or args.example:
            raise TensorprogError(
                f"'{target}' is the closed-form MLP theory, which has no named parameters; for "
                "the zoo MLP write: tensorprog explain --example mlp --parameter NAME")
        print(explain_preset(
            args.preset, args.layers, args.optimizer or "sgd",
            a=rationals(args.a, "--a"), b=rationals(args.b, "--b"),
            c=rationals(args.c, "--c"), lr_exponent=rationals(args.lr_exponent, "--lr-exponent"),
            markdown=args.markdown, alignment=args.alignment), end="")
        return 0
    if target is not None and ":" not in target:
        raise TensorprogError(
            f"unknown explain target {target!r}: write 'mlp' for the closed-form MLP theory "
            "(explain mlp --preset muP), or FILE.py:factory --parameter NAME (or --example "
            "mlp|cnn|gpt --parameter NAME) for one parameter of a model")
    if target is None and not args.example:
        if theory_flags:
            raise TensorprogError("name the target 'mlp' for the closed-form theory, e.g. "
                                  "tensorprog explain mlp --preset muP")
        raise TensorprogError("say what to explain: 'mlp --preset NAME' (or --a/--b/--c) for the "
                              "closed-form MLP theory, or FILE.py:factory / --example NAME with "
                              "--parameter NAME for one parameter of a model")
    if theory_flags:
        raise TensorprogError(f"--{theory_flags[0].replace('_', '-')} is for the closed-form "
                              "theory (target 'mlp'), not for a model")
    if not args.parameter:
        raise TensorprogError("which parameter? add --parameter NAME (run `tensorprog analyze` "
                              "on the same model for the list of parameters)")
    from ..graph.trace import trace
    from ..predict.analyze import analyze

    t = load_target(args)
    widths = tuple(args.widths or t.widths)
    graph = trace(t.factory, widths, example_inputs=t.example_inputs,
                  make_optimizer=t.make_optimizer, device=args.device, progress=True)
    opt = args.optimizer
    opt = None if graph.optimizer is not None else ("adam" if opt in (None, "adamw") else opt)
    report = analyze(graph, optimizer=opt, alignment=args.alignment)
    print(explain_parameter(report, args.parameter, label=t.label, markdown=args.markdown), end="")
    return 0
