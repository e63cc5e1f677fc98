"""RMSNorm and residual-add + RMSNorm in Triton, one program per row.

For a row x [H] (and residual r [H])::

    s = round_x(x + r)                                  (add_rms_norm only; float32 add)
    n = round_x(s * rsqrt(mean(s^2) + eps))             (float32 math)
    y = round_y(weight * n)                             (float32 multiply)

round_x rounds to x's dtype, round_y to ``promote_types(x.dtype, weight.dtype)``: the
semantics of reference.py (``rms_norm``, ``add_rms_norm``), which round in the same places.
The whole row sits in registers (BLOCK = next power of two >= H, 16-byte vector loads), so x
is read once and s, y written once: 2 (3 with the residual) reads and 1 (2) writes of T*H.

Preconditions: x, residual [T, H] (any leading shape is flattened; unit stride along H),
residual of x's dtype, weight [H] contiguous, H <= 65536. Under PDL (kernels/pdl.py) the
weight is read before the wait for the previous kernel: it must be a weight, not something
the previous kernel writes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import pdl

MAX_H = 65536


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, s_ptr, y_ptr, H, stride_x, stride_r, stride_s,
                     stride_y, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)   # a weight: before the wait
    pdl.wait(PDL)
    pdl.release(PDL)
    row = tl.program_id(0).to(tl.int64)
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(s_ptr + row * stride_s + offs, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / H + eps)
    n = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + row * stride_y + offs, (w * n).to(y_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, h: int) -> torch.Tensor:
    t2 = t.reshape(-1, h)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
            s_out: torch.Tensor | None, y_out: torch.Tensor | None):
    h = x.shape[-1]
    if weight.shape != (h,):
        raise ValueError(f"weight shape {tuple(weight.shape)}, expected ({h},)")
    if h > MAX_H:
        raise ValueError(f"hidden size {h} > {MAX_H}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual {residual.dtype} {tuple(residual.shape)} does not match "
                         f"x {x.dtype} {tuple(x.shape)}")
    x2 = _rows(x, h)
    t = x2.shape[0]
    y_dtype = torch.promote_types(x.dtype, weight.dtype)
    y = y_out if y_out is not None else torch.empty(x.shape, dtype=y_dtype, device=x.device)
    if y.dtype != y_dtype or y.shape != x.shape or not y.is_contiguous():
        raise ValueError(f"y_out must be a contiguous {y_dtype} {tuple(x.shape)} tensor")
    r2 = s = x2
    if residual is not None:
        r2 = _rows(residual, h)
        s = s_out if s_out is not None else torch.empty_like(x)
        if s.dtype != x.dtype or s.shape != x.shape or not s.is_contiguous():
            raise ValueError(f"s_out must be a contiguous {x.dtype} {tuple(x.shape)} tensor")
    s2, y2 = s.view(-1, h), y.view(-1, h)
    if t > 0:
        block = triton.next_power_of_2(h)
        warps = min(16, max(1, block * x.element_size() // 2048))   # ~4 x 16 B per thread
        _rms_norm_kernel[(t,)](x2, r2, weight.contiguous(), s2, y2, h, x2.stride(0),
                               r2.stride(0), s2.stride(0), y2.stride(0), float(eps),
                               HAS_RES=residual is not None, BLOCK=block, num_warps=warps,
                               **pdl.launch_args(x2))
    return s, y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., H], weight [H] -> y [..., H] (dtype promote(x, weight)); see the module doc."""
    return _launch(x, None, weight, eps, None, out)[1]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                 s_out: torch.Tensor | None = None,
                 y_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, y) with s = x + residual [..., H] and y = rms_norm(s). ``s_out`` may be x or
    residual itself (each program reads its row before writing it)."""
    return _launch(x, residual, weight, eps, s_out, y_out)
