"""W8A8 linear reference (SmoothQuant): int8 weights per output channel, int8 activations
per token, quantized dynamically.

    s_x[t] = max_k |x[t, k]| / 127,  x_q = round(x / s_x) in [-127, 127]
    y[t, n] = (sum_k x_q[t, k] * w_q[n, k]) * s_x[t] * s_w[n] + bias[n]

The integer dot products are exact (float64 holds them exactly for K < 2^38).
"""

from __future__ import annotations

import torch


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [T, K] -> (int8 [T, K], float32 scales [T, 1]); an all-zero row gets scale 1."""
    amax = x.float().abs().amax(-1, keepdim=True)
    # a tensor divisor: on CUDA, PyTorch divides by a Python scalar as a multiplication by its
    # reciprocal (up to 1 ulp off); tensor / tensor is the correctly rounded quotient on every
    # device, so the scales do not depend on where the reference runs
    scale = torch.where(amax > 0, amax / torch.full_like(amax, 127.0), torch.ones_like(amax))
    return torch.clamp(torch.round(x.float() / scale), -127, 127).to(torch.int8), scale


def w8a8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """x: [T, K] float, w_q: int8 [N, K], w_scales: [N] -> float32 [T, N]."""
    x_q, s_x = quantize_per_token(x)
    acc = x_q.double() @ w_q.double().T                               # exact integers
    y = (acc * s_x.double() * w_scales.double()[None, :]).float()
    return y + bias.float() if bias is not None else y


def w8a8_linear_f64(x: torch.Tensor, w_q: torch.Tensor, w_scales: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """Float64 [T, N]: `w8a8_linear` with the scaling and the bias in float64 (for tests)."""
    x_q, s_x = quantize_per_token(x)
    acc = x_q.double() @ w_q.double().T                               # exact integers
    y = acc * s_x.double() * w_scales.double()[None, :]
    return y + bias.double() if bias is not None else y
