"""Rendering shared by the explainers: terminal text or Markdown, readable exponents."""
from __future__ import annotations

import re
import textwrap
from typing import Any, Sequence

import sympy as sp



# --------------------------------------------------------------------------- rendering


class Doc:
    """Terminal text or Markdown from the same calls."""

    def __init__(self, markdown: bool = False, width: int = 92):
        self.md = markdown
        self.width = width
        self.lines: list[str] = []

    def _gap(self):
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def title(self, text: str):
        self._gap()
        self.lines += [f"## {text}"] if self.md else [text, "=" * min(len(text), self.width)]
        self.lines.append("")

    def step(self, text: str):
        self._gap()
        self.lines += [f"### {text}"] if self.md else [text, "-" * min(len(text), self.width)]
        self.lines.append("")

    def para(self, text: str):
        self._gap()
        self.lines += [text] if self.md else textwrap.wrap(text, self.width)
        self.lines.append("")

    def formulas(self, lines: Sequence[str]):
        self._gap()
        if self.md:
            self.lines += ["```text", *lines, "```"]
        else:
            self.lines += [f"    {x}" for x in lines]
        self.lines.append("")

    def bullets(self, items: Sequence[str]):
        self._gap()
        for item in items:
            if self.md:
                self.lines.append(f"- {item}")
            else:
                self.lines += textwrap.wrap(item, self.width, initial_indent="  - ",
                                            subsequent_indent="    ")
        self.lines.append("")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]):
        self._gap()
        rows = [[str(c) for c in r] for r in rows]
        if self.md:
            esc = lambda x: x.replace("|", "\\|")  # noqa: E731
            self.lines.append("| " + " | ".join(esc(h) for h in header) + " |")
            self.lines.append("|" + "|".join("---" for _ in header) + "|")
            self.lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        else:
            w = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
                 for i, h in enumerate(header)]
            self.lines.append("  " + "  ".join(str(h).ljust(w[i]) for i, h in enumerate(header)).rstrip())
            self.lines.append("  " + "  ".join("-" * w[i] for i in range(len(header))))
            self.lines += ["  " + "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()
                           for r in rows]
        self.lines.append("")

    def render(self) -> str:
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n"


def expr(x) -> str:
    """An exponent or expression, readable: Min -> min, 2*a_1 -> 2 a_1, oo -> inf."""
    if x is None:
        return "-"
    if x == sp.oo:
        return "inf"
    if x == -sp.oo:
        return "-inf"
    s = sp.sstr(x)
    s = s.replace("Min(", "min(").replace("Max(", "max(")
    return re.sub(r"(\d)\*(?=[A-Za-z(])", r"\1 ", s).replace("*", " ")


def tup(xs) -> str:
    return "(" + ", ".join(expr(x) for x in xs) + ")"


def holds(h) -> str:
    return "yes" if h is True else "NO" if h is False else "depends"
