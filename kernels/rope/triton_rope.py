"""Rotary position embedding in Triton (rotate-half, as reference.py ``rope``).

Row t of x holds heads of size D = 2 * half. For the first ``n_rot`` heads and j < half::

    a = float32(positions[t]) * freqs[j]                       (float32, as the reference)
    y[h, j]        = x[h, j] * cos(a) - x[h, j + half] * sin(a)
    y[h, j + half] = x[h, j + half] * cos(a) + x[h, j] * sin(a)

in float32, rounded once to x's dtype; the remaining heads are copied unchanged. The
reference rounds cos/sin and each product to x's dtype, so bf16 results differ by a few
ulps. ``tl.cos``/``tl.sin`` lower to libdevice's full-range ``__nv_cosf``/``__nv_sinf``
(not the ``.approx`` instructions, which lose accuracy for large angles).

``rope_qk`` is the fused-QKV form: x [T, (Hq + 2 Hk) D], q and k heads rotated, v copied.
Grid (T, cdiv(heads, BLOCK_H)); cos/sin are computed once per program for its BLOCK_H heads.

``rope_qk_cache`` is the decode step's form: row b of x is sequence b's new token; it writes
the rotated q heads to q_out [B, Hq D] and the rotated k and the v heads straight into the KV
cache at ``[b, positions[b]]`` (reference.py ``rope_qk_cache``): one launch instead of the
rope, two cache writes and a copy of q. Positions at or past the cache's length are not
written (the caller sizes the cache).

Preconditions: x [T, heads * D] with unit stride along the last dim, positions [T] (int32 or
int64), freqs [D/2] float32 (reference.py ``inv_freq``, scaling already applied), D even.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import pdl
from ..device_info import sm_count


@triton.jit
def _rotated(x_row, pos, f_ptr, h, N_ROT, N_HEADS, HALF: tl.constexpr,
             BLOCK_HALF: tl.constexpr):
    """Heads h [BH] of the row at x_row, token position pos: (y1, y2) float32 [BH, BJ], the
    first and second halves of each head (rotated for h < N_ROT, copied otherwise), with
    their column offsets in the row and the mask of heads < N_HEADS."""
    j = tl.arange(0, BLOCK_HALF)                                          # [BJ]
    mj = j < HALF
    a = pos.to(tl.float32) * tl.load(f_ptr + j, mask=mj, other=0.0)
    c = tl.cos(a)[None, :]
    s = tl.sin(a)[None, :]
    col = h[:, None] * (2 * HALF) + j[None, :]                            # [BH, BJ]
    m = (h < N_HEADS)[:, None] & mj[None, :]
    x1 = tl.load(x_row + col, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + col + HALF, mask=m, other=0.0).to(tl.float32)
    rot = (h < N_ROT)[:, None]
    y1 = tl.where(rot, x1 * c - x2 * s, x1)
    y2 = tl.where(rot, x2 * c + x1 * s, x2)
    return y1, y2, col, m


@triton.jit
def _rope_kernel(x_ptr, pos_ptr, f_ptr, y_ptr, N_ROT, N_HEADS, stride_x, stride_y,
                 HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                 PDL: tl.constexpr):
    pdl.wait(PDL)
    pdl.release(PDL)
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)                # [BH] heads
    y1, y2, col, m = _rotated(x_ptr + t * stride_x, tl.load(pos_ptr + t), f_ptr, h, N_ROT,
                              N_HEADS, HALF, BLOCK_HALF)
    tl.store(y_ptr + t * stride_y + col, y1.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(y_ptr + t * stride_y + col + HALF, y2.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rope_cache_kernel(x_ptr, pos_ptr, f_ptr, q_ptr, k_ptr, v_ptr, S, stride_x, stride_q,
                       stride_cb, stride_cs, stride_ch, HQ: tl.constexpr, HK: tl.constexpr,
                       HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                       PDL: tl.constexpr):
    pdl.wait(PDL)
    pdl.release(PDL)
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)                # [BH] heads
    j = tl.arange(0, BLOCK_HALF)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    y1, y2, col, m = _rotated(x_ptr + t * stride_x, pos, f_ptr, h, HQ + HK, HQ + 2 * HK, HALF,
                              BLOCK_HALF)
    y1 = y1.to(q_ptr.dtype.element_ty)
    y2 = y2.to(q_ptr.dtype.element_ty)
    is_q = (h < HQ)[:, None]
    is_k = ((h >= HQ) & (h < HQ + HK))[:, None]
    is_v = (h >= HQ + HK)[:, None]
    q_off = t * stride_q + col
    tl.store(q_ptr + q_off, y1, mask=m & is_q)
    tl.store(q_ptr + q_off + HALF, y2, mask=m & is_q)
    g = tl.where(h < HQ + HK, h - HQ, h - HQ - HK)                        # kv head
    c_off = t * stride_cb + pos * stride_cs + g[:, None] * stride_ch + j[None, :]
    in_cache = pos < S
    tl.store(k_ptr + c_off, y1, mask=m & is_k & in_cache)
    tl.store(k_ptr + c_off + HALF, y2, mask=m & is_k & in_cache)
    tl.store(v_ptr + c_off, y1, mask=m & is_v & in_cache)
    tl.store(v_ptr + c_off + HALF, y2, mask=m & is_v & in_cache)


def _heads_per_program(t: int, n_heads: int, device: torch.device) -> int:
    """16 heads per program, fewer when T is small, so that >= 2 programs per SM."""
    bh = 16
    while bh > 1 and t * triton.cdiv(n_heads, bh) < 2 * sm_count(device, off_gpu=4):
        bh //= 2
    return bh


def _launch(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, n_rot: int,
            n_heads: int, head_dim: int, out: torch.Tensor | None) -> torch.Tensor:
    t = x.shape[0]
    if x.dim() != 2 or x.shape[1] != n_heads * head_dim or head_dim % 2:
        raise ValueError(f"x {tuple(x.shape)} is not [T, {n_heads} * {head_dim}] "
                         f"(head_dim even)")
    if positions.shape != (t,) or freqs.shape != (head_dim // 2,):
        raise ValueError(f"positions {tuple(positions.shape)} / freqs {tuple(freqs.shape)}: "
                         f"expected ({t},) / ({head_dim // 2},)")
    if x.stride(1) != 1:
        x = x.contiguous()
    y = out if out is not None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.dtype != x.dtype or y.shape != x.shape or y.stride(1) != 1:
        raise ValueError(f"out must be a {x.dtype} {tuple(x.shape)} tensor, unit last stride")
    if t == 0:
        return y
    half = head_dim // 2
    bh = _heads_per_program(t, n_heads, x.device)
    bj = triton.next_power_of_2(half)
    warps = max(1, min(8, bh * bj * x.element_size() // 512))   # 16 B per thread, each half
    grid = (t, triton.cdiv(n_heads, bh))
    _rope_kernel[grid](x, positions.contiguous(), freqs.float().contiguous(), y, n_rot,
                       n_heads, x.stride(0), y.stride(0), HALF=half, BLOCK_HALF=bj,
                       BLOCK_H=bh, num_warps=warps, **pdl.launch_args(x))
    return y


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, n_heads: int,
         head_dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, n_heads * D] -> every head rotated; ``out`` may be x (in place)."""
    return _launch(x, positions, freqs, n_heads, n_heads, head_dim, out)


def rope_qk(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, n_heads: int,
            n_kv_heads: int, head_dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, (Hq + 2 Hk) D] -> q and k heads rotated, v heads copied; ``out`` may be x."""
    return _launch(x, positions, freqs, n_heads + n_kv_heads, n_heads + 2 * n_kv_heads,
                   head_dim, out)


def rope_qk_cache(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor,
                  n_heads: int, n_kv_heads: int, head_dim: int, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, q_out: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, (Hq + 2 Hk) D] (row b: sequence b's new token at positions[b]) -> q [B, Hq D]
    rotated; rotated k and v written to k_cache / v_cache [>= B, S, Hk, D] at [b,
    positions[b]] (unit stride along D). ``q_out``: optional [B, Hq D] tensor to write."""
    b, d, hq, hk = x.shape[0], head_dim, n_heads, n_kv_heads
    if x.dim() != 2 or x.shape[1] != (hq + 2 * hk) * d or d % 2:
        raise ValueError(f"x {tuple(x.shape)} is not [B, ({hq} + 2 * {hk}) * {d}] "
                         f"(head_dim even)")
    if positions.shape != (b,) or freqs.shape != (d // 2,):
        raise ValueError(f"positions {tuple(positions.shape)} / freqs {tuple(freqs.shape)}: "
                         f"expected ({b},) / ({d // 2},)")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if (c.dim() != 4 or c.shape[0] < b or c.shape[2:] != (hk, d) or c.stride(3) != 1
                or c.dtype != x.dtype):
            raise ValueError(f"{name} {c.dtype} {tuple(c.shape)}: expected {x.dtype} "
                             f"[>= {b}, S, {hk}, {d}] with unit stride along D")
    if k_cache.stride() != v_cache.stride() or k_cache.shape != v_cache.shape:
        raise ValueError("k_cache and v_cache must have the same shape and strides")
    if x.stride(1) != 1:
        x = x.contiguous()
    q = q_out if q_out is not None else torch.empty((b, hq * d), dtype=x.dtype,
                                                    device=x.device)
    if q.shape != (b, hq * d) or q.dtype != x.dtype or q.stride(1) != 1:
        raise ValueError(f"q_out must be a {x.dtype} ({b}, {hq * d}) tensor")
    if b == 0:
        return q
    heads = hq + 2 * hk
    bh = _heads_per_program(b, heads, x.device)
    bj = triton.next_power_of_2(d // 2)
    warps = max(1, min(8, bh * bj * x.element_size() // 512))
    _rope_cache_kernel[(b, triton.cdiv(heads, bh))](
        x, positions.contiguous(), freqs.float().contiguous(), q, k_cache, v_cache,
        k_cache.shape[1], x.stride(0), q.stride(0), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), HQ=hq, HK=hk, HALF=d // 2, BLOCK_HALF=bj, BLOCK_H=bh,
        num_warps=warps, **pdl.launch_args(x))
    return q
