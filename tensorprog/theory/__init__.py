"""The closed-form theory: abc-parametrizations (TP4, TP4b) and infinite-width kernels."""
from .abc import *  # noqa: F401,F403
