"""The op table: one ``OpSpec`` per ATen op name, and the lookup every stage uses.

An op with no entry is never taken for harmless: ``lookup`` returns the entry, or for an op that
ATen tags ``pointwise`` (coordinatewise: TP's Nonlin rule) the generic pointwise entry, or None.
The engine sizes an op without an entry only when no width dim enters it and its inputs are
bounded; otherwise it reports the op as undetermined.
"""
from __future__ import annotations

from .core import OpSpec

SPECS: dict[str, OpSpec] = {}
#: entries for ops without their own, by ATen tag ("pointwise": TP's Nonlin rule)
BY_TAG: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    """Add ``spec`` under each of its names; a name registered twice is a bug in the table."""
    for name in spec.names:
        if name in SPECS:
            raise ValueError(f"op {name!r} has two entries in the op table")
        SPECS[name] = spec
    return spec


def register_tag(tag: str, spec: OpSpec) -> OpSpec:
    """The entry for every op ATen tags ``tag`` that has no entry of its own."""
    BY_TAG[tag] = spec
    return spec


def lookup(attrs: dict) -> OpSpec | None:
    """The entry for a graph node (its attributes): by op name, else generic pointwise if ATen
    tags the op pointwise, else None."""
    spec = SPECS.get(attrs.get("op"))
    if spec is not None:
        return spec
    for tag in attrs.get("tags") or ():
        if tag in BY_TAG:
            return BY_TAG[tag]
    return None


def is_view(attrs: dict) -> bool:
    spec = SPECS.get(attrs.get("op"))
    return bool(spec and spec.view)


def is_multiplier(attrs: dict) -> bool:
    spec = SPECS.get(attrs.get("op"))
    return bool(spec and spec.multiplier)
