"""Per-channel scales folded into the producer of a linear's input (AWQ, SmoothQuant).

For linears ``y_l = x W_l^T`` that all read one activation ``x`` [T, K] and a positive
``s`` [K], ``x W^T = (x / s) (W * s)^T``. The division is absorbed by the node producing
``x`` where that is exact:

- ``rms_norm``: ``rms_norm(h) * (g / s)`` -> divide the norm weight ``g`` by ``s``;
- ``mul(a, u)`` with ``u = linear(...)`` (silu(gate) * up): divide ``u``'s weight rows and
  bias by ``s``;
- ``attention(q, k, v)`` with ``v = linear(...)`` and ``n_heads == n_kv_heads``: output
  channel j is a convex mix of v's channel j, so divide v's weight rows and bias by ``s``
  (with GQA a v channel serves several heads; AutoAWQ skips it, and so do we).

Folding is only attempted where every reader of the scaled values is a linear of the site
and no weight involved is shared with another node (tied embeddings).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from optimizer.ir import Graph, Node
from optimizer.ir.scratch import ScratchDir
from optimizer.ir.weights import TORCH_DTYPES, WeightStore
from optimizer.passes.quant_rewrite import decline_reason


@dataclass(frozen=True)
class ScaleSite:
    """Linears reading ``inp`` and where 1/s goes: ``absorber`` (a weight name) of ``kind``
    ("rms_norm", "mul", "attention"), or None with the ``reason`` scaling is skipped."""

    inp: str
    linears: tuple[Node, ...]
    kind: str | None = None
    absorber: str | None = None
    absorber_bias: str | None = None
    reason: str = ""


def _absorber(nodes: tuple[Node, ...], inp: str, members: list[Node],
              readers: dict[str, list[Node]]) -> tuple[str | None, Node | None, str]:
    """(kind, node whose weight absorbs 1/s, reason when None)."""
    producer = {n.outputs[0]: n for n in nodes}
    src = producer.get(inp)
    if src is None:
        return None, None, f"%{inp} is produced outside the layer"
    if {id(n) for n in readers.get(inp, [])} != {id(n) for n in members}:
        return None, None, f"%{inp} has readers other than the linears"
    if src.op == "rms_norm":
        return "rms_norm", src, ""
    if src.op == "mul":
        lin = next((producer.get(x) for x in reversed(src.inputs)
                    if getattr(producer.get(x), "op", None) == "linear"), None)
        if lin is None:
            return None, None, "no mul operand is a linear"
        if len(readers.get(lin.outputs[0], [])) != 1:
            return None, None, f"%{lin.outputs[0]} has other readers"
        return "mul", lin, ""
    if src.op == "attention":
        hq, hk = src.attr("n_heads"), src.attr("n_kv_heads")
        if hq != hk:
            return None, None, (f"GQA (n_heads {hq} != n_kv_heads {hk}): a v channel feeds "
                                "several heads (AutoAWQ skips it too)")
        v = producer.get(src.inputs[2])
        if v is None or v.op != "linear" or len(readers.get(v.outputs[0], [])) != 1:
            return None, None, "v is not a linear read only by attention"
        return "attention", v, ""
    return None, None, f"producer op {src.op} cannot absorb a scale"


def scale_sites(graph: Graph, nodes: tuple[Node, ...], quantize_lm_head: bool,
                kinds: tuple[str, ...] = ("rms_norm", "mul", "attention")) -> list[ScaleSite]:
    """The target linears of ``nodes`` (one layer) grouped by input, in node order, each
    with its absorber if its kind is in ``kinds``."""
    groups: dict[str, list[Node]] = {}
    for node in nodes:
        if decline_reason(graph, node, quantize_lm_head) is None:
            groups.setdefault(node.inputs[0], []).append(node)
    uses = Counter(w for n in graph.nodes for _, w in n.weights)
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for x in n.inputs:
            readers.setdefault(x, []).append(n)
    sites = []
    for inp, members in groups.items():
        kind, src, reason = _absorber(nodes, inp, members, readers)
        if kind is not None and kind not in kinds:
            kind, reason = None, f"absorbing into {kind} is not done by this pass"
        if kind is not None:
            names = [m.weight("weight") for m in members] + [w for _, w in src.weights]
            if any(uses[w] != 1 for w in names):
                kind, reason = None, "a weight involved is shared with another node"
        if kind is None:
            sites.append(ScaleSite(inp, tuple(members), reason=reason))
        else:
            sites.append(ScaleSite(inp, tuple(members), kind, src.weight("weight"),
                                   src.weight("bias"), ""))
    return sites


def fold(weights: dict[str, torch.Tensor], site: ScaleSite, s: torch.Tensor) -> None:
    """In ``weights`` (name -> float tensor): W_l[:, j] *= s_j for the site's linears and
    the absorber divided by s (norm weight, or the producing linear's rows and bias)."""
    for node in site.linears:
        name = node.weight("weight")
        weights[name] = weights[name] * s[None, :]
    if site.kind == "rms_norm":
        weights[site.absorber] = weights[site.absorber] / s
    elif site.kind in ("mul", "attention"):
        weights[site.absorber] = weights[site.absorber] / s[:, None]
        if site.absorber_bias:
            weights[site.absorber_bias] = weights[site.absorber_bias] / s


def fold_scales(graph: Graph, scales: dict[str, torch.Tensor]) -> Graph:
    """The float graph with ``scales`` ({input value: s}) folded at every site that can
    absorb them; same function up to float rounding. (Tests; the passes fold per layer.)"""
    from optimizer.passes.calibration import layer_nodes

    store, scratch, changed = WeightStore(), ScratchDir(), {}
    for indices in layer_nodes(graph).values():
        nodes = tuple(graph.nodes[i] for i in indices)
        for site in scale_sites(graph, nodes, True):
            if site.kind is None or site.inp not in scales:
                continue
            names = [m.weight("weight") for m in site.linears]
            names += [n for n in (site.absorber, site.absorber_bias) if n]
            w = {n: changed.get(n, store.load(graph.weights[n]).float()) for n in names}
            fold(w, site, scales[site.inp].float())
            changed.update(w)
    refs = scratch.write(changed) if changed else {}
    return graph.replace(weights={**graph.weights, **refs},
                         resources=graph.resources + (scratch,))


def stored_float(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """A rescaled float weight in the dtype it had (float32 if that would not be finite)."""
    cast = t.to(TORCH_DTYPES[dtype])
    return cast if bool(torch.isfinite(cast).all()) else t.float()
