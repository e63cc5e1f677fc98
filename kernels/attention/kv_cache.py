"""Batched KV cache writes: ``k_cache[b, positions[b]] = k[b]`` (and the same for v).

Plain tensor indexing (one ``index_put_`` per cache): no host sync, so it can be captured in
a CUDA graph; positions are read on the device.
"""

from __future__ import annotations

import torch


def cache_write(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, positions: torch.Tensor) -> None:
    """k_cache, v_cache: [B, S_max, Hk, D]; k, v: [B, Hk*D]; positions: [B] int (each in
    [0, S_max): out-of-range positions are an error on the device)."""
    b, _, hk, d = k_cache.shape
    if k.shape != (b, hk * d) or v.shape != (b, hk * d) or positions.shape != (b,):
        raise ValueError(f"k {tuple(k.shape)}, v {tuple(v.shape)}, positions "
                         f"{tuple(positions.shape)}: expected ({b}, {hk * d}) and ({b},)")
    rows = torch.arange(b, device=k_cache.device)
    pos = positions.to(device=k_cache.device, dtype=torch.int64)
    k_cache[rows, pos] = k.view(b, hk, d).to(k_cache.dtype)
    v_cache[rows, pos] = v.view(b, hk, d).to(v_cache.dtype)
