"""SiLU-mul in Triton: ``y[t, j] = silu(x[t, j]) * x[t, F + j]`` for x [T, 2F] -> y [T, F].

float32 math inside (``a / (1 + exp(-a)) * b``), one rounding to x's dtype at the store
(eager PyTorch rounds twice: after silu and after the mul). Grid (T, cdiv(F, BLOCK)), BLOCK
chosen so that even T = 1 gives a few programs per SM; each thread moves 16-byte vectors.

Preconditions: x [..., 2F] with unit stride along the last dim (rows may be strided).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import pdl
from ..device_info import sm_count


@triton.jit
def _silu_mul_kernel(x_ptr, y_ptr, F, stride_x, stride_y, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    pdl.wait(PDL)
    pdl.release(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < F
    a = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + row * stride_x + F + offs, mask=mask, other=0.0).to(tl.float32)
    y = a / (1.0 + tl.exp(-a)) * b
    tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def pick_block(t: int, f: int, sms: int) -> int:
    """Largest BLOCK in 256..4096 that still gives >= 2 programs per SM (256 if none)."""
    block = 4096
    while block > 256 and t * triton.cdiv(f, block) < 2 * sms:
        block //= 2
    return block


def silu_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., 2F] -> [..., F] in x's dtype; see the module doc."""
    if x.shape[-1] % 2:
        raise ValueError(f"last dim {x.shape[-1]} is odd")
    f = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * f)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    t = x2.shape[0]
    shape = (*x.shape[:-1], f)
    y = out if out is not None else torch.empty(shape, dtype=x.dtype, device=x.device)
    if y.dtype != x.dtype or tuple(y.shape) != shape or not y.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} {shape} tensor")
    if t > 0 and f > 0:
        block = pick_block(t, f, sm_count(x.device, off_gpu=4))
        warps = max(1, min(8, block * x.element_size() // 512))    # 16 B per thread
        _silu_mul_kernel[(t, triton.cdiv(f, block))](x2, y.view(-1, f), f, x2.stride(0), f,
                                                       BLOCK=block, num_warps=warps,
                                                       **pdl.launch_args(x2))
    return y
