"""cuda-layout: weight-only int4 projections take the GPU kernel's weight layout at build time.

Pattern: a ``qlinear`` node with ``bits == 4``. Check: none beyond the pattern (every
grouping, act-order included, has a layout: kernels/w4a16/layout.py pads groups to the
kernel's group rows and permutes the input channels when g_idx is not ``k // group_size``).
Replacement::

    y = w4a16_linear(x) {in_features}   weights: qweight int32 [KP/8, N], sz int32 [G, N],
                                                 perm int64 [KP] (act-order only), bias?

The layout holds exactly the same integers, scales and zeros (``layout.dequantize`` inverts
it: tests/test_target_cuda.py checks the rewritten graph computes what the qlinear did), so
the rewrite changes where the weight's numbers sit, not the numbers. Loading the artifact on
a GPU then copies tensors and repacks nothing.

Other ``qlinear`` nodes (8-bit, 2/3-bit) and ``qlinear_w8a8`` keep their storage layout,
which the CUDA runtime's kernels read directly. The repacking runs on a GPU when one is
present (``device=auto``), else on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optimizer.ir import Graph, Node
from optimizer.kernels.w4a16 import layout as w4_layout
from optimizer.pass_api import graph_pass
from optimizer.passes.rewrite import Context, Edit, Match, Rule, rewrite

W4_ROLES = ("qweight", "sz", "perm")   # layout entries stored as weights (not "locks")


@dataclass(frozen=True)
class CudaLayoutOptions:
    device: str = "auto"     # where the repacking runs: auto (cuda if present), cpu, cuda

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for but no CUDA GPU is available")


def _work_device(opts: CudaLayoutOptions) -> str:
    if opts.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return opts.device


def _w4_match(ctx: Context, i: int) -> Match | None:
    node = ctx.node(i)
    if node.op == "qlinear" and node.attr("bits") == 4:
        return Match(node.outputs[0], {"linear": i})
    return None


def _w4_check(ctx: Context, m: Match) -> str | None:
    node = ctx.node(m.nodes["linear"])
    prefix = node.weight("qweight").rsplit(".", 1)[0]
    clash = [f"{prefix}.w4_{r}" for r in W4_ROLES if ctx.taken(f"{prefix}.w4_{r}")]
    return f"layout name {clash[0]} already exists" if clash else None


def _w4_replace(device: str):
    def replace(ctx: Context, m: Match) -> Edit:
        node = ctx.node(m.nodes["linear"])
        k = node.attr("in_features")

        def load(role: str) -> torch.Tensor | None:
            name = node.weight(role)
            return ctx.load(name).to(device) if name else None

        prepared = w4_layout.prepare(load("qweight"), load("scales"), load("zeros"),
                                     load("g_idx"), node.attr("group_size"), k)
        prefix = node.weight("qweight").rsplit(".", 1)[0]
        refs = ctx.write({f"{prefix}.w4_{r}": prepared[r].cpu() for r in W4_ROLES
                          if r in prepared})
        roles = {name.rsplit(".w4_", 1)[1]: name for name in refs}
        if node.weight("bias"):
            roles["bias"] = node.weight("bias")
        attrs = {"in_features": k, "group_size": node.attr("group_size"),
                 "sym": node.attr("sym"), "method": node.attr("method")}
        new = Node.make("w4a16_linear", node.inputs, node.outputs, roles,
                        {a: v for a, v in attrs.items() if v is not None})
        return Edit({m.nodes["linear"]: (new,)}, {}, refs)
    return replace


@graph_pass("cuda-layout", CudaLayoutOptions)
def cuda_layout(graph: Graph, opts: CudaLayoutOptions) -> Graph:
    """Store int4 qlinear weights in the GPU kernel layout (w4a16_linear), at build time."""
    rules = (Rule("w4a16-layout", _w4_match, _w4_check, _w4_replace(_work_device(opts))),)
    return rewrite(graph, "cuda-layout", rules).with_meta(target="cuda")
