"""SiLU-mul reference: ``y = silu(x[..., :F]) * x[..., F:]`` for x [..., 2F], with
``silu(a) = a * sigmoid(a)``; elementwise as eager PyTorch does it (silu, then mul, each
rounded to x's dtype). On float64 inputs it is the exact-math reference of the kernel."""

from __future__ import annotations

import torch


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2F] -> [..., F]."""
    f = x.shape[-1] // 2
    return torch.nn.functional.silu(x[..., :f]) * x[..., f:]
