"""Rewriting float `linear` nodes into quantized ones (shared by every quantization pass).

Pattern: a ``linear`` node. Check: it is not the lm_head unless asked (the head stays in its
dtype by default). Replacement: a ``qlinear`` node whose weights (packed codes, float16
scales, uint8 zeros, int32 g_idx) live in the pass's scratch directory.
"""

from __future__ import annotations

import torch

from optimizer.errors import InvalidInput
from optimizer.ir import Graph, Node, WeightRef
from optimizer.ir.quant import QuantScheme
from optimizer.ir.scratch import ScratchDir
from optimizer.ir.weights import WeightStore
from optimizer.kernels.qlinear.reference import pack_bits


def decline_reason(graph: Graph, node: Node, quantize_lm_head: bool) -> str | None:
    """Why ``node`` is not quantized, or None if it is a target."""
    if node.op != "linear":
        return f"op is {node.op}, not linear"
    if not quantize_lm_head and any(o in graph.outputs for o in node.outputs):
        return "lm_head stays in its dtype (quantize_lm_head=false)"
    return None


def targets(graph: Graph, quantize_lm_head: bool) -> list[int]:
    return [i for i, n in enumerate(graph.nodes)
            if decline_reason(graph, n, quantize_lm_head) is None]


def layer_of(node: Node) -> int | None:
    """Decoder layer index from the node's output name (``l{i}.q``), None outside layers."""
    head = node.outputs[0].split(".", 1)[0]
    return int(head[1:]) if head.startswith("l") and head[1:].isdigit() else None


def check_finite(ref: WeightRef, t: torch.Tensor) -> None:
    """NaN/Inf in a weight is invalid input naming the tensor and its file."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InvalidInput(ref.file, f"tensor '{ref.key}' has "
                                     f"{int((~torch.isfinite(t)).sum())} NaN/Inf values")


def load_checked(store: WeightStore, ref: WeightRef) -> torch.Tensor:
    """Float32 weight, checked finite."""
    w = store.load(ref).float()
    check_finite(ref, w)
    return w


def pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
         scheme: QuantScheme, g_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Storage tensors of a qlinear (roles -> tensors); symmetric schemes store no zeros."""
    out = {"qweight": pack_bits(codes, scheme.bits), "scales": scales.half()}
    if not scheme.sym:
        out["zeros"] = zeros.round().to(torch.uint8)
    if g_idx is not None:
        out["g_idx"] = g_idx.to(torch.int32)
    return out


def qlinear_node(node: Node, roles: dict[str, str], scheme: QuantScheme, k: int,
                 method: str) -> Node:
    weights = dict(roles)
    if node.weight("bias"):
        weights["bias"] = node.weight("bias")
    return Node.make("qlinear", node.inputs, node.outputs, weights,
                     {"bits": scheme.bits, "group_size": scheme.group_size, "in_features": k,
                      "sym": scheme.sym, "method": method})


def store_layer(scratch: ScratchDir, tensors: dict[str, dict[str, torch.Tensor]]
                ) -> dict[str, WeightRef]:
    """Write one layer's quantized tensors ({weight prefix: {role: tensor}}) to scratch."""
    flat = {f"{prefix}.{role}": t for prefix, roles in tensors.items()
            for role, t in roles.items()}
    return scratch.write(flat) if flat else {}


def replace_nodes(graph: Graph, new_nodes: dict[int, Node], new_weights: dict[str, WeightRef],
                  scratch: ScratchDir, report: dict) -> Graph:
    """Swap in the new nodes and weights, drop weights nothing uses, keep scratch alive."""
    nodes = tuple(new_nodes.get(i, n) for i, n in enumerate(graph.nodes))
    weights = {**graph.weights, **new_weights}
    used = {w for n in nodes for _, w in n.weights}
    quant = list(graph.meta.get("quantization", [])) + [report]
    return graph.replace(nodes=nodes, weights={k: w for k, w in weights.items() if k in used},
                         resources=graph.resources + (scratch,),
                         meta={**graph.meta, "quantization": quant})
