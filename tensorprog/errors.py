"""One exception type for everything a user can get wrong.

Every message is one paragraph: what went wrong, where (module, node, parameter), and the fix.
Catch ``TensorprogError`` to handle them all; the CLI prints the message without a traceback.
"""


class TensorprogError(Exception):
    """Bad input or an unsupported model, with a message naming the cause and the fix."""


class TraceError(TensorprogError):
    """The model could not be traced across widths."""


class TheoryError(TensorprogError, ValueError):
    """Bad input to the closed-form theory (a ValueError too)."""


class CheckError(TensorprogError):
    """The empirical check could not run."""


class TransferError(TensorprogError):
    """A learning-rate sweep could not run (bad arguments, unpicklable pieces, a failing trial)."""
