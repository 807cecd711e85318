"""Built-in model zoo: an MLP, a small CNN and a small GPT, each in SP, NTK and muP.

The models are written by hand from the papers' formulas (TP4 §2, arXiv 2011.14522; TP4b Def 2.5.1,
arXiv 2308.01814; TP5 Tables 3 and 8, arXiv 2203.03466), so they double as the reference fixtures of every other feature: a tracer or a
classifier that disagrees with them is wrong, not them.

Vocabulary
----------
``width`` is n (MLP hidden size, conv channels, GPT d_model). ``base_width`` (default 64) is where
every muP variant coincides with SP: muP factors are written with ``width_mult = width /
base_width``, which is 1 there (same seed -> same init, same outputs, same learning rates).
Finite dims (input dim, classes, vocab, sequence length, kernel size) never change with width.

Every weight layer carries a **role** (TP5 Table 3, App J):

============ ============================================= =========================
role         what                                          examples
============ ============================================= =========================
``input``    weight finite -> infinite                     first Linear / Conv, embeddings
``hidden``   weight infinite -> infinite (matrix-like)     n x n Linear, width x width conv
``readout``  weight infinite -> finite                     last Linear (logits)
``vector``   one infinite dim: biases of input/hidden      LayerNorm / GroupNorm / BatchNorm
             layers, norm gains and shifts                 weight and bias
``scalar``   no infinite dim: the readout's bias           ``readout.bias``
============ ============================================= =========================

and every variant is one small class below (``SP``, ``NTK``, ``MuP``, ``MuPTable8``) whose docstring
lists its abc exponents per role: W = n^{-a} w, w ~ N(0, n^{-2b}), learning rate ~ n^{-c}.

Where things live
-----------------
* forward multiplier n^{-a}: ``layer.multiplier`` on every ``Linear`` / ``Conv2d`` of this module
  (``None`` = no multiplication in the graph at all; a float = one ``aten.mul`` by that constant,
  present at every width, base width included, so traced graphs line up across widths).
  The GPT readout multiplier is ``model.readout.multiplier``.
* attention logit scale: ``attn.scale`` on each ``CausalSelfAttention`` (the value passed to
  ``F.scaled_dot_product_attention``; ``None`` = its default 1/sqrt(d_head)); ``attn.effective_scale``
  is the number actually used.
* per-parameter learning-rate factor: ``model.parametrization.lr_scale(role, optimizer)``;
  ``model.param_roles()`` maps parameter names to roles; ``make_optimizer`` builds the groups
  (each group carries ``"role"`` and ``"lr_scale"`` keys next to ``"lr"``).

Usage::

    ex = example("gpt", param="mup", optimizer="adam")
    model = ex.factory(128)
    out = model(*ex.example_inputs(128))
    ex.loss(out, ex.example_inputs(128)).backward()
    ex.make_optimizer(model).step()
"""
from __future__ import annotations

from .abc import ABCMLP, abc_optimizer
from .base import (DEFAULT_LR, DEFAULT_WEIGHT_DECAY, EXAMPLES, NTK, OPTIMIZERS, PARAMS, ROLES, SP,
                   Conv2d, Linear, MuP, MuPTable8, Parametrization, ZooModel, make_optimizer,
                   parametrization)
from .cnn import CNN
from .depth import DEPTH_PARAMS, ResidualMLP, make_depth_optimizer
from .depth_examples import DepthExample, depth_example
from .examples import Example, example
from .gpt import GPT, Block, CausalSelfAttention, FeedForward
from .mlp import MLP

__all__ = [
    "PARAMS", "OPTIMIZERS", "ROLES", "EXAMPLES", "DEFAULT_LR",
    "Parametrization", "SP", "NTK", "MuP", "MuPTable8", "parametrization",
    "Linear", "Conv2d", "ZooModel", "MLP", "CNN", "GPT", "CausalSelfAttention", "Block",
    "make_optimizer", "Example", "example", "FeedForward", "DEFAULT_WEIGHT_DECAY", "ABCMLP", "abc_optimizer",
    "DEPTH_PARAMS", "ResidualMLP", "make_depth_optimizer", "DepthExample", "depth_example",
]
