"""RMSNorm reference: ``y = weight * (x / sqrt(mean(x^2, -1) + eps))``, computed in float32
and cast back to x's dtype before the weight multiply (as Hugging Face Llama does)."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., H], weight: [H]."""
    xf = x.float()
    var = xf.pow(2).mean(-1, keepdim=True)
    return weight * (xf * torch.rsqrt(var + eps)).to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: [..., H] (same dtype), weight: [H] -> (s, rms_norm(s)), s = x + residual
    (rounded to x's dtype, as eager PyTorch rounds it)."""
    s = x + residual
    return s, rms_norm(s, weight, eps)
