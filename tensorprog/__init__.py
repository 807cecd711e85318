"""tensorprog: a Tensor Programs calculator for infinite-width neural networks.

model factory -> ``trace`` (width-annotated ATen graph) -> ``analyze`` (exponents, theorems,
verdict) -> ``check`` (measured at growing widths) -> report. In depth, a factory (width, depth)
-> ``analyze_depth`` (TP6 / CompleteP verdict) -> ``check_depth`` (measured at growing depths).
"""
from .errors import CheckError, TensorprogError, TraceError
from .graph.trace import trace
from .graph.widthgraph import ParamInfo, ParamUse, WidthGraph
from .predict.analyze import Report, analyze
from .measure.check import CheckReport, check
from .transform.rules import Rules, rules
from .transform.mup import apply_mup
from .predict.depth import DepthReport, analyze_depth
from .measure.depth import DepthCheck, check_depth

__version__ = "0.1.0"
__all__ = ["trace", "analyze", "Report", "check", "CheckReport", "analyze_depth", "DepthReport",
           "check_depth", "DepthCheck", "rules", "Rules", "apply_mup", "WidthGraph", "ParamInfo",
           "ParamUse", "TensorprogError", "TraceError", "CheckError"]
