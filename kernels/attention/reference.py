"""Causal grouped-query attention reference over a KV cache.

``out[t, h] = softmax_s(q[t,h] . k[s,g] / sqrt(D) + mask[t,s]) @ v[s,g]`` with
``g = h // (Hq/Hk)``; s may attend to t when ``pos_k(s) <= pos_q(t)`` and, with a sliding
window W, ``pos_q(t) - pos_k(s) < W``. Softmax in float32.
"""

from __future__ import annotations

import torch


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
              n_heads: int, n_kv_heads: int, window: int | None = None) -> torch.Tensor:
    """q: [T, Hq*D]; k, v: [S, Hk*D] holding positions 0..S-1; q_pos: [T] -> [T, Hq*D]."""
    t, s = q.shape[0], k.shape[0]
    d = q.shape[1] // n_heads
    qh = q.view(t, n_heads, d).transpose(0, 1)                                 # [Hq, T, D]
    rep = n_heads // n_kv_heads
    kh = k.view(s, n_kv_heads, d).transpose(0, 1).repeat_interleave(rep, 0)   # [Hq, S, D]
    vh = v.view(s, n_kv_heads, d).transpose(0, 1).repeat_interleave(rep, 0)
    k_pos = torch.arange(s, device=q.device)
    allowed = k_pos[None, :] <= q_pos[:, None]                                 # [T, S]
    if window is not None:
        allowed &= (q_pos[:, None] - k_pos[None, :]) < window
    scores = (qh.float() @ kh.float().transpose(1, 2)) * d ** -0.5             # [Hq, T, S]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return (probs @ vh).transpose(0, 1).reshape(t, n_heads * d)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     lengths: torch.Tensor, n_heads: int, n_kv_heads: int,
                     window: int | None = None, scale: float | None = None) -> torch.Tensor:
    """One new token per sequence over a batched cache, by ``attention`` per sequence.

    q: [B, Hq*D]; k_cache, v_cache: [B, S_max, Hk, D] with sequence b's positions
    0 .. lengths[b]-1 valid (its new token's k/v at lengths[b]-1); lengths: [B] -> [B, Hq*D].
    ``scale`` (default D^-0.5) is applied by rescaling q; a sequence of length 0 gives 0.
    """
    b, _, hk, d = k_cache.shape
    out = torch.zeros_like(q)
    if scale is not None:
        q = q * (scale * d ** 0.5)
    for i, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        k = k_cache[i, :n].reshape(n, hk * d)
        v = v_cache[i, :n].reshape(n, hk * d)
        pos = torch.tensor([n - 1], device=q.device)
        out[i] = attention(q[i:i + 1], k, v, pos, n_heads, n_kv_heads, window)[0]
    return out
