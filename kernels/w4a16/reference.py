"""W4A16 linear reference: y[M, N] = x[M, K] @ W^T (+ bias), W int4 group-quantized.

Storage as in kernels/qlinear/reference.py (4 bits): ``w[n, k] = (q[n, k] - z[n, g]) *
s[n, g]``, ``g = g_idx[k]`` or ``k // group_size`` (the last group may be partial), codes
packed two per byte along K (byte j = code 2j | code 2j+1 << 4), float16 scales [N, G],
uint8 zeros [N, G] or None (symmetric, z = 8). Works on any device (no CPU-only helpers).
"""

from __future__ import annotations

import torch

from ..qlinear import reference as qlinear_ref

BITS = 4


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               g_idx: torch.Tensor | None, group_size: int, k: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[N, K] weight in ``dtype``, computed in float32 ((q - z) * s), then rounded once."""
    return qlinear_ref.dequantize(qweight, scales, zeros, g_idx, BITS, group_size, k).to(dtype)


def w4a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor | None, g_idx: torch.Tensor | None,
                 bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """x [..., K] (bf16/fp16) -> [..., N] in x.dtype: dequantize to x.dtype, then matmul."""
    return qlinear_ref.qlinear(x, qweight, scales, zeros, g_idx,
                               None if bias is None else bias.to(x.dtype), BITS, group_size)


def w4a16_linear_f64(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                     zeros: torch.Tensor | None, g_idx: torch.Tensor | None,
                     bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """Float64 [..., N] = x @ W^T + bias with W exact (as dequantized in float32); for tests."""
    return qlinear_ref.qlinear_f64(x, qweight, scales, zeros, g_idx, bias, BITS, group_size)
