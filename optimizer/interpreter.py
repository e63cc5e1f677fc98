"""The reference interpreter: runs IR nodes with the plain PyTorch kernel references.

The CPU runtime executes whole graphs with it and calibration passes run one decoder layer
at a time with it, so both see exactly the same arithmetic. It is the yardstick for every
later backend, so it stays simple and exact: float32 activations, float weights upcast to
float32, one KV cache per (attention layer, sequence).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from optimizer.ir import Graph, Node
from optimizer.kernels.attention.reference import attention
from optimizer.kernels.qlinear.reference import qlinear
from optimizer.kernels.rms_norm.reference import rms_norm
from optimizer.kernels.rope.reference import inv_freq, rope
from optimizer.kernels.w4a16.layout import dequantize as w4a16_dequantize
from optimizer.kernels.w8a8.reference import w8a8_linear


class KVCache:
    """K/V rows per (layer, sequence), indexed by position; grows by doubling."""

    def __init__(self) -> None:
        self.k: dict[tuple[int, int], torch.Tensor] = {}
        self.v: dict[tuple[int, int], torch.Tensor] = {}

    def write(self, layer: tuple[int, int], pos: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store rows k, v [T, W] at positions ``pos``; return rows 0..max(pos)."""
        need = int(pos.max()) + 1
        if layer not in self.k or self.k[layer].shape[0] < need:
            size = max(256, need, 2 * (self.k[layer].shape[0] if layer in self.k else 0))
            for store, new in ((self.k, k), (self.v, v)):
                buf = torch.zeros(size, new.shape[1], dtype=new.dtype, device=new.device)
                if layer in store:
                    buf[: store[layer].shape[0]] = store[layer]
                store[layer] = buf
        self.k[layer][pos] = k
        self.v[layer][pos] = v
        return self.k[layer][:need], self.v[layer][:need]


# An op's result: one tensor, or a tuple with one tensor per output (split, add_rms_norm).
OpFn = Callable[["Interpreter", Node, list[torch.Tensor]],
                torch.Tensor | tuple[torch.Tensor, ...]]


def _linear(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    bias = node.weight("bias")
    return torch.nn.functional.linear(xs[0], ex.w(node.weight("weight")),
                                      ex.w(bias) if bias else None)


def _opt(ex: "Interpreter", node: Node, role: str) -> torch.Tensor | None:
    name = node.weight(role)
    return ex.w(name) if name else None


def _qlinear(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    return qlinear(xs[0], ex.w(node.weight("qweight")), ex.w(node.weight("scales")),
                   _opt(ex, node, "zeros"), _opt(ex, node, "g_idx"), _opt(ex, node, "bias"),
                   node.attr("bits"), node.attr("group_size"))


def _qlinear_w8a8(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    return w8a8_linear(xs[0], ex.w(node.weight("qweight")), ex.w(node.weight("scales")),
                       _opt(ex, node, "bias"))


def _w4a16_linear(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    """The kernel-layout int4 weight, dequantized exactly ((q - z) * s in float32)."""
    prepared = {"qweight": ex.w(node.weight("qweight")), "sz": ex.w(node.weight("sz"))}
    if node.weight("perm"):
        prepared["perm"] = ex.w(node.weight("perm"))
    w = w4a16_dequantize(prepared, node.attr("in_features"))
    return torch.nn.functional.linear(xs[0], w.to(xs[0].dtype), _opt(ex, node, "bias"))


def _freqs(ex: "Interpreter", node: Node) -> torch.Tensor:
    key = (node.attr("head_dim"), node.attr("theta"), node.attr("scaling"))
    if key not in ex.freqs:
        ex.freqs[key] = inv_freq(key[0], key[1], dict(key[2]) if key[2] else None).to(
            ex.device)
    return ex.freqs[key]


def _rope(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    return rope(xs[0], xs[1], _freqs(ex, node))


def _split(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """x [T, sum(sizes)] -> consecutive column slices (copied: later ops see the same
    contiguous tensors the unfused projections produced)."""
    return tuple(p.contiguous() for p in torch.split(xs[0], list(node.attr("sizes")), -1))


def _silu_mul(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    """x [T, 2F] -> silu(x[:, :F]) * x[:, F:], elementwise as silu + mul."""
    f = xs[0].shape[-1] // 2
    return torch.nn.functional.silu(xs[0][..., :f]) * xs[0][..., f:]


def _add_rms_norm(ex: "Interpreter", node: Node,
                  xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, rms_norm(s)) with s = x + y."""
    s = xs[0] + xs[1]
    return s, rms_norm(s, ex.w(node.weight("weight")), node.attr("eps"))


def _rope_qk(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    """x [T, (Hq + 2 Hk) D]: RoPE on the q and k heads (the first Hq + Hk; RoPE acts on
    each head alone, so one call covers both), the v columns passed through."""
    x, pos = xs
    qk = (node.attr("n_heads") + node.attr("n_kv_heads")) * node.attr("head_dim")
    rot = rope(x[:, :qk].contiguous(), pos, _freqs(ex, node))
    return torch.cat([rot, x[:, qk:]], dim=-1)


def _attention(ex: "Interpreter", node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    """Each sequence of the step attends to its own cache (``ex.seqs``: [T] sequence ids)."""
    q, k, v, pos = xs
    out = torch.empty_like(q)
    for s in ex.seqs.unique().tolist():
        rows = (ex.seqs == s).nonzero().squeeze(1)
        k_all, v_all = ex.cache.write((node.attr("layer"), s), pos[rows], k[rows], v[rows])
        out[rows] = attention(q[rows], k_all, v_all, pos[rows], node.attr("n_heads"),
                              node.attr("n_kv_heads"), node.attr("window"))
    return out


OPS: dict[str, OpFn] = {
    "embedding": lambda ex, n, xs: ex.w(n.weight("weight"))[xs[0]],
    "rms_norm": lambda ex, n, xs: rms_norm(xs[0], ex.w(n.weight("weight")), n.attr("eps")),
    "linear": _linear,
    "qlinear": _qlinear,
    "qlinear_w8a8": _qlinear_w8a8,
    "rope": _rope,
    "attention": _attention,
    "silu": lambda ex, n, xs: torch.nn.functional.silu(xs[0]),
    "mul": lambda ex, n, xs: xs[0] * xs[1],
    "add": lambda ex, n, xs: xs[0] + xs[1],
    "split": _split,
    "silu_mul": _silu_mul,
    "silu_mul2": lambda ex, n, xs: torch.nn.functional.silu(xs[0]) * xs[1],
    "add_rms_norm": _add_rms_norm,
    "rope_qk": _rope_qk,
    "w4a16_linear": _w4a16_linear,
}


class Interpreter:
    """Executes ``graph`` given its weights as tensors (loaded once, upcast to float32)."""

    def __init__(self, graph: Graph, weights: Mapping[str, torch.Tensor],
                 device: str = "cpu") -> None:
        missing = [n.op for n in graph.nodes if n.op not in OPS]
        if missing:
            raise NotImplementedError(f"no reference kernel for ops {sorted(set(missing))}")
        self.graph = graph
        self.source = weights           # may load lazily (a Mapping with __missing__)
        self.device = torch.device(device)
        self.weights: dict[str, torch.Tensor] = {}
        self.freqs: dict[tuple, torch.Tensor] = {}
        self.cache = KVCache()
        self.seqs = torch.zeros(0, dtype=torch.int64)

    def w(self, name: str) -> torch.Tensor:
        """A weight, float ones upcast to float32 once."""
        t = self.weights.get(name)
        if t is None:
            t = self.source[name]
            t = (t.float() if t.is_floating_point() else t).to(self.device)
            self.weights[name] = t
        return t

    def reset(self) -> None:
        self.cache = KVCache()

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor,
             seqs: torch.Tensor | None = None) -> torch.Tensor:
        """Run tokens [T] at positions [T] of sequences ``seqs`` [T] (default: all 0),
        extending their caches; returns logits [T, V]."""
        env = {"tokens": tokens.to(self.device), "positions": positions.to(self.device)}
        seqs = seqs.to(self.device) if seqs is not None else None
        self.run_nodes(self.graph.nodes, env, seqs, keep=set(self.graph.outputs))
        return env[self.graph.outputs[0]].float()

    @torch.inference_mode()
    def run_nodes(self, nodes: tuple[Node, ...], env: dict[str, torch.Tensor],
                  seqs: torch.Tensor | None = None, keep: set[str] = frozenset()) -> None:
        """Execute ``nodes`` in order over ``env`` (value name -> tensor), adding their
        outputs; intermediate values not in ``keep`` are freed after their last use."""
        first = next(iter(env.values()))
        self.seqs = seqs if seqs is not None else torch.zeros(
            first.shape[0], dtype=torch.int64, device=first.device)
        last_use = {}
        for i, node in enumerate(nodes):
            for name in node.inputs:
                last_use[name] = i
        produced: set[str] = set()
        for i, node in enumerate(nodes):
            out = OPS[node.op](self, node, [env[n] for n in node.inputs])
            for name, t in zip(node.outputs, out if isinstance(out, tuple) else (out,)):
                env[name] = t
            produced.update(node.outputs)
            for name in node.inputs:
                if last_use.get(name) == i and name in produced and name not in keep:
                    env.pop(name, None)
