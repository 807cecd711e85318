"""torch.export of one model at one width: non-strict first, then strict, and for data-dependent
control flow a trace specialised to the example inputs (graph/specialise.py); errors become
TraceErrors that say where in the user's code the trace failed."""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch
import torch.nn as nn

from ..errors import TraceError
from ..ops import lookup
from .specialise import specialise
from .widthgraph import short_op


def export_program(model, args, kwargs, width, modes=(False, True)):
    """(ExportedProgram, strict?) at ATen level: non-strict first, then strict (strict keeps
    tensor attributes such as mup's ``weight.infshape``, which non-strict export drops); ops the
    op table lacks are decomposed where PyTorch can (``decompose_unknown``)."""
    errors = []
    if tuple(modes) == ("specialise",):  # the mode that worked at the previous width
        modes = ()
        errors.append(_DataDependent())
    for strict in modes:
        try:
            with warnings.catch_warnings(), _quiet_torch_logs(), _frozen_width_mults(model):
                warnings.simplefilter("ignore")
                program = torch.export.export(model, args, kwargs=kwargs, strict=strict)
            return decompose_unknown(program, in_op_table), strict
        except Exception as e:  # noqa: BLE001 - classified below
            errors.append(e)
            if _is_data_dependent(e):
                break
    e = errors[0]
    where = _user_frame(e, model)
    if _is_data_dependent(e) or any(_is_data_dependent(x) for x in errors):
        try:  # fall back to a trace specialised to the example inputs (graph/specialise.py)
            with warnings.catch_warnings(), _quiet_torch_logs():
                warnings.simplefilter("ignore")
                return specialise(model, args, kwargs, where.replace(" in module", " at module", 1)), \
                    "specialise"
        except Exception as s:  # noqa: BLE001 - reported with the export's error
            failed = f"{type(s).__name__}: {_first_line(s)}"
        raise TraceError(
            f"the model has data-dependent control flow{where}: Python branches on a tensor's "
            "value, so its graph depends on the data and cannot be traced once for all inputs, "
            f"and a trace specialised to the example inputs failed too ({failed}). "
            "Replace the branch with torch.where / torch.cond, or fix the branch for analysis "
            "(e.g. a constructor flag).") from e
    raise TraceError(
        f"torch.export could not trace the model at width {width}{where}: "
        f"{type(e).__name__}: {_first_line(e)}. tensorprog needs a model that torch.export "
        "can trace (no data-dependent Python control flow, no untraceable side effects); for "
        "HuggingFace models pass use_cache=False in the config.") from e


def in_op_table(target) -> bool:
    """Whether the op table has an entry (its own or its ATen tag's) for an ATen op."""
    tags = tuple(t.name for t in getattr(target, "tags", ()))
    return lookup({"op": short_op(target), "tags": tags}) is not None


#: ops left whole although PyTorch decomposes them: weight norm's g v / ||v|| decomposed reads
#: as a weight whose entries grow (predicted n^1/2 after one Adam step, measured n^-1/2: the
#: engine does not know v / ||v|| has unit rows), so it stays undetermined by name
#: (benchmarks/UNSEEN_MODELS_FINDINGS.md)
KEEP_OPAQUE = ("_weight_norm", "_weight_norm_interface")


def decompose_unknown(program, known, rounds: int = 3):
    """``program`` with every ATen op the op table does not know (``known(op) -> False``) and
    PyTorch's export decomposition table can write in smaller ATen ops (the fused recurrent
    cells ``gru`` / ``lstm`` / ``rnn_tanh``, ``mv``, ``vdot``...; not ``KEEP_OPAQUE``) replaced by that
    decomposition (repeated while a decomposition leaves such ops), so the engine sizes ops it
    knows instead of reporting one opaque call undetermined. A decomposition computes the same
    function (and gradient); ``check`` runs the same decomposed program. A decomposition that
    turns in-place buffer updates into extra program outputs (functionalisation: spectral norm's
    power iteration, BatchNorm's running statistics) is not taken: the graph's outputs must stay
    the model's. Other programs come back unchanged."""
    if not isinstance(program, torch.export.ExportedProgram):
        return program
    table = {op: fn for op, fn in torch.export.default_decompositions().items()
             if op.name().split("::")[-1].split(".")[0] not in KEEP_OPAQUE}
    for _ in range(rounds):
        wanted = {n.target: table[n.target] for n in program.graph.nodes
                  if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                  and not known(n.target) and n.target in table}
        if not wanted:
            break
        with warnings.catch_warnings(), _quiet_torch_logs():
            warnings.simplefilter("ignore")
            try:
                out = program.run_decompositions(wanted)
            except Exception:  # noqa: BLE001 - keep the op opaque: the engine reports it by name
                break
        user = torch.export.graph_signature.OutputKind.USER_OUTPUT
        if any(spec.kind != user for spec in out.graph_signature.output_specs):
            break
        program = out
    return program


def eager_forward(model, args, kwargs, width) -> None:
    """Run the model once eagerly on the example inputs, as PyTorch would, before its export is
    trusted. torch.export traces with fake tensors and can accept programs the eager model
    rejects (integer tokens fed to a Linear export fine but fail ``mat1 and mat2 must have the
    same dtype`` in eager mode); a verdict on a model that cannot run would be about nothing.
    The forward runs on a copy, so the export sees the model as built: a forward may change the
    model's Python state (HF's RWKV rescales its weights once in eval mode and sets a flag). A
    model whose copy does not run (the mup package's ``infshape`` attributes are not copied) is
    run in place, its buffers (BatchNorm running statistics) restored afterwards. One forward at
    the smallest width: cheap next to the exports."""
    try:
        copied = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - not copyable: run in place
        copied = None
    if copied is not None:
        try:
            _forward(copied, args, kwargs)
            return
        except Exception:  # noqa: BLE001 - the copy may lack state the original has: retry below
            pass
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    try:
        _forward(model, args, kwargs)
    except TraceError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's own error, reported as the cause
        where = _user_frame(e, model)
        raise TraceError(
            f"the model does not run on the example inputs {_input_shapes(args, kwargs)} (an "
            f"eager forward at width {width}"
            f"{where} raised {type(e).__name__}: {_first_line(e)}). tensorprog analyses the model "
            "PyTorch runs, so fix the model or the inputs first (e.g. integer token ids need an "
            "nn.Embedding, not a Linear; a Linear needs float inputs of its in_features).") from e
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in buffers and b.shape == buffers[k].shape:
                    b.copy_(buffers[k])


def _forward(model, args, kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(*args, **kwargs)


def _input_shapes(args, kwargs) -> str:
    """The example inputs as dtype[shape] (e.g. "(int64[4, 5])"), for error messages."""
    def one(x):
        if isinstance(x, torch.Tensor):
            return f"{str(x.dtype).removeprefix('torch.')}{list(x.shape)}"
        if isinstance(x, (list, tuple)):
            return "(" + ", ".join(one(v) for v in x) + ")"
        return type(x).__name__
    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in (kwargs or {}).items()]
    return "(" + ", ".join(parts) + ")"


@contextlib.contextmanager
def _frozen_width_mults(model):
    """The public mup package's readouts call ``self.width_mult()``, which reads
    ``weight.infshape``, an attribute non-strict export's fake parameters lack. Freeze each such
    method to its value (a constant at a given width) for the export, so the fast non-strict
    mode works; strict export remains the fallback for other tensor attributes."""
    frozen = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        if hasattr(w, "infshape") and callable(getattr(m, "width_mult", None)):
            try:
                value = m.width_mult()
            except Exception:  # noqa: BLE001 - leave it to the strict fallback
                continue
            m.width_mult = (lambda v: (lambda: v))(value)
            frozen.append(m)
    try:
        yield
    finally:
        for m in frozen:
            del m.width_mult


@contextlib.contextmanager
def _quiet_torch_logs():
    """Silence torch.export's own logs and prints; tensorprog reports errors itself."""
    import logging
    import io

    previous = logging.root.manager.disable
    # ERROR too: a failed export logs the traceback of the error the TraceError reports
    logging.disable(max(previous, logging.ERROR))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # export prints partial graphs on error
            yield
    finally:
        logging.disable(previous)


def _first_line(e) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else ""


class _DataDependent(Exception):
    """Stands for the export error of an earlier width that needed the specialised trace."""

    def __str__(self):
        return "data-dependent control flow (at an earlier width)"


def _is_data_dependent(e) -> bool:
    s = f"{type(e).__name__} {e}"
    return any(k in s for k in ("data-dependent", "GuardOnDataDependent", "DataDependent",
                                "data dependent"))


def _user_frame(e, model) -> str:
    """' in module `blocks.0.attn` (file.py:42)' from the innermost user frame of a traceback."""
    mods = {id(m): n for n, m in model.named_modules()}
    best = ""
    tb = e.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    ctx = e.__context__ or e.__cause__
    if ctx is not None and ctx.__traceback__ is not None:
        tb = ctx.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
    for f in frames:
        fn = f.f_code.co_filename
        if "/torch/" in fn or "/site-packages/torch" in fn or "/tensorprog/graph/" in fn:
            continue
        code = f.f_code
        first = code.co_varnames[0] if code.co_argcount else None
        self_obj = f.f_locals.get(first) if first else None
        if isinstance(self_obj, nn.Module) and id(self_obj) in mods:
            name = mods[id(self_obj)] or type(self_obj).__name__
            best = f" in module `{name}` ({fn.rsplit('/', 1)[-1]}:{f.f_lineno})"
    return best
