"""tensorprog: a Tensor Programs calculator for infinite-width neural networks.

model factory -> ``trace`` (width-annotated ATen graph) -> ``analyze`` (exponents, theorems,
verdict) -> ``check`` (measured at growing widths) -> report.
"""
from .errors import CheckError, TensorprogError, TraceError
from .graph.trace import trace
from .graph.widthgraph import ParamInfo, ParamUse, WidthGraph
from .predict.analyze import Report, analyze
from .measure.check import CheckReport, check
from .transform.rules import Rules, rules
from .transform.mup import apply_mup

__version__ = "0.1.0"
__all__ = ["trace", "analyze", "Report", "check", "CheckReport", "rules", "Rules", "apply_mup", "WidthGraph", "ParamInfo",
           "ParamUse", "TensorprogError", "TraceError", "CheckError"]
