"""The CUDA engine's op table: each IR op mapped onto a GPU kernel (kernels/*/triton_*.py),
cuBLAS (float projections) or PyTorch's SDPA (prefill attention).

An op function gets the engine (weights on the device, the KV cache, rope frequencies),
the node, its input tensors and the `Step` (what this forward pass is: one sequence's
prefill, or one decode token for each of B sequences). Activations are the engine's dtype
(bfloat16 by default); every kernel's math is documented beside its reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from optimizer.ir import Node

if TYPE_CHECKING:
    from optimizer.runtime.cuda_engine import CudaEngine


@dataclass
class Step:
    """One forward pass. ``prefill``: T tokens of the sequence in cache slot ``slot`` at
    positions 0..T-1. Decode: one token for each sequence 0..B-1 at ``positions`` [B]; each
    attends to its cache rows 0..positions[b] (``lengths`` = positions + 1, int32)."""

    prefill: bool
    positions: torch.Tensor
    slot: int = 0
    lengths: torch.Tensor | None = None


OpFn = Callable[["CudaEngine", Node, list[torch.Tensor], Step],
                torch.Tensor | tuple[torch.Tensor, ...]]


def _opt(eng: "CudaEngine", node: Node, role: str) -> torch.Tensor | None:
    name = node.weight(role)
    return eng.weights[name] if name else None


def _linear(eng, node, xs, step):
    """Decode-sized x (M <= 2): the CUDA GEMV (kernels/gemv/gemv.cu) where it is available,
    with float32 output for the model's logits; else at M = 1 the Triton GEMV for the
    weights where it measured faster than cuBLAS; otherwise cuBLAS.

    Why float32 logits: rounded to bf16, logits of 16-32 are spaced 0.125 apart, so tokens
    the model separates can tie. On SmolLM2 ("The capital of France is", greedy) step 24's
    two best tokens differ by 0.057 in the float32 CPU reference and round to the same
    bf16 value; the argmax then takes the lower token id."""
    x, w, b = xs[0], eng.weights[node.weight("weight")], _opt(eng, node, "bias")
    if x.is_cuda and (b is None or b.dtype == x.dtype):
        from optimizer.kernels.gemv import cuda_gemv
        if cuda_gemv.prefer(x) and cuda_gemv.available(x, w):
            logits = node.outputs[0] in eng.graph.outputs
            return cuda_gemv.gemv(x, w, b, out_dtype=torch.float32 if logits else None)
    if x.dim() == 2 and x.shape[0] == 1:
        from optimizer.kernels.gemv.triton_gemv import gemv, prefer, supported
        if supported(x, w) and prefer(w) and (b is None or b.dtype == x.dtype):
            return gemv(x, w, b)
    return F.linear(x, w, b)


def _w4a16_tensors(eng, node) -> dict[str, torch.Tensor]:
    """A W4A16 node's kernel tensors: keyed by its output, or for a `group_nodes` group by
    its linear's output (attribute "prepared")."""
    return eng.prepared[node.attr("prepared", node.outputs[0])]


def _w4a16(eng, node, xs, step):
    from optimizer.kernels.w4a16.triton_gemm import w4a16_linear
    return w4a16_linear(xs[0], _w4a16_tensors(eng, node), _opt(eng, node, "bias"))


def _w4a16_silu(eng, node, xs, step):
    """`group_nodes`' gate-up w4a16_linear + silu_mul: the SiLU-mul in the W4A16 decode
    kernel's epilogue where that kernel runs, else the two kernels."""
    from optimizer.kernels.w4a16.triton_gemm import w4a16_gate_up_silu
    return w4a16_gate_up_silu(xs[0], _w4a16_tensors(eng, node),
                              _opt(eng, node, "bias"))


def _qlinear(eng, node, xs, step):
    """8-bit: the W8A16 kernel; other bit widths: the reference (dequantize each call)."""
    if node.attr("bits") == 8 and node.outputs[0] in eng.prepared:
        from optimizer.kernels.w8a16.triton_gemm import w8a16_linear
        return w8a16_linear(xs[0], eng.prepared[node.outputs[0]], _opt(eng, node, "bias"))
    from optimizer.kernels.qlinear.reference import qlinear
    return qlinear(xs[0], eng.weights[node.weight("qweight")], eng.weights[node.weight("scales")],
                   _opt(eng, node, "zeros"), _opt(eng, node, "g_idx"), _opt(eng, node, "bias"),
                   node.attr("bits"), node.attr("group_size"))


def _w8a8(eng, node, xs, step):
    from optimizer.kernels.w8a8.triton_gemm import w8a8_linear
    return w8a8_linear(xs[0], eng.prepared[node.outputs[0]], _opt(eng, node, "bias"))


def _rms_norm(eng, node, xs, step):
    from optimizer.kernels.rms_norm.triton_rms_norm import rms_norm
    return rms_norm(xs[0], eng.weights[node.weight("weight")], node.attr("eps"))


def _add_rms_norm(eng, node, xs, step):
    from optimizer.kernels.rms_norm.triton_rms_norm import add_rms_norm
    return add_rms_norm(xs[0], xs[1], eng.weights[node.weight("weight")], node.attr("eps"))


def _rope(eng, node, xs, step):
    from optimizer.kernels.rope.triton_rope import rope
    return rope(xs[0], xs[1], eng.freqs_of(node), node.attr("n_heads"), node.attr("head_dim"))


def _rope_qk(eng, node, xs, step):
    from optimizer.kernels.rope.triton_rope import rope_qk
    return rope_qk(xs[0], xs[1], eng.freqs_of(node), node.attr("n_heads"),
                   node.attr("n_kv_heads"), node.attr("head_dim"))


def _silu_mul(eng, node, xs, step):
    from optimizer.kernels.activation.triton_silu_mul import silu_mul
    return silu_mul(xs[0])


def _split(eng, node, xs, step):
    return tuple(torch.split(xs[0], list(node.attr("sizes")), -1))


def _attention(eng, node, xs, step):
    """Write this step's k/v into the layer's cache, then attend: prefill with SDPA over the
    prompt (causal, sliding window as a mask), decode with the split-K decode kernel."""
    from optimizer.kernels.attention.kv_cache import cache_write
    q, k, v, _ = xs
    hq, hk, d = node.attr("n_heads"), node.attr("n_kv_heads"), node.attr("head_dim")
    window = node.attr("window")
    kc, vc = eng.cache.layer(node.attr("layer"))
    if step.prefill:
        t = q.shape[0]
        kc[step.slot, :t] = k.reshape(t, hk, d)
        vc[step.slot, :t] = v.reshape(t, hk, d)
        qh = q.reshape(1, t, hq, d).transpose(1, 2)                   # [1, Hq, T, D]
        kh = k.reshape(1, t, hk, d).transpose(1, 2)                   # [1, Hk, T, D]
        vh = v.reshape(1, t, hk, d).transpose(1, 2)
        if window is not None and window < t:
            i = torch.arange(t, device=q.device)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2).reshape(t, hq * d)
    b = q.shape[0]
    cache_write(kc[:b], vc[:b], k, v, step.positions)
    return _decode_attention(eng, q.contiguous(), kc[:b], vc[:b], step, hq, hk, window)


def _decode_attention(eng, q, kc, vc, step, hq, hk, window):
    """One decode step's attention over the layer's cache: the Triton split-K kernel, or the
    CUDA one where it runs and is switched on (kernels/attention/cuda_decode.py,
    ``OPTIMIZER_ATTN_CUDA=1``; slower in the 8B decode step as measured)."""
    from optimizer.kernels.attention import cuda_decode
    if cuda_decode.available(q, kc, vc, step.lengths, hq, hk):
        return cuda_decode.decode_attention(q, kc, vc, step.lengths, hq, hk, window)
    from optimizer.kernels.attention.triton_decode import decode_attention
    return decode_attention(q, kc, vc, step.lengths, hq, hk, window, locks=eng.cache.locks)


def _rope_qk_attention(eng, node, xs, step):
    """`group_nodes`' rope_qk -> split -> attention. Decode: one kernel rotates q and k and
    writes k, v into the cache (`rope_qk_cache`), then the decode kernel attends; prefill:
    the three ops one after the other."""
    qkv, pos = xs
    hq, hk, d = node.attr("n_heads"), node.attr("n_kv_heads"), node.attr("head_dim")
    if step.prefill:
        q, k, v = torch.split(_rope_qk(eng, node, xs, step), [hq * d, hk * d, hk * d], -1)
        return _attention(eng, node, [q, k, v, pos], step)
    from optimizer.kernels.rope.triton_rope import rope_qk_cache
    kc, vc = eng.cache.layer(node.attr("layer"))
    b = qkv.shape[0]
    q = rope_qk_cache(qkv, pos, eng.freqs_of(node), hq, hk, d, kc, vc)
    return _decode_attention(eng, q, kc[:b], vc[:b], step, hq, hk, node.attr("window"))


def _w4a16_rope_attention(eng, node, xs, step):
    """`group_nodes`' qkv w4a16_linear -> rope_qk -> split -> attention. Decode: the qkv
    projection's W4A16 decode kernel rotates q and k and writes k, v into the cache in its
    epilogue where it runs (kernels/w4a16/triton_gemm.w4a16_qkv_rope; else the projection
    and `rope_qk_cache`), then the decode kernel attends; prefill: the projection, then
    `_rope_qk_attention`."""
    x, pos = xs
    if step.prefill:
        return _rope_qk_attention(eng, node, [_w4a16(eng, node, [x], step), pos], step)
    from optimizer.kernels.w4a16.triton_gemm import w4a16_qkv_rope
    hq, hk, d = node.attr("n_heads"), node.attr("n_kv_heads"), node.attr("head_dim")
    kc, vc = eng.cache.layer(node.attr("layer"))
    b = x.shape[0]
    q = w4a16_qkv_rope(x, _w4a16_tensors(eng, node), _opt(eng, node, "bias"), pos,
                       eng.freqs_of(node), hq, hk, d, kc, vc)
    return _decode_attention(eng, q, kc[:b], vc[:b], step, hq, hk, node.attr("window"))


def _w4a16_add_norm_linear(eng, node, xs, step):
    """`group_nodes`' w4a16_linear -> add_rms_norm -> w4a16_linear / w4a16_silu: where the
    CUDA decode kernel runs both projections the norm is split over their epilogues
    (kernels/w4a16/triton_gemm.w4a16_add_norm_linear), else the three kernels."""
    from optimizer.kernels.w4a16.triton_gemm import w4a16_add_norm_linear
    return w4a16_add_norm_linear(
        xs[0], _w4a16_tensors(eng, node), _opt(eng, node, "bias"), xs[1],
        eng.weights[node.weight("norm")], node.attr("eps"),
        eng.prepared[node.attr("prepared_b")], _opt(eng, node, "b.bias"),
        gate_up=node.attr("gate_up"))


def group_nodes(nodes: list[Node], outputs: tuple[str, ...] = ()) -> list[Node]:
    """The engine's own fusion of node groups its kernels run as one (not IR ops: they exist
    only in this engine's schedule, the artifact is unchanged); ``outputs``: the graph's
    outputs, which a group never hides:

    - ``r = rope_qk(qkv, pos); q, k, v = split(r); o = attention(q, k, v, pos)``, where r and
      q/k/v have no other readers: one ``rope_qk_attention(qkv, pos) -> o`` (attributes of
      both).
    - ``qkv = w4a16_linear(x)`` followed by such a group, where qkv has no other reader
      and is not a graph output: one ``w4a16_rope_attention(x, pos) -> o`` (the linear's
      weights, the group's attributes and ``prepared``: the linear's output, the key of its
      kernel tensors), the RoPE and the cache write in the W4A16 decode kernel's epilogue
      where that kernel runs (kernels/w4a16/triton_gemm.w4a16_qkv_rope). Only with
      ``OPTIMIZER_FUSE_QKV_ROPE=1`` (read when the engine is built): off by default, since
      in the decode step it was slower (H100, 8B int4, batch 1: 440.1 against 455 tok/s;
      the attention kernel after it took 1.3 µs more; bench/RESULTS.md, eleventh session).
    - ``gu = w4a16_linear(x); h = silu_mul(gu)``, where gu has no other reader and is not a
      graph output: one ``w4a16_silu(x) -> h`` with the linear's weights and attributes
      (and ``prepared``: the linear's output, the key of its kernel tensors), the SiLU-mul
      in the W4A16 decode kernel's epilogue where that kernel runs
      (kernels/w4a16/triton_gemm.w4a16_gate_up_silu). ``OPTIMIZER_FUSE_GU_SILU=0`` (read
      when the engine is built) keeps them apart.
    - ``y = w4a16_linear(x); s, n = add_rms_norm(y, r)`` (either input order) ``; z =
      w4a16_linear(n)`` or ``w4a16_silu(n)`` (a group above), where y and n have no other
      reader and are not graph outputs: one ``w4a16_add_norm_linear(x, r) -> s, z`` (the
      first linear's weights and ``prepared``, the norm's weight as "norm", the second's
      bias as "b.bias" and ``prepared_b``, eps, ``gate_up``), the norm split over the two
      W4A16 decode kernels where they run (triton_gemm.w4a16_add_norm_linear: at batch 1,
      where it was measured faster: 8B int4 decode on an H100, 471.5 against 464 tok/s;
      bench/RESULTS.md, twelfth session). ``OPTIMIZER_FUSE_ADD_NORM=0`` (read when the
      engine is built) keeps them apart.

    (Also tried and removed: silu_mul folded into the down projection's W4A16 input load.
    Measured on an H200 it made 8B int4 decode at batch 1 slower, 420 -> 389 tok/s: the
    silu sits on the kernel's per-block latency chain in every N-tile program. And the
    (add_)rms_norm folded into the next W4A16 kernel's staging of x: 385 vs 469 tok/s,
    since every CTA of the projection redoes the norm over the whole row; branch
    exp/next-session.)
    """
    readers = _readers(nodes)
    fuse_silu = os.environ.get("OPTIMIZER_FUSE_GU_SILU", "1") != "0"
    fuse_rope = os.environ.get("OPTIMIZER_FUSE_QKV_ROPE", "0") == "1"
    out, skip = [], set()
    for i, n in enumerate(nodes):
        if i in skip:
            continue
        group = _linear_rope_attention(nodes, readers, i, set(outputs)) if fuse_rope else None
        if group is not None:
            rope, attn = nodes[group[1]], nodes[group[3]]
            attrs = {**dict(attn.attrs), **{k: rope.attr(k) for k in ("theta", "scaling")},
                     "prepared": n.outputs[0]}
            out.append(Node.make("w4a16_rope_attention", [n.inputs[0], rope.inputs[1]],
                                 attn.outputs, weights=dict(n.weights), attrs=attrs))
            skip.update(group[1:])
            continue
        j = _linear_silu(nodes, readers, i, set(outputs)) if fuse_silu else None
        if j is not None:
            out.append(Node.make("w4a16_silu", n.inputs, nodes[j].outputs,
                                 weights=dict(n.weights),
                                 attrs={**dict(n.attrs), "prepared": n.outputs[0]}))
            skip.add(j)
            continue
        group = _rope_split_attention(nodes, readers, i)
        if group is not None:
            rope, split, attn = (nodes[j] for j in group)
            attrs = {**dict(attn.attrs), **{k: rope.attr(k) for k in ("theta", "scaling")}}
            out.append(Node.make("rope_qk_attention", rope.inputs, attn.outputs, attrs=attrs))
            skip.update(group[1:])
            continue
        out.append(n)
    if os.environ.get("OPTIMIZER_FUSE_ADD_NORM", "1") != "0":
        out = _group_add_norm(out, set(outputs))
    return out


def _readers(nodes: list[Node]) -> dict[str, list[int]]:
    """Each value's reading nodes, by index."""
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.inputs:
            readers.setdefault(name, []).append(i)
    return readers


def _group_add_norm(nodes: list[Node], graph_outputs: set[str]) -> list[Node]:
    """`group_nodes`' w4a16_linear -> add_rms_norm -> W4A16 projection groups."""
    readers = _readers(nodes)

    def only_reader(name: str) -> int | None:
        users = readers.get(name, [])
        return users[0] if len(users) == 1 and name not in graph_outputs else None

    made = {name: i for i, n in enumerate(nodes) for name in n.outputs}
    out, skip = [], set()
    for i, lin in enumerate(nodes):
        if i in skip:
            continue
        j = only_reader(lin.outputs[0]) if (
            lin.op == "w4a16_linear" and len(lin.inputs) == 1 and len(lin.outputs) == 1) else None
        norm = nodes[j] if j is not None else None
        if (norm is None or norm.op != "add_rms_norm" or len(norm.outputs) != 2
                or norm.inputs.count(lin.outputs[0]) != 1):
            out.append(lin)
            continue
        c = only_reader(norm.outputs[1])
        nxt = nodes[c] if c is not None else None
        if nxt is None or nxt.op not in ("w4a16_linear", "w4a16_silu") or (
                nxt.inputs != (norm.outputs[1],) or len(nxt.outputs) != 1):
            out.append(lin)
            continue
        residual = next(v for v in norm.inputs if v != lin.outputs[0])
        if made.get(residual, -1) > i:               # the group runs where the linear was
            out.append(lin)
            continue
        weights = {**dict(lin.weights), "norm": norm.weight("weight")}
        if nxt.weight("bias"):
            weights["b.bias"] = nxt.weight("bias")
        attrs = {"prepared": lin.attr("prepared", lin.outputs[0]), "eps": norm.attr("eps"),
                 "prepared_b": nxt.attr("prepared", nxt.outputs[0]),
                 "gate_up": nxt.op == "w4a16_silu"}
        out.append(Node.make("w4a16_add_norm_linear", [lin.inputs[0], residual],
                             [norm.outputs[0], nxt.outputs[0]], weights=weights, attrs=attrs))
        skip.update((j, c))
    return out


def _linear_silu(nodes: list[Node], readers: dict[str, list[int]], i: int,
                 graph_outputs: set[str]) -> int | None:
    """The index of the silu_mul that alone reads node i's output, when node i is a
    w4a16_linear whose output is not a graph output; else None."""
    lin = nodes[i]
    if lin.op != "w4a16_linear" or len(lin.outputs) != 1 or lin.outputs[0] in graph_outputs:
        return None
    users = readers.get(lin.outputs[0], [])
    if len(users) != 1:
        return None
    act = nodes[users[0]]
    if act.op != "silu_mul" or act.inputs != lin.outputs:
        return None
    return users[0]


def _linear_rope_attention(nodes: list[Node], readers: dict[str, list[int]], i: int,
                           graph_outputs: set[str]) -> tuple[int, int, int, int] | None:
    """(i, rope, split, attention) indices when node i is a one-input w4a16_linear whose
    output, not a graph output, is read only by the rope_qk of a rope -> split -> attention
    group; else None."""
    lin = nodes[i]
    if (lin.op != "w4a16_linear" or len(lin.inputs) != 1 or len(lin.outputs) != 1
            or lin.outputs[0] in graph_outputs):
        return None
    users = readers.get(lin.outputs[0], [])
    if len(users) != 1 or nodes[users[0]].inputs[0] != lin.outputs[0]:
        return None
    group = _rope_split_attention(nodes, readers, users[0])
    if group is None or nodes[group[0]].inputs.count(lin.outputs[0]) != 1:
        return None
    return (i, *group)


def _rope_split_attention(nodes: list[Node], readers: dict[str, list[int]],
                          i: int) -> tuple[int, int, int] | None:
    """(i, split, attention) indices when node i starts the group `group_nodes` fuses."""
    rope = nodes[i]
    users = readers.get(rope.outputs[0], [])
    if rope.op != "rope_qk" or len(users) != 1:
        return None
    j = users[0]
    split = nodes[j]
    if split.op != "split" or len(split.outputs) != 3:
        return None
    users = [readers.get(v, []) for v in split.outputs]
    if any(len(u) != 1 for u in users) or len({u[0] for u in users}) != 1:
        return None
    a = users[0][0]
    attn = nodes[a]
    if (attn.op != "attention" or tuple(attn.inputs[:3]) != tuple(split.outputs)
            or attn.inputs[3] != rope.inputs[1]):
        return None
    if any(attn.attr(k) != rope.attr(k) for k in ("n_heads", "n_kv_heads", "head_dim")):
        return None
    return i, j, a


OPS: dict[str, OpFn] = {
    "embedding": lambda eng, n, xs, s: F.embedding(xs[0], eng.weights[n.weight("weight")]),
    "rms_norm": _rms_norm,
    "add_rms_norm": _add_rms_norm,
    "linear": _linear,
    "w4a16_linear": _w4a16,
    "w4a16_silu": _w4a16_silu,
    "qlinear": _qlinear,
    "qlinear_w8a8": _w8a8,
    "rope": _rope,
    "rope_qk": _rope_qk,
    "attention": _attention,
    "rope_qk_attention": _rope_qk_attention,
    "w4a16_rope_attention": _w4a16_rope_attention,
    "w4a16_add_norm_linear": _w4a16_add_norm_linear,
    "split": _split,
    "silu_mul": _silu_mul,
    "silu_mul2": lambda eng, n, xs, s: F.silu(xs[0]) * xs[1],
    "silu": lambda eng, n, xs, s: F.silu(xs[0]),
    "mul": lambda eng, n, xs, s: xs[0] * xs[1],
    "add": lambda eng, n, xs, s: xs[0] + xs[1],
}
