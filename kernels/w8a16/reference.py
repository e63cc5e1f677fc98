"""W8A16 linear reference: y[M, N] = x[M, K] @ W^T (+ bias), W 8-bit quantized.

Storage as in kernels/qlinear/reference.py with bits=8: codes uint8 [N, K] (one byte per
code), float16 scales [N, G], uint8 zeros [N, G] or None (symmetric, z = 128), ``w[n, k] =
(q[n, k] - z[n, g]) * s[n, g]`` with ``g = g_idx[k]`` or ``k // group_size`` (group_size 0:
one group per output channel; the last group may be partial). Works on any device.
"""

from __future__ import annotations

import torch

from ..qlinear import reference as qlinear_ref

BITS = 8


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               g_idx: torch.Tensor | None, group_size: int, k: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[N, K] weight in ``dtype``, computed in float32 ((q - z) * s), then rounded once."""
    return qlinear_ref.dequantize(qweight, scales, zeros, g_idx, BITS, group_size, k).to(dtype)


def w8a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor | None, g_idx: torch.Tensor | None,
                 bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """x [..., K] (bf16/fp16) -> [..., N] in x.dtype: dequantize to x.dtype, then matmul."""
    return qlinear_ref.qlinear(x, qweight, scales, zeros, g_idx,
                               None if bias is None else bias.to(x.dtype), BITS, group_size)


def w8a16_linear_f64(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                     zeros: torch.Tensor | None, g_idx: torch.Tensor | None,
                     bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """Float64 [..., N] = x @ W^T + bias with W exact (as dequantized in float32); for tests."""
    return qlinear_ref.qlinear_f64(x, qweight, scales, zeros, g_idx, bias, BITS, group_size)
