"""The SmoothQuant pass: W8A8 linears with activation outliers migrated into the weights
(Xiao et al. 2022).

For linears reading an ``rms_norm`` output (q/k/v, gate/up), per input channel j::

    s_j = max|X_j|^alpha / max_l max_i |W_l[i, j]|^(1 - alpha)     (both clamped >= 1e-5)

the norm weight is divided by s and the linears' columns multiplied by s (`scale_fold`;
same function). Then every targeted linear (o_proj and down_proj too, unsmoothed) becomes
``qlinear_w8a8``: int8 weights per output row, symmetric (scale = max|w_row| / 127, float32
[N]); activations are quantized per token at run time (kernels/w8a8/reference.py).

Streaming as GPTQ: max|X| is measured on the activations produced by the already quantized
layers, and the layer's W8A8 outputs feed the next. Reported per linear, on up to
``ERROR_ROWS`` calibration tokens: the relative output error ``||y_q - X W^T|| / ||X W^T||``
and the same without smoothing (s = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from optimizer.ir import Graph, Node
from optimizer.ir.scratch import ScratchDir
from optimizer.kernels.w8a8.reference import quantize_per_token, w8a8_linear
from optimizer.pass_api import graph_pass
from optimizer.passes.calibration import CalibOptions, LayerStream, calibration_samples
from optimizer.passes.quant_rewrite import replace_nodes, store_layer
from optimizer.passes.scale_fold import ScaleSite, fold, scale_sites, stored_float
from optimizer.progress import progress

ERROR_ROWS = 2048   # calibration tokens the reported errors are measured on


@dataclass(frozen=True)
class SmoothQuantOptions(CalibOptions):
    alpha: float = 0.5
    quantize_lm_head: bool = False

    def __post_init__(self) -> None:
        CalibOptions.__post_init__(self)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: expected a float in [0, 1], got {self.alpha}")


def smooth_scales(act_max: torch.Tensor, ws: list[torch.Tensor],
                  alpha: float) -> torch.Tensor:
    """s [K] from max|X_j| [K] and the weights [N_l, K] reading X."""
    w_max = torch.cat(ws, 0).abs().amax(0).clamp(min=1e-5)
    return act_max.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 [N, K] and float32 scales [N]: symmetric per output row (max|w_row| / 127)."""
    q, scale = quantize_per_token(w)
    return q, scale.squeeze(1)


def w8a8_node(node: Node, prefix: str) -> Node:
    weights = {"qweight": f"{prefix}.qweight", "scales": f"{prefix}.scales"}
    if node.weight("bias"):
        weights["bias"] = node.weight("bias")
    return Node.make("qlinear_w8a8", node.inputs, node.outputs, weights,
                     {"method": "smoothquant"})


def collect(stream: LayerStream, unit: int | str, weights: dict[str, torch.Tensor],
            inputs: list[str], stride: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{input: (max |x| per channel over all tokens [K], every ``stride``-th token [R, K])}."""
    acc: dict[str, list] = {}

    def visit(env: dict[str, torch.Tensor]) -> None:
        for name in inputs:
            x = env[name].reshape(-1, env[name].shape[-1]).float()
            a = acc.setdefault(name, [x.abs().amax(0), []])
            a[0] = torch.maximum(a[0], x.abs().amax(0))
            a[1].append(x[::stride])

    stream.run(unit, weights, visit=visit, keep=set(inputs))
    return {n: (amax, torch.cat(rows)) for n, (amax, rows) in acc.items()}


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return round(float((y - ref).norm() / ref.norm().clamp_min(1e-30)), 6)


def smooth_layer(weights: dict[str, torch.Tensor], sites: list[ScaleSite],
                 act_max: dict[str, torch.Tensor], alpha: float) -> tuple[dict, dict]:
    """Fold each smoothable site's s; returns ({input: s}, {input: report})."""
    scales, report = {}, {}
    for site in sites:
        if site.kind is None:
            report[site.inp] = {"smoothed": False, "reason": site.reason}
            continue
        s = smooth_scales(act_max[site.inp], [weights[m.weight("weight")]
                                              for m in site.linears], alpha)
        fold(weights, site, s)
        scales[site.inp] = s
        report[site.inp] = {"smoothed": True, "absorbed_by": site.absorber,
                            "s_min": float(s.min()), "s_max": float(s.max())}
    return scales, report


def quantize_layer(sites: list[ScaleSite], weights: dict[str, torch.Tensor],
                   orig: dict[str, torch.Tensor], scales: dict[str, torch.Tensor],
                   rows: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """W8A8 for every linear of the (smoothed) layer; ``weights`` get the int8 tensors.
    Returns ({prefix: storage tensors}, {node id: qlinear_w8a8 node}, {prefix: report})."""
    tensors, nodes, report = {}, {}, {}
    for site in sites:
        x = rows[site.inp]                                     # [R, K] unsmoothed inputs
        s = scales.get(site.inp, torch.ones(x.shape[1]))
        for node in site.linears:
            wname = node.weight("weight")
            prefix = wname.removesuffix(".weight")
            q, sc = quantize_rows(weights[wname])
            tensors[prefix] = {"qweight": q, "scales": sc}
            weights.update({f"{prefix}.qweight": q, f"{prefix}.scales": sc})
            nodes[id(node)] = w8a8_node(node, prefix)
            ref = x @ orig[wname].T
            report[prefix] = {
                "rel_error": rel_error(w8a8_linear(x / s, q, sc, None), ref),
                "unsmoothed_rel_error": rel_error(
                    w8a8_linear(x, *quantize_rows(orig[wname]), None), ref),
                "smoothed": site.inp in scales}
    return tensors, nodes, report


@graph_pass("smoothquant", SmoothQuantOptions)
def smoothquant(graph: Graph, opts: SmoothQuantOptions) -> Graph:
    """SmoothQuant: migrate activation outliers into weights, then W8A8 (alpha)."""
    samples = calibration_samples(graph, opts)
    stream = LayerStream(graph, samples)
    stride = max(1, math.ceil(sum(len(s) for s in samples) / ERROR_ROWS))
    scratch = ScratchDir()
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    new_nodes, new_weights, per_linear, per_group = {}, {}, {}, {}
    units = stream.units(opts.quantize_lm_head)
    for unit in progress(units, len(units), "smoothquant layers"):
        weights = stream.layer_weights(unit)
        sites = scale_sites(graph, stream.nodes(unit), opts.quantize_lm_head, ("rms_norm",))
        stats = collect(stream, unit, weights, [s.inp for s in sites], stride)
        orig = dict(weights)
        scales, report = smooth_layer(weights, sites, {k: v[0] for k, v in stats.items()},
                                      opts.alpha)
        per_group.update(report)
        tensors, nodes, report = quantize_layer(sites, weights, orig, scales,
                                                {k: v[1] for k, v in stats.items()})
        new_nodes.update({index[i]: n for i, n in nodes.items()})
        per_linear.update(report)
        for site in sites:             # rescaled norm weights stay float
            if site.kind is not None:
                t = stored_float(weights[site.absorber], graph.weights[site.absorber].dtype)
                tensors[site.absorber.removesuffix(".weight")] = {"weight": t}
                weights[site.absorber] = t.float()
        if unit != units[-1]:
            layer = tuple(new_nodes.get(index[id(n)], n) for n in stream.nodes(unit))
            stream.run(unit, weights, commit=True, nodes=layer)
        new_weights.update(store_layer(scratch, tensors))
    report = {"pass": "smoothquant", "alpha": opts.alpha, "weights": "int8 per channel",
              "activations": "int8 per token, dynamic",
              "calibration": {"source": opts.calib or "generated by the model",
                              "samples": len(samples),
                              "tokens": int(sum(len(s) for s in samples))},
              "groups": per_group, "linears": per_linear}
    return replace_nodes(graph, new_nodes, new_weights, scratch, report)
