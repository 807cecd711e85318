"""A trace specialised to the example inputs, for models torch.export refuses.

Library code the user cannot edit often branches on data (an MoE layer that loops over experts
and skips the empty ones with ``if idx.numel() == 0: continue``). torch.export cannot trace it
once for all inputs. ``specialise`` traces the model on its real example inputs with
``make_fx(tracing_mode="real", pre_dispatch=True)`` on a functional wrapper
(``torch.func.functional_call``): Python runs the branches the example inputs take and the graph
records the ATen ops (at the same level as torch.export's) with those branches fixed. Parameters,
buffers and inputs are its placeholders, named as torch.export names them, and the result carries
an ``ExportGraphSignature``, so ``trace`` annotates it like an exported program.

The graph is right for the example inputs only: ``check``, which trains other seeds on other data,
refuses it (see ``measure/check.py``).
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import torch
import torch.utils._pytree as pytree


class SpecialisedProgram:
    """The part of ``torch.export.ExportedProgram`` that tensorprog reads."""

    specialised = True

    def __init__(self, gm, signature, out_spec, where: str):
        self.graph_module = gm
        self.graph = gm.graph
        self.graph_signature = signature
        self.constants: dict = {}
        self.call_spec = SimpleNamespace(in_spec=None, out_spec=out_spec)
        self.where = where  # " at module `moe` (file.py:13)": where the model branches on data

    @property
    def note(self) -> str:
        return (f"the model branches on data{self.where}; traced specialised to the example inputs "
                "(the branches they take)")


def specialise(model, args, kwargs, where: str = "") -> SpecialisedProgram:
    """Trace ``model(*args, **kwargs)`` with its data-dependent branches fixed to these inputs."""
    from torch.export.graph_signature import (ConstantArgument, ExportGraphSignature, InputKind,
                                              InputSpec, OutputKind, OutputSpec, TensorArgument)
    from torch.fx.experimental.proxy_tensor import make_fx

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    flat, in_spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    tensor_pos = [i for i, v in enumerate(flat) if isinstance(v, torch.Tensor)]
    names = list(params) + list(buffers)
    out = {}

    def f(*xs):
        state = dict(zip(names, xs[:len(names)]))
        vals = list(flat)
        for i, t in zip(tensor_pos, xs[len(names):]):
            vals[i] = t
        a, k = pytree.tree_unflatten(vals, in_spec)
        leaves, out["spec"] = pytree.tree_flatten(torch.func.functional_call(model, state, a, k))
        return leaves

    state = [p.detach() for p in params.values()] + [b.detach().clone() for b in buffers.values()]
    inputs = [flat[i] for i in tensor_pos]
    was_training = model.training
    gm = make_fx(f, tracing_mode="real", pre_dispatch=True, record_stack_traces=True)(*state, *inputs)
    model.train(was_training)

    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    specs = []
    for j, ph in enumerate(phs):
        if j < len(params):
            target, kind, pre = names[j], InputKind.PARAMETER, "p_"
        elif j < len(names):
            target, kind, pre = names[j], InputKind.BUFFER, "b_"
        else:
            target, kind, pre = None, InputKind.USER_INPUT, ""
        new = pre + re.sub(r"\W", "_", target) if target else f"input_{j - len(names)}"
        ph._rename(new)
        specs.append(InputSpec(kind=kind, arg=TensorArgument(name=ph.name), target=target,
                               persistent=True if kind == InputKind.BUFFER else None))
    out_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    res = out_node.args[0]
    res = res if isinstance(res, (list, tuple)) else (res,)
    outs = [OutputSpec(kind=OutputKind.USER_OUTPUT, target=None,
                       arg=TensorArgument(name=r.name) if isinstance(r, torch.fx.Node)
                       else ConstantArgument(name="", value=r)) for r in res]
    gm.recompile()
    return SpecialisedProgram(gm, ExportGraphSignature(input_specs=specs, output_specs=outs),
                              out.get("spec"), where)
