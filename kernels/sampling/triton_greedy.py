"""The end of a greedy decode step in one Triton launch: per row b of logits [B, V],
``tokens[b] = argmax_v logits[b, v]`` (the first of equal maxima, as torch.argmax), then
``positions[b] += 1`` and ``lengths[b] = positions[b] + 1`` (int32: the next step's
attention lengths).

Why: on an H200 PyTorch's argmax over Llama-3's 128256 logits ran as one 28 µs reduction per
step, and the copies and position arithmetic around it as four more small launches with
gaps (bench/decode_profile.py). Here grid (B, P): program (b, p) reduces a BLOCK slice to a
(max, first index) pair; the last program of row b to arrive (an atomic counter, reset
after use) reduces the P pairs in order and writes the row's token, position and length.
NaN counts as +inf (torch.argmax ranks it above +inf: the two differ only on a row
holding both; a NaN logit is a broken model anyway).
Launched with PDL (kernels/pdl.py). The reference is `reference.greedy_step` (torch's ops).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import pdl

BLOCK = 4096


@triton.jit
def _greedy_kernel(logits_ptr, stride_b, V, ws_max_ptr, ws_idx_ptr, count_ptr, tokens_ptr,
                   pos_ptr, len_ptr, P, BLOCK: tl.constexpr, BLOCK_P: tl.constexpr,
                   PDL: tl.constexpr):
    pdl.wait(PDL)
    pdl.release(PDL)
    b = tl.program_id(0)
    p = tl.program_id(1)
    offs = p * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(logits_ptr + b.to(tl.int64) * stride_b + offs, mask=offs < V,
                other=float("-inf")).to(tl.float32)
    x = tl.where(x != x, float("inf"), x)            # NaN counts as +inf
    best = tl.max(x, 0)
    idx = tl.min(tl.where(x == best, offs, V), 0)    # the first of equal maxima
    tl.store(ws_max_ptr + b * P + p, best)
    tl.store(ws_idx_ptr + b * P + p, idx)
    tl.debug_barrier()
    count = tl.atomic_add(count_ptr + b, 1, sem="acq_rel", scope="gpu")
    if count == P - 1:                               # last of the row: reduce the P pairs
        ps = tl.arange(0, BLOCK_P)
        m = tl.load(ws_max_ptr + b * P + ps, mask=ps < P, other=float("-inf"),
                    cache_modifier=".cg")
        i = tl.load(ws_idx_ptr + b * P + ps, mask=ps < P, other=V, cache_modifier=".cg")
        top = tl.max(m, 0)
        tok = tl.min(tl.where(m == top, i, V), 0)    # slices in order: first index wins
        tl.store(tokens_ptr + b, tok.to(tl.int64))
        pos = tl.load(pos_ptr + b) + 1
        tl.store(pos_ptr + b, pos)
        tl.store(len_ptr + b, (pos + 1).to(tl.int32))
        tl.atomic_xchg(count_ptr + b, 0)


def greedy_step(logits: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                lengths: torch.Tensor, counters: torch.Tensor) -> None:
    """logits [B, V] (unit stride along V) -> tokens [B] int64 (argmax), positions [B]
    int64 (+1 in place), lengths [B] int32 (= the new positions + 1); counters: int32 [>= B]
    zeros, kept zero between calls (the kernel resets what it uses)."""
    b, v = logits.shape
    if logits.stride(1) != 1:
        raise ValueError(f"greedy_step: logits {tuple(logits.shape)} strides "
                         f"{logits.stride()}: expected unit stride along V")
    for name, t, dt in (("tokens", tokens, torch.int64), ("positions", positions, torch.int64),
                        ("lengths", lengths, torch.int32)):
        if t.shape != (b,) or t.dtype != dt or not t.is_contiguous():
            raise ValueError(f"greedy_step: {name} {t.dtype} {tuple(t.shape)}: expected "
                             f"contiguous {dt} ({b},)")
    if counters.dtype != torch.int32 or counters.numel() < b:
        raise ValueError(f"greedy_step: counters must be int32 with at least {b} entries")
    if b == 0:
        return
    p = triton.cdiv(v, BLOCK)
    ws_max = torch.empty((b, p), dtype=torch.float32, device=logits.device)
    ws_idx = torch.empty((b, p), dtype=torch.int32, device=logits.device)
    _greedy_kernel[(b, p)](logits, logits.stride(0), v, ws_max, ws_idx, counters, tokens,
                           positions, lengths, p, BLOCK=BLOCK,
                           BLOCK_P=max(16, triton.next_power_of_2(p)), num_warps=4,
                           **pdl.launch_args(logits))

