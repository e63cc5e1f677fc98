"""The AWQ pass: activation-aware weight quantization (Lin et al. 2023, after AutoAWQ).

Per decoder layer, on the calibration activations entering it (produced by the already
quantized layers before it):

1. one run of the float layer collects, for each group of linears sharing an input x,
   ``H = X^T X / T`` and ``x_mean = mean |x|`` per channel;
2. for each group whose producer can absorb a per-channel scale (`scale_fold`: q/k/v after
   input_layernorm, gate/up after post_attention_layernorm, down after up_proj, o after
   v_proj only without GQA) `awq_search.search_scale` picks ``s``; all are then folded
   (W *= s per column, producer /= s);
3. per linear except q/k (AutoAWQ: their error is distorted by the q k^T product) the
   clip search shrinks each (row, group) range; the weight is clamped;
4. group-wise RTN (`quant_math.rtn`) gives the ``qlinear`` (method "awq"); rescaled norm
   weights and producer biases are new float tensors in the scratch directory.

The layer's outputs with the quantized weights feed the next layer. Reported per linear:
relative output error ``||X (W_q - W)^T|| / ||X W^T||`` (W_q mapped back through the
scales) next to plain RTN's on the same X, the group's ratio, and the mean clip shrink.
Differences from AutoAWQ: the scale loss is each group's own linear outputs (AutoAWQ uses
the attention / MLP block output for q/k/v and gate/up); later layers see quantized rather
than float activations; an asymmetric clip shrinks both ends of the range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optimizer.ir import Graph
from optimizer.ir.quant import QuantScheme
from optimizer.ir.scratch import ScratchDir
from optimizer.pass_api import graph_pass
from optimizer.passes.awq_search import apply_clip, search_clip, search_scale
from optimizer.passes.calibration import CalibOptions, LayerStream, calibration_samples
from optimizer.passes.gptq_solver import relative_output_error
from optimizer.passes.quant_math import rtn, rtn_dequantized
from optimizer.passes.quant_rewrite import (pack, qlinear_node, replace_nodes,
                                            store_layer)
from optimizer.passes.scale_fold import ScaleSite, fold, scale_sites, stored_float
from optimizer.progress import progress

AWQ_BITS = (3, 4, 8)


@dataclass(frozen=True)
class AwqOptions(CalibOptions, QuantScheme):
    n_grid: int = 20
    clip: bool = True
    duo_scaling: bool = False
    quantize_lm_head: bool = False

    def __post_init__(self) -> None:
        if self.bits not in AWQ_BITS:
            raise ValueError(f"bits: expected one of {AWQ_BITS}, got {self.bits}")
        QuantScheme.__post_init__(self)
        CalibOptions.__post_init__(self)
        if self.n_grid < 1:
            raise ValueError(f"n_grid: expected an int >= 1, got {self.n_grid}")


def collect_stats(stream: LayerStream, unit: int | str, weights: dict[str, torch.Tensor],
                  inputs: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{input: (H = X^T X / T float64 [K, K], mean |x| [K])} over all calibration tokens."""
    acc: dict[str, list] = {}

    def visit(env: dict[str, torch.Tensor]) -> None:
        for name in inputs:
            x = env[name].reshape(-1, env[name].shape[-1]).float()
            a = acc.setdefault(name, [0.0, 0.0, 0])
            a[0] = a[0] + (x.T @ x).double()
            a[1] = a[1] + x.abs().sum(0, dtype=torch.float64)
            a[2] += x.shape[0]

    stream.run(unit, weights, visit=visit, keep=set(inputs))
    return {n: (h / rows, (ab / rows).float()) for n, (h, ab, rows) in acc.items()}


def feeds_qk(graph: Graph, out: str) -> bool:
    """A linear output that goes through rope or into attention's q/k slots."""
    return any(out in n.inputs and (n.op == "rope" or (n.op == "attention"
                                                      and n.inputs.index(out) < 2))
               for n in graph.nodes)


@dataclass
class Folded:
    """What scaling did to one layer: per weight the s its columns were multiplied by
    (``col``) or its rows divided by (``row``), the input Gram matrices of the scaled
    inputs, the float weights that changed and stay float, and a report per group."""

    col: dict[str, torch.Tensor] = field(default_factory=dict)
    row: dict[str, torch.Tensor] = field(default_factory=dict)
    h_scaled: dict[str, torch.Tensor] = field(default_factory=dict)
    floats: set[str] = field(default_factory=set)
    report: dict[str, dict] = field(default_factory=dict)


def scale_layer(weights: dict[str, torch.Tensor], sites: list[ScaleSite],
                stats: dict[str, tuple[torch.Tensor, torch.Tensor]],
                opts: AwqOptions) -> Folded:
    """Search every site's scale on the float weights (as AutoAWQ), then fold them all."""
    found, out = {}, Folded()
    for site in sites:
        if site.kind is None:
            out.report[site.inp] = {"scaled": False, "reason": site.reason}
            continue
        h, x_mean = stats[site.inp]
        found[site.inp] = r = search_scale(
            [weights[m.weight("weight")] for m in site.linears], h, x_mean, opts.bits,
            opts.group_size, opts.sym, opts.n_grid, opts.duo_scaling)
        out.report[site.inp] = {"scaled": True, "absorbed_by": site.absorber,
                                "ratio": r.ratio, "loss": float(f"{r.loss:.6g}"),
                                "rtn_loss": float(f"{r.rtn_loss:.6g}")}
    for site in sites:
        h = stats[site.inp][0].float()
        s = found[site.inp].scales if site.inp in found else None
        out.h_scaled[site.inp] = h if s is None else h / s[:, None] / s[None, :]
        if s is None:
            continue
        fold(weights, site, s)
        out.col.update({m.weight("weight"): s for m in site.linears})
        if site.kind == "rms_norm":
            out.floats.add(site.absorber)
        else:
            out.row[site.absorber] = s
            out.floats.update([site.absorber_bias] if site.absorber_bias else [])
    return out


def quantize_linear(w: torch.Tensor, h: torch.Tensor, clip: bool, opts: AwqOptions
                    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, float | None]:
    """(codes, scales, zeros), dequantized weight and mean clip shrink (None: no clip)."""
    shrink = None
    if clip:
        lo, hi, factors = search_clip(w, h, opts.bits, opts.group_size, opts.sym)
        w = apply_clip(w, lo, hi, opts.group_size)
        shrink = round(float(factors.mean()), 4)
    q = rtn(w, opts.bits, opts.group_size, opts.sym)
    return q, rtn_dequantized(*q, opts.group_size), shrink


def quantize_layer(graph: Graph, sites: list[ScaleSite], weights: dict[str, torch.Tensor],
                   orig: dict[str, torch.Tensor], h_orig: dict[str, torch.Tensor],
                   folded: Folded, opts: AwqOptions) -> tuple[dict, dict, dict]:
    """Clip and quantize every linear of the (folded) layer; ``weights`` get the dequantized
    values. Returns ({prefix: storage tensors}, {node id: qlinear node}, {prefix: report})."""
    tensors, nodes, report = {}, {}, {}
    for site in sites:
        for node in site.linears:
            wname = node.weight("weight")
            prefix, (n, k) = wname.removesuffix(".weight"), orig[wname].shape
            clip = opts.clip and not feeds_qk(graph, node.outputs[0])
            q, weights[wname], shrink = quantize_linear(
                weights[wname], folded.h_scaled[site.inp], clip, opts)
            tensors[prefix] = pack(*q, opts)
            roles = {r: f"{prefix}.{r}" for r in tensors[prefix]}
            nodes[id(node)] = qlinear_node(node, roles, opts, k, "awq")
            # the quantized weight in the original space: rows * s_row, columns / s_col
            eff = (weights[wname] * folded.row.get(wname, torch.ones(n))[:, None]
                   / folded.col.get(wname, torch.ones(k))[None, :])
            rtn_deq = rtn_dequantized(*rtn(orig[wname], opts.bits, opts.group_size,
                                           opts.sym), opts.group_size)
            h = h_orig[site.inp]
            report[prefix] = {
                "rel_error": round(relative_output_error(orig[wname], eff, h), 6),
                "rtn_rel_error": round(relative_output_error(orig[wname], rtn_deq, h), 6),
                "ratio": folded.report[site.inp].get("ratio"), "clip": shrink}
    return tensors, nodes, report


@graph_pass("awq", AwqOptions)
def awq(graph: Graph, opts: AwqOptions) -> Graph:
    """AWQ: activation-aware scaling + clipping, then group-wise RTN (bits, group_size)."""
    samples = calibration_samples(graph, opts)
    stream = LayerStream(graph, samples)
    scratch = ScratchDir()
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    new_nodes, new_weights, per_linear, per_group = {}, {}, {}, {}
    units = stream.units(opts.quantize_lm_head)
    for unit in progress(units, len(units), "awq layers"):
        weights = stream.layer_weights(unit)
        sites = scale_sites(graph, stream.nodes(unit), opts.quantize_lm_head)
        stats = collect_stats(stream, unit, weights, [s.inp for s in sites])
        orig = {m.weight("weight"): weights[m.weight("weight")]
                for s in sites for m in s.linears}
        folded = scale_layer(weights, sites, stats, opts)
        per_group.update(folded.report)
        tensors, nodes, report = quantize_layer(graph, sites, weights, orig,
                                                {k: v[0] for k, v in stats.items()},
                                                folded, opts)
        new_nodes.update({index[i]: n for i, n in nodes.items()})
        per_linear.update(report)
        for name in folded.floats:     # rescaled norm weights / producer biases stay float
            prefix, _, role = name.rpartition(".")
            t = stored_float(weights[name], graph.weights[name].dtype)
            tensors.setdefault(prefix, {})[role] = t
            weights[name] = t.float()
        if unit != units[-1]:
            stream.run(unit, weights, commit=True)
        new_weights.update(store_layer(scratch, tensors))
    report = {"pass": "awq", "bits": opts.bits, "group_size": opts.group_size,
              "sym": opts.sym, "n_grid": opts.n_grid, "clip": opts.clip,
              "duo_scaling": opts.duo_scaling,
              "calibration": {"source": opts.calib or "generated by the model",
                              "samples": len(samples),
                              "tokens": int(sum(len(s) for s in samples))},
              "groups": per_group, "linears": per_linear}
    return replace_nodes(graph, new_nodes, new_weights, scratch, report)
