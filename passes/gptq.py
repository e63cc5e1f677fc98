"""The GPTQ pass: calibrated int4/int8/int3 weight quantization, one decoder layer at a time.

With ``device=cuda`` the Hessians and the solver run on the GPU; the layer forwards that
produce the activations stay on the CPU reference interpreter.

For each decoder layer, in true-sequential order (q/k/v, then o, then gate/up, then down:
linears that read the same activation share one Hessian), the calibration activations are
run through the layer with the already-quantized weights, H = 2 X^T X / n is accumulated,
and `gptq_solver.gptq` quantizes each weight. The layer's quantized outputs feed the next
layer. Per-linear relative output errors, dampening raises and fallbacks are reported in
``graph.meta['quantization']`` (and so in the artifact's manifest).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optimizer.ir import Graph
from optimizer.ir.quant import QuantScheme
from optimizer.ir.scratch import ScratchDir
from optimizer.pass_api import graph_pass
from optimizer.passes.calibration import CalibOptions, LayerStream, calibration_samples
from optimizer.passes.gptq_solver import gptq as solve
from optimizer.passes.quant_rewrite import (decline_reason, pack, qlinear_node,
                                            replace_nodes, store_layer)
from optimizer.progress import progress


@dataclass(frozen=True)
class GptqOptions(CalibOptions, QuantScheme):
    act_order: bool = True
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128
    mse: float = 0.0        # > 0: each group's range by the least sum |Q(w) - w|^mse (0: min/max)
    quantize_lm_head: bool = False
    device: str = "cpu"     # where the Hessians and the solver run ("cuda": a GPU)

    def __post_init__(self) -> None:
        QuantScheme.__post_init__(self)
        CalibOptions.__post_init__(self)
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for but no CUDA GPU is available")
        if not 0 < self.damp <= 1:
            raise ValueError(f"damp: expected a float in (0, 1], got {self.damp}")
        if self.mse < 0:
            raise ValueError(f"mse: expected 0 (off) or a norm > 0, got {self.mse}")
        if self.block_size < 1:
            raise ValueError(f"block_size: expected >= 1, got {self.block_size}")


def input_groups(graph: Graph, nodes, quantize_lm_head: bool) -> list[tuple[str, list]]:
    """Target linears of a layer grouped by the activation they read, in node order."""
    groups: dict[str, list] = {}
    for node in nodes:
        if decline_reason(graph, node, quantize_lm_head) is None:
            groups.setdefault(node.inputs[0], []).append(node)
    return list(groups.items())


@graph_pass("gptq", GptqOptions)
def gptq(graph: Graph, opts: GptqOptions) -> Graph:
    """GPTQ: Hessian-aware quantization with calibration data (bits, group_size, act_order)."""
    samples = calibration_samples(graph, opts)
    stream = LayerStream(graph, samples)
    scratch = ScratchDir()
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    new_nodes, new_weights, per_linear = {}, {}, {}
    units = stream.units(opts.quantize_lm_head)
    for unit in progress(units, len(units), "gptq layers"):
        weights = stream.layer_weights(unit)
        tensors = {}
        for inp, members in input_groups(graph, stream.nodes(unit), opts.quantize_lm_head):
            k = graph.weights[members[0].weight("weight")].shape[1]
            acc = {"h": torch.zeros(k, k, dtype=torch.float64, device=opts.device), "rows": 0}

            def visit(env: dict[str, torch.Tensor], inp: str = inp, acc: dict = acc) -> None:
                # one chunk's X^T X in float32 (fast), summed over chunks in float64
                x = env[inp].reshape(-1, env[inp].shape[-1]).to(opts.device, torch.float32)
                acc["h"] += (x.T @ x).double()
                acc["rows"] += x.shape[0]

            stream.run(unit, weights, until=inp, visit=visit)
            h = (acc["h"] * (2.0 / acc["rows"])).float()
            for node in members:
                wname = node.weight("weight")
                r = solve(weights[wname].to(opts.device), h, opts.bits, opts.group_size,
                          opts.sym, opts.act_order, opts.static_groups, opts.damp,
                          opts.block_size, opts.mse).to("cpu")
                weights[wname] = r.deq       # later groups see the quantized weight
                prefix = wname.removesuffix(".weight")
                tensors[prefix] = pack(r.codes, r.scales, r.zeros, opts, r.g_idx)
                per_linear[prefix] = {"rel_error": round(r.rel_error, 6), **r.info}
                roles = {role: f"{prefix}.{role}" for role in tensors[prefix]}
                new_nodes[index[id(node)]] = qlinear_node(node, roles, opts, k, "gptq")
        if unit != units[-1]:
            stream.run(unit, weights, commit=True)
        new_weights.update(store_layer(scratch, tensors))
    report = {"pass": "gptq", "bits": opts.bits, "group_size": opts.group_size,
              "sym": opts.sym, "act_order": opts.act_order,
              "static_groups": opts.static_groups, "damp": opts.damp,
              "calibration": {"source": opts.calib or "generated by the model",
                              "samples": len(samples),
                              "tokens": int(sum(len(s) for s in samples))},
              "linears": per_linear}
    return replace_nodes(graph, new_nodes, new_weights, scratch, report)
