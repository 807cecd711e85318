"""The op table: everything tensorprog knows about each ATen op, in one entry per op or family.

``lookup(node attributes) -> OpSpec | None``. Each family lives in one file: ``matrix``
(contractions), ``attention``, ``norm``, ``pointwise`` (TP's Nonlin and arithmetic), ``reduce``,
``shape`` (views, slices, constants). trace, engine, rules, check and explain read this table and
keep no op knowledge of their own; adding an op touches one file here.
"""
from .core import (ALIGNMENTS, HALF, NEG, ONE, ZERO, Alignment, Op, OpSpec, Sizes, Undetermined, Use,
                   alignment, mx)
from .registry import SPECS, is_multiplier, is_view, lookup, register
from . import matrix, attention, norm, pointwise, reduce, shape  # noqa: F401  (fill the table)
from .shape import split_dim, SPLITS
from .norm import PARAM_POS as NORM_PARAM_POS

__all__ = ["lookup", "register", "SPECS", "OpSpec", "Op", "Sizes", "Use", "Undetermined", "Alignment",
           "ALIGNMENTS", "alignment", "mx", "NEG", "ZERO", "HALF", "ONE", "is_view", "is_multiplier",
           "split_dim", "SPLITS", "NORM_PARAM_POS"]
