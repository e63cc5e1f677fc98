"""AWQ's two searches (Lin et al. 2023, as AutoAWQ implements them), on float tensors.

Both measure output error through the input Gram matrix ``H = X^T X / T`` (X: [T, K] the
calibration inputs), so every calibration token counts at the cost of one [N, K] x [K, K]
product: ``mean_t ||x_t dW^T||^2 = sum((dW H) * dW)`` for a weight error dW [N, K].

Scale search: for ``ratio = i / n_grid`` (i < n_grid), ``s = x_mean^ratio`` (x_mean = mean
|x| per input channel; with ``duo`` AutoAWQ's ``x_mean^ratio / w_mean^(1-ratio)``), clamped
>= 1e-4 and normalised by ``sqrt(max(s) min(s))``; loss = MSE of the group's outputs with
``Q(W s) / s`` in place of W (Q: group-wise RTN); the best s is kept (ratio 0 is RTN).

Clip search (per linear, in the scaled space): per output row and group, the max |w| is
shrunk by ``1 - i / 20`` (i < 10), w clamped to +-that and quantized; the shrink with the
least error of that group's partial output ``x_g w_g^T`` is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optimizer.passes.quant_math import dequantize, expand_groups, quantize, scale_zero

CLIP_GRID, CLIP_MAX_SHRINK = 20, 0.5     # AutoAWQ's _compute_best_clip


def fake_quant(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """Group-wise RTN quantize-dequantize of w [N, K] (quant_math's arithmetic)."""
    out = torch.empty_like(w)
    size = group_size or w.shape[1]
    for a in range(0, w.shape[1], size):
        block = w[:, a:a + size]
        s, z = scale_zero(block, bits, sym)
        out[:, a:a + size] = dequantize(quantize(block, s, z, bits), s, z)
    return out


def output_mse(dw: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-row mean squared output error sum_kl dw[n,k] H[k,l] dw[n,l] -> [N]."""
    return ((dw @ h) * dw).sum(-1)


@dataclass(frozen=True)
class ScaleResult:
    scales: torch.Tensor     # [K]
    ratio: float
    loss: float              # output MSE at the chosen ratio
    rtn_loss: float          # at ratio 0 (plain RTN)


def _w_mean(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over rows of |w| normalised by its (row, group) max -> [K]."""
    k = w.shape[1]
    size = group_size or k
    amax = torch.stack([w[:, a:a + size].abs().amax(1) for a in range(0, k, size)], 1)
    return (w.abs() / (expand_groups(amax, group_size, k) + 1e-6)).mean(0)


def search_scale(ws: list[torch.Tensor], h: torch.Tensor, x_mean: torch.Tensor, bits: int,
                 group_size: int, sym: bool, n_grid: int, duo: bool = False) -> ScaleResult:
    """Best per-channel scale for the linears ``ws`` (each [N_l, K]) reading one input."""
    w = torch.cat(ws, 0).float()
    h = h.float()
    w_mean = _w_mean(w, group_size) if duo else None
    best: ScaleResult | None = None
    rtn_loss = 0.0
    for i in range(n_grid):
        ratio = i / n_grid
        if duo:
            s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        else:
            s = x_mean.pow(ratio).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        dw = fake_quant(w * s, bits, group_size, sym) / s - w
        loss = float(output_mse(dw, h).mean())
        if i == 0:
            rtn_loss = loss
        if best is None or loss < best.loss:
            best = ScaleResult(s, ratio, loss, rtn_loss)
    return ScaleResult(best.scales, best.ratio, best.loss, rtn_loss)


def search_clip(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int,
                sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, group) clip value and chosen shrink factor, both [N, G], for w [N, K]
    given H [K, K]."""
    n, k = w.shape
    size = group_size or k
    shrink = 1 - torch.arange(int(CLIP_MAX_SHRINK * CLIP_GRID)) / CLIP_GRID   # [S]
    out, factors = [], []
    for a in range(0, k, size):
        wg, hg = w[:, a:a + size], h[a:a + size, a:a + size].float()
        amax = wg.abs().amax(1)                                                 # [N]
        lim = (shrink[:, None] * amax[None, :])[..., None]                      # [S, N, 1]
        cur = torch.maximum(torch.minimum(wg[None], lim), -lim).reshape(-1, wg.shape[1])
        sc, z = scale_zero(cur, bits, sym)
        dw = (dequantize(quantize(cur, sc, z, bits), sc, z) - wg.repeat(len(shrink), 1))
        err = output_mse(dw, hg).reshape(len(shrink), n)                        # [S, N]
        factors.append(shrink[err.argmin(0)])
        out.append(factors[-1] * amax)
    return torch.stack(out, 1), torch.stack(factors, 1)


def apply_clip(w: torch.Tensor, max_val: torch.Tensor, group_size: int) -> torch.Tensor:
    lim = expand_groups(max_val, group_size, w.shape[1])
    return torch.maximum(torch.minimum(w, lim), -lim)
