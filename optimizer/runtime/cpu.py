"""The CPU reference executor: runs the IR node by node with the plain PyTorch references.

This is the yardstick for every later backend, so it stays simple and exact: float32
activations, weights upcast to float32, one KV cache buffer per attention layer.
"""

from __future__ import annotations

from typing import Callable

import torch

from optimizer.ir import Graph, Node
from optimizer.kernels.attention.reference import attention
from optimizer.kernels.rms_norm.reference import rms_norm
from optimizer.kernels.rope.reference import inv_freq, rope


class KVCache:
    """Per-layer K/V rows indexed by position; grows by doubling."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def write(self, layer: int, pos: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store rows k, v [T, W] at positions ``pos``; return rows 0..max(pos)."""
        need = int(pos.max()) + 1
        if layer not in self.k or self.k[layer].shape[0] < need:
            size = max(256, need, 2 * (self.k[layer].shape[0] if layer in self.k else 0))
            for store, new in ((self.k, k), (self.v, v)):
                buf = torch.zeros(size, new.shape[1], dtype=new.dtype)
                if layer in store:
                    buf[: store[layer].shape[0]] = store[layer]
                store[layer] = buf
        self.k[layer][pos] = k
        self.v[layer][pos] = v
        return self.k[layer][:need], self.v[layer][:need]


OpFn = Callable[["CpuExecutor", Node, list[torch.Tensor]], torch.Tensor]


def _linear(ex: "CpuExecutor", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    bias = node.weight("bias")
    return torch.nn.functional.linear(xs[0], ex.w(node.weight("weight")),
                                      ex.w(bias) if bias else None)


def _rope(ex: "CpuExecutor", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    key = (node.attr("head_dim"), node.attr("theta"), node.attr("scaling"))
    if key not in ex.freqs:
        ex.freqs[key] = inv_freq(key[0], key[1], dict(key[2]) if key[2] else None)
    return rope(xs[0], xs[1], ex.freqs[key])


def _attention(ex: "CpuExecutor", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    q, k, v, pos = xs
    k_all, v_all = ex.cache.write(node.attr("layer"), pos, k, v)
    return attention(q, k_all, v_all, pos, node.attr("n_heads"), node.attr("n_kv_heads"),
                     node.attr("window"))


OPS: dict[str, OpFn] = {
    "embedding": lambda ex, n, xs: ex.w(n.weight("weight"))[xs[0]],
    "rms_norm": lambda ex, n, xs: rms_norm(xs[0], ex.w(n.weight("weight")), n.attr("eps")),
    "linear": _linear,
    "rope": _rope,
    "attention": _attention,
    "silu": lambda ex, n, xs: torch.nn.functional.silu(xs[0]),
    "mul": lambda ex, n, xs: xs[0] * xs[1],
    "add": lambda ex, n, xs: xs[0] + xs[1],
}


class CpuExecutor:
    """Executes ``graph`` given its weights as tensors (loaded once, upcast to float32)."""

    def __init__(self, graph: Graph, weights: dict[str, torch.Tensor]) -> None:
        missing = [n.op for n in graph.nodes if n.op not in OPS]
        if missing:
            raise NotImplementedError(f"the CPU runtime has no kernel for ops {sorted(set(missing))}")
        self.graph = graph
        self.weights = {k: (t.float() if t.is_floating_point() else t) for k, t in weights.items()}
        self.freqs: dict[tuple, torch.Tensor] = {}
        self.cache = KVCache()

    def w(self, name: str) -> torch.Tensor:
        return self.weights[name]

    def reset(self) -> None:
        self.cache = KVCache()

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run tokens [T] at positions [T] (extending the cache); returns logits [T, V]."""
        env: dict[str, torch.Tensor] = {"tokens": tokens, "positions": positions}
        last_use = {}
        for i, node in enumerate(self.graph.nodes):
            for name in node.inputs:
                last_use[name] = i
        for i, node in enumerate(self.graph.nodes):
            out = OPS[node.op](self, node, [env[n] for n in node.inputs])
            env[node.outputs[0]] = out
            for name in node.inputs:   # free activations early
                if last_use.get(name) == i and name not in self.graph.outputs:
                    env.pop(name, None)
        return env[self.graph.outputs[0]].float()
