"""``preserves_rng``: the caller's random state is the same after a tensorprog call as before.

``trace`` and ``check`` build models under ``torch.manual_seed(seed)`` so that every width and
seed is reproducible; that must not reseed the caller's program. The decorated function saves
torch's CPU generator, every CUDA generator (when CUDA is initialised), Python's ``random`` and
NumPy's global generator, and restores them when it returns or raises.
"""
from __future__ import annotations

import contextlib
import functools
import random

import numpy as np
import torch

__all__ = ["preserved_rng", "preserves_rng"]


@contextlib.contextmanager
def preserved_rng():
    """Save the global random states; restore them on exit (also on error)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(npy)


def preserves_rng(fn):
    """Decorator: ``fn`` runs inside ``preserved_rng()``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with preserved_rng():
            return fn(*args, **kwargs)
    return wrapper
