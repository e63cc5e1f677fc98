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

Preconditions: x [T, heads * D] with unit stride along the last dim, positions [T] (int32 or
int64), freqs [D/2] float32 (reference.py ``inv_freq``, scaling already applied), D even.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..device_info import sm_count


@triton.jit
def _rope_kernel(x_ptr, pos_ptr, f_ptr, y_ptr, N_ROT, N_HEADS, stride_x, stride_y,
                 HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)                # [BH] heads
    j = tl.arange(0, BLOCK_HALF)                                          # [BJ]
    mj = j < HALF
    a = tl.load(pos_ptr + t).to(tl.float32) * tl.load(f_ptr + j, mask=mj, other=0.0)
    c = tl.cos(a)[None, :]
    s = tl.sin(a)[None, :]
    col = h[:, None] * (2 * HALF) + j[None, :]                            # [BH, BJ]
    m = (h < N_HEADS)[:, None] & mj[None, :]
    x1 = tl.load(x_ptr + t * stride_x + col, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + t * stride_x + col + HALF, mask=m, other=0.0).to(tl.float32)
    rot = (h < N_ROT)[:, None]
    y1 = tl.where(rot, x1 * c - x2 * s, x1)
    y2 = tl.where(rot, x2 * c + x1 * s, x2)
    tl.store(y_ptr + t * stride_y + col, y1.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(y_ptr + t * stride_y + col + HALF, y2.to(y_ptr.dtype.element_ty), mask=m)


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
    bh = 16   # heads per program: fewer when T is small, so that >= 2 programs per SM
    while bh > 1 and t * triton.cdiv(n_heads, bh) < 2 * sm_count(x.device, off_gpu=4):
        bh //= 2
    bj = triton.next_power_of_2(half)
    warps = max(1, min(8, bh * bj * x.element_size() // 512))   # 16 B per thread, each half
    grid = (t, triton.cdiv(n_heads, bh))
    _rope_kernel[grid](x, positions.contiguous(), freqs.float().contiguous(), y, n_rot,
                       n_heads, x.stride(0), y.stride(0), HALF=half, BLOCK_HALF=bj,
                       BLOCK_H=bh, num_warps=warps)
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
