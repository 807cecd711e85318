"""Build the live theory notes: run their code, regenerate every generated region.

    python theory_notes/build.py                 # rewrite every note; draw missing figures
    python theory_notes/build.py --figures       # ... and redraw every figure
    python theory_notes/build.py 06-nngp.md      # one note
    python theory_notes/build.py --check         # change nothing; exit 1 if a note is stale
    python theory_notes/build.py --no-figures    # text only

A note is a Markdown file ``NN-name.md`` in this folder (and the repository's README.md). It is run
like a notebook, top to bottom, in one fresh namespace:

* every fenced ```` ```python ```` block is executed, in order (its stdout is kept);
* every generated region, ``<!-- begin: SPEC -->`` ... ``<!-- end: NAME -->`` where NAME is the
  first word of SPEC, has its body replaced by what SPEC produces at that point of the run:

  ``output``              the stdout of the most recent python block, as a ```text block;
  ``value EXPR``          ``str(EXPR)`` evaluated in the note's namespace (use it inline);
  ``figure FILE EXPR [PREFIX]``  EXPR is a callable ``path -> None`` from the namespace; with
                          figures on it writes ``figures/FILE``; the body is the image link
                          ``PREFIX + FILE`` (PREFIX defaults to ``figures/``);
  ``cli ARGS...``         the stdout of ``tensorprog ARGS...`` run in-process;
  ``NAME ARGS...``        a generator registered below with ``@generator("NAME")``, called as
                          ``fn(namespace, *ARGS)``; it returns Markdown.

Everything else in the file is left byte for byte. A region whose begin marker ends its line is
a block region (its body is rewritten between the two marker lines); otherwise it is inline.
The test suite (tests/test_notes.py) renders every note with figures off and asserts the
result equals the committed file, so a number in a note cannot drift from the code.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import re
import shlex
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NOTES_DIR = Path(__file__).resolve().parent
FIGURES_DIR = NOTES_DIR / "figures"
NOTE_GLOB = "[0-9][0-9]-*.md"
EXTRA_NOTES = ("../README.md",)  # the README tutorial is built and tested too
FIGURE_LIMIT_BYTES = 200 * 1024

BUILD_HINT = "run `python theory_notes/build.py` to regenerate the notes, then commit them"


class NoteError(Exception):
    """A note could not be built: a failing code block, an unknown region, a bad marker."""


# --------------------------------------------------------------------------- parsing

_TOKEN = re.compile(
    r"<!-- begin: (?P<spec>.*?) -->(?P<body>.*?)<!-- end: (?P<end>.*?) -->"
    r"|^(?P<fence>`{3,})(?P<lang>[^\n`]*)\n(?P<code>.*?)^(?P=fence)[ \t]*$",
    re.S | re.M,
)


@dataclass
class Segment:
    kind: str  # "text", "code" or "region"
    raw: str  # the exact source text
    line: int  # 1-based line of its start
    lang: str = ""  # code: the info string's first word
    source: str = ""  # code: the block's content
    spec: str = ""  # region: what follows "begin:"
    body: str = ""  # region: current content
    inline: bool = False  # region: inside a line of text


def parse(text: str, where: str = "<note>") -> list[Segment]:
    """Split a note into text, fenced code blocks and generated regions, in order.

    Regions are opaque (their bodies may hold fences); a fence opened outside a region is
    opaque too (a marker inside a code block is just code)."""
    out, pos = [], 0

    def line_of(i):
        return text.count("\n", 0, i) + 1

    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            out.append(Segment("text", text[pos:m.start()], line_of(pos)))
        if m.group("spec") is not None:
            spec, end = m.group("spec").strip(), m.group("end").strip()
            if not spec:
                raise NoteError(f"{where}:{line_of(m.start())}: empty region spec")
            if end != spec.split()[0]:
                raise NoteError(
                    f"{where}:{line_of(m.start())}: region 'begin: {spec}' is closed by "
                    f"'end: {end}'; close it with '<!-- end: {spec.split()[0]} -->'")
            body = m.group("body")
            if "<!-- begin:" in body:
                raise NoteError(f"{where}:{line_of(m.start())}: region '{spec}' is not closed "
                                "before the next region begins")
            out.append(Segment("region", m.group(0), line_of(m.start()), spec=spec, body=body,
                               inline=not body.startswith("\n")))
        else:
            lang = (m.group("lang").strip().split() or [""])[0]
            out.append(Segment("code", m.group(0), line_of(m.start()), lang=lang,
                               source=m.group("code")))
        pos = m.end()
    if pos < len(text):
        out.append(Segment("text", text[pos:], line_of(pos)))
    stray = [s for s in out if s.kind == "text" and ("<!-- begin:" in s.raw or "<!-- end:" in s.raw)]
    if stray:
        i = stray[0].raw.find("<!-- ")
        raise NoteError(f"{where}:{stray[0].line + stray[0].raw.count(chr(10), 0, i)}: "
                        "unmatched region marker")
    return out


def python_blocks(text: str, where: str = "<note>") -> list[tuple[int, str]]:
    """(line, source) of every ```python block, in order."""
    return [(s.line, s.source) for s in parse(text, where) if s.kind == "code" and s.lang == "python"]


def bash_commands(text: str, where: str = "<note>") -> list[tuple[int, str]]:
    """(line, command) of every line of a ```bash block (comments and blank lines dropped)."""
    out = []
    for s in parse(text, where):
        if s.kind == "code" and s.lang in ("bash", "sh", "shell", "console"):
            for k, line in enumerate(s.source.splitlines(), start=1):
                cmd = line.strip().removeprefix("$ ").split(" #")[0].strip()
                if cmd and not cmd.startswith("#"):
                    out.append((s.line + k, cmd))
    return out


# --------------------------------------------------------------------------- generators

GENERATORS: dict[str, Callable[..., str]] = {}


def generator(name: str):
    """Register ``fn(namespace, *args) -> markdown`` as the region kind ``name``."""
    def register(fn):
        GENERATORS[name] = fn
        return fn
    return register


def _fence(text: str, lang: str = "text") -> str:
    text = text.rstrip("\n")
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _md_table(header, rows) -> str:
    esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _tuple(xs) -> str:
    return ", ".join(str(x) for x in xs)


def _yes(x) -> str:
    return "yes" if x is True else "no" if x is False else str(x)


@generator("presets")
def gen_presets(ns, optimizer: str = "sgd") -> str:
    """The named parametrizations of TP4 §3 (and TP4b Def 2.5.1 for Adam), computed by theory.preset + ABC."""
    from tensorprog.theory.abc import preset

    rows = []
    cases = [("SP, LR Theta(1)", "SP", None), ("SP, LR 1/n", "SP", 1), ("NTK", "NTK", None),
             ("muP", "muP", None), ("MF", "MF", None)]
    for L in (1, 2, 3):
        for label, name, c in cases:
            if name == "MF" and L != 1:
                continue
            if optimizer != "sgd" and c is not None:
                continue
            p = preset(name, L, optimizer, c=c)
            rows.append([label, L, _tuple(p.a), _tuple(p.b),
                         _tuple(p.c) if isinstance(p.c, tuple) else p.c,
                         _tuple(p.r_layers), p.r, _yes(p.stable), _yes(p.nontrivial), p.regime])
    return _md_table(["name", "L", "a", "b", "c", "r_l", "r", "stable", "nontrivial", "regime"],
                     rows)


@generator("uniform")
def gen_uniform(ns, optimizer: str = "sgd", L: str = "2") -> str:
    """UP_r (TP4 App G) for r between 0 (muP) and 1/2 (NTK)."""
    import sympy as sp

    from tensorprog.theory.abc import preset, uniform

    rows = []
    for k in range(5):
        r = sp.Rational(k, 8)
        p = uniform(r, int(L), optimizer)
        same = [n for n in ("muP", "NTK") if p.equivalent(preset(n, int(L), optimizer))]
        rows.append([f"UP_{r}", _tuple(p.a), _tuple(p.b),
                     _tuple(p.c) if isinstance(p.c, tuple) else p.c, _tuple(p.r_layers),
                     p.regime, ", ".join(same) or "-"])
    return _md_table(["", "a", "b", "c", "r_l", "regime", "equivalent preset"], rows)


@generator("max-lr")
def gen_max_lr(ns, L: str = "2") -> str:
    """Largest stable learning rate n^{-c*} for the a, b of each preset (TP4 / TP4b)."""
    from tensorprog.theory.abc import max_stable_lr_exponent, preset

    rows = []
    for opt in ("sgd", "adam"):
        for name in ("SP", "NTK", "muP"):
            p = preset(name, int(L), opt)
            per = (_tuple(max_stable_lr_exponent(p.a, p.b, opt, per_layer=True))
                   if opt == "adam" else "-")
            rows.append([name, opt, _tuple(p.a), _tuple(p.b),
                         _tuple(p.c) if isinstance(p.c, tuple) else p.c,
                         max_stable_lr_exponent(p.a, p.b, opt), per])
    return _md_table(["preset", "optimizer", "a", "b", "preset's c", "smallest stable global c",
                      "smallest stable c_l per layer"], rows)


@generator("depth-growth")
def gen_depth_growth(ns, width: str = "32") -> str:
    """Stream and block sizes at init against depth, measured by ``check_depth`` on the zoo's
    residual MLP in its three depth forms (TP6 / CompleteP), with the predicted exponents."""
    from tensorprog.measure.depth import check_depth
    from tensorprog.zoo import depth_example

    depths = (2, 4, 8, 16, 32)
    rows = []
    for form in ("standard", "depth_mup", "completep"):
        ex = depth_example("resmlp", form)
        c = check_depth(ex.factory, depths, width=int(width), example_inputs=ex.example_inputs,
                        make_optimizer=ex.make_optimizer, loss=ex.loss, steps=1, seeds=2)
        for node, label in (("stream", "stream x_L"), ("blocks.*.linear", "block m g(x)")):
            r = c.get(node, "size")
            means = r.mean_values
            rows.append([form, label] + [f"{means[d]:.3g}" for d in depths]
                        + [f"L^{r.predicted}", f"{r.slope:+.2f}", r.status])
    return _md_table(["form", "mean abs at init"] + [f"L={d}" for d in depths]
                     + ["predicted", "slope", "check"], rows)


@generator("optimizer-classes")
def gen_optimizer_classes(ns) -> str:
    from tensorprog.theory.abc import OPTIMIZER_CLASSES

    by = {}
    for name, cls in OPTIMIZER_CLASSES.items():
        by.setdefault(cls, []).append(name)
    meaning = {"sgd": "update linear in the gradient (TP4)",
               "adam": "update an entrywise, scale-invariant function of the gradients (TP4b)"}
    return _md_table(["class", "optimizers", "what the theory assumes"],
                     [[k, ", ".join(v), meaning[k]] for k, v in by.items()])


@generator("rules")
def gen_rules(ns) -> str:
    """analyze.expected for every role, class and optimizer class, at the usual fan exponents."""
    import sympy as sp

    from tensorprog.exponents import fmt
    from tensorprog.predict.classes import expected
    from tensorprog.text.explain import rule_text, update_text

    one, zero = sp.Integer(1), sp.Integer(0)
    fans = {"input": (zero, one), "hidden": (one, one), "output": (one, zero),
            "vector": (zero, one)}
    rows = []
    for role, (ai, ao) in fans.items():
        for opt in ("sgd", "adam"):
            row = [role, f"{fmt(ai)}, {fmt(ao)}", opt]
            for cls in ("muP", "SP", "NTK"):
                rule, off = expected(cls, role, ai, ao, opt)
                row += [rule_text(rule), "U = " + update_text(off, cls != "muP")]
            rows.append(row)
    return _md_table(["role", "fan_in, fan_out", "optimizer", "muP init", "muP update",
                      "SP init", "SP update", "NTK init", "NTK update"], rows)


@generator("roles")
def gen_roles(ns, graph_name: str = "graph") -> str:
    """Per-parameter table of a traced WidthGraph held in the namespace."""
    from tensorprog.exponents import fmt

    graph = ns[graph_name]
    rows = []
    for name, p in graph.params.items():
        u = p.primary
        dims = "[" + ", ".join(fmt(d) if d is not None else "?" for d in p.dims) + "]"
        module = graph.node(u.node)["module"] if u else ""
        rows.append([f"`{name}`", dims, u.op if u else "-", module or "-",
                     list(u.fan_in) if u else "-", list(u.fan_out) if u else "-", p.role,
                     fmt(p.init_exp), fmt(p.mult_exp), fmt(p.lr_exp)])
    folded: dict[tuple, list] = {}
    for row in rows:
        key = (re.sub(r"(?<=\.)\d+(?=\.)", "*", row[0]),) + tuple(str(x) for x in row[1:3]) + \
            tuple(str(x) for x in row[4:])
        folded.setdefault(key, []).append(row)
    out = []
    for key, group in folded.items():
        row = list(group[0])
        if len(group) > 1:
            row[0] = f"{key[0]} (x{len(group)})"
            row[3] = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", str(row[3]))
        out.append(row)
    return _md_table(["parameter", "dims", "used by", "module", "fan-in dims", "fan-out dims",
                      "role", "init", "mult", "lr"], out)


@generator("cli")
def gen_cli(ns, *argv) -> str:
    """``$ tensorprog ARGS`` and its stdout (run in-process)."""
    from tensorprog.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = main(list(argv))
    if rc:
        raise NoteError(f"`tensorprog {' '.join(argv)}` exited with {rc}")
    return _fence(f"$ tensorprog {' '.join(shlex.quote(a) for a in argv)}\n{buf.getvalue()}")


# --------------------------------------------------------------------------- running a note


@dataclass
class Run:
    text: str  # the rebuilt note
    namespace: dict
    figures: list[Path]  # figures referenced by the note


def render(path: Path | str, *, figures: bool | str = False, text: str | None = None) -> Run:
    """Run one note top to bottom and return its rebuilt text (the file is not written).

    figures: False (draw nothing), "missing" (draw figures whose file does not exist yet) or
    True (redraw every figure)."""
    path = Path(path)
    where = path.name
    text = path.read_text() if text is None else text
    ns: dict = {"__name__": f"theory_note_{path.stem.replace('-', '_')}"}
    last_output: str | None = None
    pieces, figs = [], []
    for k, seg in enumerate(parse(text, where)):
        if seg.kind == "code" and seg.lang == "python":
            last_output = _exec_block(seg, ns, where)
            pieces.append(seg.raw)
        elif seg.kind == "region":
            content, fig = _region(seg, ns, last_output, where, figures)
            if fig is not None:
                figs.append(fig)
            if seg.inline:
                body = content.strip()
            else:
                body = "\n" + content.strip("\n") + "\n"
            end = seg.spec.split()[0]
            pieces.append(f"<!-- begin: {seg.spec} -->{body}<!-- end: {end} -->")
        else:
            pieces.append(seg.raw)
    return Run("".join(pieces), ns, figs)


def _exec_block(seg: Segment, ns: dict, where: str) -> str:
    buf = io.StringIO()
    first = seg.line + 1
    code = compile("\n" * (first - 1) + seg.source, f"{where}", "exec")
    try:
        with contextlib.redirect_stdout(buf):
            exec(code, ns)  # noqa: S102 - the notes are the project's own code
    except Exception as e:
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        mine = [t for t in tb if where in t]
        raise NoteError(f"{where}: the python block at line {seg.line} raised "
                        f"{type(e).__name__}: {e}\n{''.join(mine[-3:])}") from e
    return buf.getvalue()


def _region(seg: Segment, ns: dict, last_output, where: str, figures: bool):
    words = shlex.split(seg.spec)
    kind, args = words[0], words[1:]
    at = f"{where}:{seg.line}"
    try:
        if kind == "output":
            if last_output is None:
                raise NoteError(f"{at}: an 'output' region needs a python block before it")
            return _fence(last_output or "(no output)"), None
        if kind == "value":
            expr = seg.spec.split(None, 1)[1] if len(words) > 1 else ""
            if not expr:
                raise NoteError(f"{at}: write 'value EXPR'")
            return str(eval(expr, ns)), None  # noqa: S307 - the notes are our own code
        if kind == "figure":
            if len(args) not in (2, 3):
                raise NoteError(f"{at}: write 'figure FILE.png CALLABLE [LINK_PREFIX]'")
            name, expr = args[:2]
            prefix = args[2] if len(args) == 3 else "figures/"
            target = FIGURES_DIR / name
            if figures is True or (figures == "missing" and not target.exists()):
                FIGURES_DIR.mkdir(exist_ok=True)
                eval(expr, ns)(str(target))  # noqa: S307
                shrink(target)
            return f"![{Path(name).stem}]({prefix}{name})", target
        if kind not in GENERATORS:
            raise NoteError(f"{at}: unknown region kind {kind!r}; known: output, value, figure, "
                            + ", ".join(sorted(GENERATORS)))
        return GENERATORS[kind](ns, *args), None
    except NoteError:
        raise
    except Exception as e:
        raise NoteError(f"{at}: region '{seg.spec}' failed: {type(e).__name__}: {e}") from e


def shrink(png: Path, limit: int = FIGURE_LIMIT_BYTES) -> None:
    """Re-save a PNG over ``limit`` bytes with a 64-colour palette (line plots lose nothing)."""
    if png.suffix.lower() != ".png" or png.stat().st_size <= limit:
        return
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(colors=64)
    small.save(png, optimize=True)


def notes() -> list[Path]:
    """The numbered notes, then the repository's README.md (built the same way)."""
    extra = [(NOTES_DIR / name).resolve() for name in EXTRA_NOTES if (NOTES_DIR / name).exists()]
    return sorted(NOTES_DIR.glob(NOTE_GLOB)) + extra


def diff(old: str, new: str, name: str, limit: int = 40) -> str:
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{name} (committed)",
                                      f"{name} (built now)", lineterm="", n=1))
    more = f"\n... {len(lines) - limit} more diff lines" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


@contextlib.contextmanager
def quiet_threads():
    """One torch thread while building: faster on a loaded machine, and reproducible."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Rebuild the generated regions of the theory notes.")
    ap.add_argument("notes", nargs="*", help="note files (default: every NN-*.md here)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if any note is stale")
    ap.add_argument("--figures", action="store_true", help="redraw every figure (default: only "
                                                            "figures whose file is missing)")
    ap.add_argument("--no-figures", action="store_true", help="draw no figure")
    args = ap.parse_args(argv)
    paths = [Path(p) if Path(p).exists() else NOTES_DIR / p for p in args.notes] or notes()
    stale = 0
    with quiet_threads():
        for path in paths:
            old = path.read_text()
            try:
                mode = (False if args.check or args.no_figures else
                        True if args.figures else "missing")
                run = render(path, figures=mode, text=old)
            except NoteError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            if run.text != old:
                stale += 1
                if args.check:
                    print(diff(old, run.text, path.name), file=sys.stderr)
                else:
                    path.write_text(run.text)
            for fig in run.figures:
                if fig.exists() and fig.stat().st_size > FIGURE_LIMIT_BYTES:
                    print(f"warning: {fig.name} is {fig.stat().st_size // 1024} KB "
                          f"(limit {FIGURE_LIMIT_BYTES // 1024} KB)", file=sys.stderr)
            state = ("stale" if args.check else "rewritten") if run.text != old else "up to date"
            print(f"{path.name}: {state}")
    if args.check and stale:
        print(f"{stale} note(s) stale: {BUILD_HINT}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(NOTES_DIR.parent))
    sys.exit(main())
