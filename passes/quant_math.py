"""Integer quantization arithmetic shared by the quantization passes.

A group of weights ``w`` gets a float16 scale ``s`` and an integer zero point ``z`` and codes
``q = clamp(round(w / s) + z, 0, 2^bits - 1)``, so that ``w ~ (q - z) * s``:

- asymmetric: the range [min(w, 0), max(w, 0)] maps onto [0, 2^bits - 1] (0 stays exact);
- symmetric: ``s = max|w| / (2^(bits-1) - 1)``, ``z = 2^(bits-1)``.

Scales are rounded to float16 *before* the codes are computed (so the stored scale is the
one the codes were made for) and clamped to [2^-14, 65504]: never 0, Inf or subnormal. An
all-zero group therefore gets the smallest scale and codes equal to its zero point, which
dequantize to exact zeros.

`search_scale_zero` picks, per row, the range ``p * [lo, hi]`` (p = 1, 1 - 1/grid, ...) whose
quantize-dequantize error ``sum_k c_k |Q(w) - w|^norm`` is smallest (GPTQ's ``mse``
quantizer: grid 100, shrink down to 0.2, norm 2.4; ``c`` optional per-column weights, e.g. the
Hessian diagonal). p = 1 is the plain range, so the search never does worse than it on that
error.
"""

from __future__ import annotations

import torch

MIN_SCALE = 2.0 ** -14   # smallest normal float16
MAX_SCALE = 65504.0      # largest float16


def scale_zero(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) for w [N, k], both float32 [N, 1]; scale is float16-exact."""
    lo = w.amin(dim=1, keepdim=True).clamp(max=0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0)
    return _scale_zero_of(lo, hi, bits, sym)


def _scale_zero_of(lo: torch.Tensor, hi: torch.Tensor, bits: int,
                   sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) of the ranges [lo, hi] (lo <= 0 <= hi, any shape) as `scale_zero`."""
    maxq = (1 << bits) - 1
    if sym:
        scale = torch.maximum(-lo, hi) / ((1 << (bits - 1)) - 1)
    else:
        scale = (hi - lo) / maxq
    scale = scale.clamp(MIN_SCALE, MAX_SCALE).half().float()
    if sym:
        return scale, torch.full_like(scale, float(1 << (bits - 1)))
    return scale, torch.clamp(torch.round(-lo / scale), 0, maxq)


def search_scale_zero(w: torch.Tensor, bits: int, sym: bool, grid: int = 100,
                      max_shrink: float = 0.8, norm: float = 2.4,
                      col_weight: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) [N, 1] for w [N, k] with the least ``sum_k c_k |Q(w) - w|^norm``
    over the shrunk ranges ``p * [min(w, 0), max(w, 0)]``, ``p = 1 - i / grid`` for
    ``i < max_shrink * grid`` (ties: the larger p)."""
    lo = w.amin(dim=1, keepdim=True).clamp(max=0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0)
    best_s, best_z = _scale_zero_of(lo, hi, bits, sym)
    best = None
    c = None if col_weight is None else col_weight.reshape(1, -1).to(w)
    for i in range(max(1, int(max_shrink * grid))):
        p = 1 - i / grid
        s, z = _scale_zero_of(p * lo, p * hi, bits, sym)
        err = (dequantize(quantize(w, s, z, bits), s, z) - w).abs().pow(norm)
        err = (err if c is None else err * c).sum(1, keepdim=True)            # [N, 1]
        if best is None:
            best = err
            continue
        better = err < best
        best = torch.where(better, err, best)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
             bits: int) -> torch.Tensor:
    """Integer codes (int64) of w [N, k] given per-row scale/zero [N, 1]."""
    return torch.clamp(torch.round(w / scale) + zero, 0, (1 << bits) - 1).long()


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q.float() - zero) * scale


def n_groups(k: int, group_size: int) -> int:
    return (k + group_size - 1) // group_size if group_size else 1


def rtn(w: torch.Tensor, bits: int, group_size: int,
        sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of w [N, K] in groups of ``group_size`` input channels (0: one group
    per row; the last group may be partial). Returns codes int64 [N, K], scales float32
    [N, G] (float16-exact) and zeros float32 [N, G]."""
    n, k = w.shape
    size = group_size or k
    codes = torch.empty(n, k, dtype=torch.int64)
    scales, zeros = [], []
    for start in range(0, k, size):
        block = w[:, start:start + size].float()
        s, z = scale_zero(block, bits, sym)
        codes[:, start:start + size] = quantize(block, s, z, bits)
        scales.append(s)
        zeros.append(z)
    return codes, torch.cat(scales, 1), torch.cat(zeros, 1)


def expand_groups(t: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """Per-group [N, G] -> per-column [N, K] (groups of ``group_size``, the last partial)."""
    return t.repeat_interleave(group_size or k, dim=1)[:, :k]


def rtn_dequantized(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    k = codes.shape[1]
    return dequantize(codes, expand_groups(scales, group_size, k),
                      expand_groups(zeros, group_size, k))
