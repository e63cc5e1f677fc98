"""Weight-only quantized linear (W{2,3,4,8}A16) reference: storage layout and math.

Codes are unsigned ``q in [0, 2^bits)``; the weight is ``w[n, k] = (q[n, k] - z[n, g]) *
s[n, g]`` with ``g = g_idx[k]`` (default ``k // group_size``; the last group may be
partial). Symmetric schemes store no zeros: ``z = 2^(bits-1)``. Scales are float16.

Codes are bit-packed along k, row by row, least significant bit first: code k of a row
occupies bits ``[k*bits, (k+1)*bits)`` of the row's little-endian bit stream, stored as
``ceil(K*bits/8)`` uint8 bytes (for 4 bits: byte j = code 2j | code 2j+1 << 4).
"""

from __future__ import annotations

import torch


def packed_width(k: int, bits: int) -> int:
    return (k * bits + 7) // 8


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """q: [N, K] integer codes in [0, 2^bits) -> uint8 [N, ceil(K*bits/8)]."""
    n, k = q.shape
    if bits == 8:
        return q.to(torch.uint8)
    if bits == 4:   # byte j = code 2j | code 2j+1 << 4 (the bit stream below, in one step)
        q = torch.nn.functional.pad(q.to(torch.uint8), (0, k % 2))
        return q[:, 0::2] | (q[:, 1::2] << 4)
    shifts = torch.arange(bits, dtype=torch.int64, device=q.device)
    stream = ((q.to(torch.int64)[..., None] >> shifts) & 1).reshape(n, k * bits)
    pad = packed_width(k, bits) * 8 - k * bits
    stream = torch.nn.functional.pad(stream, (0, pad)).reshape(n, -1, 8)
    return (stream << torch.arange(8, device=q.device)).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of `pack_bits`: uint8 [N, ceil(K*bits/8)] -> int64 [N, K]."""
    if bits == 8:
        return packed[:, :k].to(torch.int64)
    if bits == 4:
        p = packed.to(torch.int64)
        return torch.stack([p & 15, p >> 4], dim=-1).reshape(p.shape[0], -1)[:, :k]
    n = packed.shape[0]
    bit = torch.arange(8, device=packed.device)
    stream = ((packed.to(torch.int64)[..., None] >> bit) & 1).reshape(n, -1)
    codes = stream[:, : k * bits].reshape(n, k, bits)
    return (codes << torch.arange(bits, device=packed.device)).sum(-1)


def group_index(k: int, group_size: int) -> torch.Tensor:
    """[K] group of each input channel; group_size 0 means one group (per channel)."""
    return torch.arange(k) // group_size if group_size else torch.zeros(k, dtype=torch.int64)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               g_idx: torch.Tensor | None, bits: int, group_size: int, k: int) -> torch.Tensor:
    """Float32 [N, K] weight from packed codes, scales [N, G], zeros [N, G] or None."""
    q = unpack_bits(qweight, bits, k).float()
    g = (g_idx if g_idx is not None else group_index(k, group_size)).long().to(scales.device)
    s = scales.float()[:, g]                                         # [N, K]
    z = zeros.float()[:, g] if zeros is not None else float(1 << (bits - 1))
    return (q - z) * s


def qlinear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
            zeros: torch.Tensor | None, g_idx: torch.Tensor | None, bias: torch.Tensor | None,
            bits: int, group_size: int) -> torch.Tensor:
    """x: [T, K] -> [T, N] = x @ dequantize(...).T + bias."""
    w = dequantize(qweight, scales, zeros, g_idx, bits, group_size, x.shape[-1])
    return torch.nn.functional.linear(x, w.to(x.dtype), bias)


def qlinear_f64(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                zeros: torch.Tensor | None, g_idx: torch.Tensor | None,
                bias: torch.Tensor | None, bits: int, group_size: int) -> torch.Tensor:
    """Float64 [..., N] = x @ W^T + bias with W exact (as dequantized in float32); the
    yardstick of the kernel tests."""
    w = dequantize(qweight, scales, zeros, g_idx, bits, group_size, x.shape[-1]).double()
    y = x.double() @ w.T
    return y + bias.double() if bias is not None else y
