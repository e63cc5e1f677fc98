"""Rotary position embedding reference (the rotate-half convention of Hugging Face).

For head dim D and frequencies ``f_j = theta^(-2j/D)`` (j < D/2, possibly rescaled), a
position p rotates each pair (x_j, x_{j+D/2}) by the angle ``p * f_j``::

    y = x * cos(p f) + rotate_half(x) * sin(p f),  rotate_half(x) = [-x2, x1]
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch


def inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None) -> torch.Tensor:
    """[D/2] float32 frequencies; ``scaling`` follows HF ``rope_scaling`` (default, linear,
    llama3) or llama.cpp's per-frequency divisors (``freq_factors``)."""
    f = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return f
    if kind == "freq_factors":   # llama.cpp's rope_freqs tensor: one divisor per frequency
        return f / torch.tensor(scaling["factors"], dtype=torch.float32)
    factor = float(scaling["factor"])
    if kind == "linear":
        return f / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / f
        scaled = torch.where(wavelen > old / low, f / factor, f)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) * ~(wavelen > old / low)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_type '{kind}'")


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x: [T, n*D], positions: [T] int64, freqs: [D/2] -> [T, n*D]."""
    t = x.shape[0]
    half = freqs.shape[0]
    xh = x.view(t, -1, 2 * half)                                  # [T, n, D]
    ang = positions.float()[:, None] * freqs[None, :]              # [T, D/2]
    emb = torch.cat([ang, ang], dim=-1)[:, None, :]                # [T, 1, D]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    rot = torch.cat([-xh[..., half:], xh[..., :half]], dim=-1)
    return (xh * cos + rot * sin).reshape(x.shape)


def rope_qk(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, n_heads: int,
            n_kv_heads: int, head_dim: int) -> torch.Tensor:
    """x: [T, (Hq + 2 Hk) D] (q heads, k heads, v heads) -> q and k rotated, v unchanged."""
    qk = (n_heads + n_kv_heads) * head_dim
    return torch.cat([rope(x[:, :qk].contiguous(), positions, freqs), x[:, qk:]], dim=-1)


def rope_qk_cache(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor,
                  n_heads: int, n_kv_heads: int, head_dim: int, k_cache: torch.Tensor,
                  v_cache: torch.Tensor) -> torch.Tensor:
    """The decode step's rope + cache write: x [B, (Hq + 2 Hk) D] (row b: sequence b at
    positions[b]) -> q [B, Hq D] rotated; k_cache[b, positions[b]] = rotated k heads and
    v_cache[b, positions[b]] = v heads ([>= B, S, Hk, D], positions < S)."""
    from ..attention.kv_cache import cache_write
    b, d = x.shape[0], head_dim
    y = rope_qk(x, positions, freqs, n_heads, n_kv_heads, head_dim)
    qd, kd = n_heads * d, n_kv_heads * d
    cache_write(k_cache[:b], v_cache[:b], y[:, qd:qd + kd], y[:, qd + kd:], positions)
    return y[:, :qd].contiguous()
