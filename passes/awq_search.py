"""AWQ's two searches (Lin et al. 2023, as AutoAWQ implements them), on float tensors.

Both measure output error through the input Gram matrix ``H = X^T X / T`` (X: [T, K] the
calibration inputs), so every calibration token counts at the cost of one [N, K] x [K, K]
product: ``mean_t ||x_t dW^T||^2 = sum((dW H) * dW)`` for a weight error dW [N, K].

Scale search: for ``ratio = i / n_grid`` (i < n_grid), ``s = x_mean^ratio`` (x_mean = mean
|x| per input channel; with ``duo`` AutoAWQ's ``x_mean^ratio / w_mean^(1-ratio)``), clamped
>= 1e-4 and normalised by ``sqrt(max(s) min(s))``; loss = MSE of the group's outputs with
``Q(W s) / s`` in place of W (Q: group-wise RTN); the best s is kept (ratio 0 is RTN).

Clip search (per linear, in the scaled space): per output row and group, the range is
shrunk by ``1 - i / 20`` (i < 10), w clamped to it and quantized; the shrink with the least
error of that group's partial output ``x_g w_g^T`` is kept. The range is +-max|w| for
symmetric schemes (as AutoAWQ) and [min(w, 0), max(w, 0)] for asymmetric ones, both ends
shrunk (AutoAWQ clamps to +-max|w| there too, which only ever clips the longer side).
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
                sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (row, group) clip range [lo, hi] and chosen shrink factor, all [N, G], for w
    [N, K] given H [K, K]: the shrink ``p`` of the group's range with the least output error
    of ``x_g Q(clamp(w_g, p lo, p hi))^T`` vs ``x_g w_g^T``. The range is [-max|w|, max|w|]
    for symmetric schemes (AutoAWQ) and [min(w, 0), max(w, 0)] for asymmetric ones, so both
    ends shrink (AutoAWQ's +-max|w| clamp would only ever clip the longer side)."""
    n, k = w.shape
    size = group_size or k
    shrink = 1 - torch.arange(int(CLIP_MAX_SHRINK * CLIP_GRID)) / CLIP_GRID   # [S]
    los, his, factors = [], [], []
    for a in range(0, k, size):
        wg, hg = w[:, a:a + size], h[a:a + size, a:a + size].float()
        if sym:
            hi0 = wg.abs().amax(1)                                              # [N]
            lo0 = -hi0
        else:
            lo0, hi0 = wg.amin(1).clamp(max=0), wg.amax(1).clamp(min=0)
        lo = (shrink[:, None] * lo0[None, :])[..., None]                        # [S, N, 1]
        hi = (shrink[:, None] * hi0[None, :])[..., None]
        cur = torch.maximum(torch.minimum(wg[None], hi), lo).reshape(-1, wg.shape[1])
        sc, z = scale_zero(cur, bits, sym)
        dw = (dequantize(quantize(cur, sc, z, bits), sc, z) - wg.repeat(len(shrink), 1))
        err = output_mse(dw, hg).reshape(len(shrink), n)                        # [S, N]
        factors.append(shrink[err.argmin(0)])
        los.append(factors[-1] * lo0)
        his.append(factors[-1] * hi0)
    return torch.stack(los, 1), torch.stack(his, 1), torch.stack(factors, 1)


def apply_clip(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               group_size: int) -> torch.Tensor:
    """w [N, K] clamped to its (row, group) range [lo, hi] (each [N, G])."""
    k = w.shape[1]
    return torch.maximum(torch.minimum(w, expand_groups(hi, group_size, k)),
                         expand_groups(lo, group_size, k))
