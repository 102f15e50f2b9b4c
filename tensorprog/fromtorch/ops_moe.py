"""Mixture-of-experts layers in a traced model: refused at the router's top-k, saying what to do.

A router selects k experts per token with ``torch.topk`` over its scores. The language writes such
a layer as ``route(g, k, y1, ..., yE)`` (docs/language.md), but the tracer has no recogniser that
turns a graph's routing into it: the Hugging Face families (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
DeepSeek-V3) dispatch tokens to experts with data-dependent indexing (``nonzero``, ``where``,
``index_add_``) over experts stored as one 3-D tensor, and a dense form (top-k mask, ``einsum``
over an expert axis) has an expert axis the language's vectors do not carry. Rather than fail at
the first op of the router with a message about attention, the whole graph is refused at its
first top-k, before the walk, with the layer's module named and the way to write it.
"""

from __future__ import annotations

from .where import refuse

_HELP = ("the tracer does not trace mixture-of-experts routing yet; write the layer as a Tensor "
         "Program: g = softmax(R @ h), then route_norm(g, k, y1, ..., yE) over expert MLPs "
         "(examples/moe.tp; docs/language.md), and derive it with tensorprog derive")


def _op(node) -> str:
    packet = getattr(node.target, "_overloadpacket", None)
    return packet.__name__ if packet is not None else getattr(node.target, "__name__", "")


def refuse_routing(ep) -> None:
    """Raise a TraceError at the graph's first top-k selection, if it has one."""
    for node in ep.graph.nodes:
        if node.op == "call_function" and _op(node) == "topk":
            raise refuse(node, "a top-k selection (a mixture-of-experts router)", help=_HELP)
