"""Round-to-nearest weight quantization: int8 per output channel, or int2/3/4/8 in groups.

Each targeted linear's weight W [N, K] becomes codes, float16 scales and (asymmetric) zeros
by `quant_math.rtn`; no calibration data is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.ir import Graph
from optimizer.ir.quant import QuantScheme
from optimizer.ir.scratch import ScratchDir
from optimizer.ir.weights import WeightStore
from optimizer.pass_api import graph_pass
from optimizer.passes.quant_math import rtn, rtn_dequantized
from optimizer.passes.quant_rewrite import (layer_of, load_checked, pack, qlinear_node,
                                            replace_nodes, store_layer, targets)
from optimizer.progress import progress


@dataclass(frozen=True)
class RtnOptions(QuantScheme):
    quantize_lm_head: bool = False


@graph_pass("quantize-rtn", RtnOptions)
def quantize_rtn(graph: Graph, opts: RtnOptions) -> Graph:
    """Round-to-nearest quantization of linear weights (bits, group_size, sym)."""
    store, scratch = WeightStore(), ScratchDir()
    by_layer: dict[int | None, list[int]] = {}
    for i in targets(graph, opts.quantize_lm_head):
        by_layer.setdefault(layer_of(graph.nodes[i]), []).append(i)
    new_nodes, new_weights, errors = {}, {}, {}
    for layer, indices in progress(by_layer.items(), len(by_layer), "quantize-rtn layers"):
        tensors = {}
        for i in indices:
            node = graph.nodes[i]
            ref = graph.weights[node.weight("weight")]
            w = load_checked(store, ref)
            codes, scales, zeros = rtn(w, opts.bits, opts.group_size, opts.sym)
            prefix = ref.name.removesuffix(".weight")
            tensors[prefix] = pack(codes, scales, zeros, opts)
            deq = rtn_dequantized(codes, scales, zeros, opts.group_size)
            errors[prefix] = float((deq - w).norm() / w.norm().clamp_min(1e-30))
        refs = store_layer(scratch, tensors)
        for i in indices:
            node = graph.nodes[i]
            prefix = graph.weights[node.weight("weight")].name.removesuffix(".weight")
            roles = {r: f"{prefix}.{r}" for r in tensors[prefix]}
            new_nodes[i] = qlinear_node(node, roles, opts, graph.weights[
                node.weight("weight")].shape[1], "rtn")
        new_weights.update(refs)
    report = {"pass": "quantize-rtn", "bits": opts.bits, "group_size": opts.group_size,
              "sym": opts.sym, "weight_rel_error": errors}
    return replace_nodes(graph, new_nodes, new_weights, scratch, report)
