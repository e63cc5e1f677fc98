"""GEMV reference: ``y = x @ W^T + bias`` with float64 math (the exact result the kernel's
float32 accumulation approximates), rounded once to x's dtype."""

from __future__ import annotations

import torch


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K], weight [N, K], bias [N] or None -> [M, N] in x's dtype."""
    y = x.double() @ weight.double().T
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)
