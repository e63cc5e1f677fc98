"""The GPTQ solver for one weight matrix (Frantar et al., 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers").

Given W [N, K] and the Hessian of the layer's squared output error, H = 2 X^T X / n, columns
are quantized one at a time; each column's rounding error e is spread over the columns not
yet quantized through the inverse Hessian: ``W[:, j:] -= e Hinv[j, j:] / Hinv[j, j]`` (with
Hinv the upper Cholesky factor of H^-1, processed in blocks for speed). Options:

- act_order: quantize columns by decreasing H[j, j] (the most salient first); the groups
  then follow that order, recorded by g_idx. static_groups fixes every group's scale/zero
  from the original weights first, so g_idx stays ``k // group_size``.
- dampening: ``H + d * mean(diag H) * I``; when H is not positive definite, d is raised
  (x10, up to 1) and every raise is reported; if that fails too, RTN is the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optimizer.passes.quant_math import (dequantize, n_groups, quantize, rtn, rtn_dequantized,
                                         scale_zero, search_scale_zero)


@dataclass
class GptqResult:
    codes: torch.Tensor           # int64 [N, K], original column order
    scales: torch.Tensor          # float32 [N, G] (float16-exact)
    zeros: torch.Tensor           # float32 [N, G]
    g_idx: torch.Tensor | None    # int64 [K] when groups do not follow k // group_size
    deq: torch.Tensor             # float32 [N, K] dequantized weight
    rel_error: float              # sqrt(tr(dW H dW^T) / tr(W H W^T)): relative output error
    info: dict = field(default_factory=dict)   # damp raises, fallback

    def to(self, device: str) -> "GptqResult":
        move = (lambda t: t.to(device) if t is not None else None)
        return GptqResult(move(self.codes), move(self.scales), move(self.zeros),
                          move(self.g_idx), move(self.deq), self.rel_error, self.info)


def _inverse_factor(h: torch.Tensor, damp: float, info: dict) -> torch.Tensor | None:
    """Upper Cholesky factor of (H + damping)^-1, raising the damping as needed."""
    mean = float(torch.diag(h).mean())
    d = damp
    while d <= 1.0 + 1e-9:
        hd = h.double() + d * mean * torch.eye(h.shape[0], dtype=torch.float64,
                                                 device=h.device)
        lower, bad = torch.linalg.cholesky_ex(hd)
        if int(bad) == 0:
            inv = torch.cholesky_inverse(lower)
            upper, bad = torch.linalg.cholesky_ex(inv, upper=True)
            if int(bad) == 0:
                if d != damp:
                    info["damp_raised_to"] = d
                return upper.float()
        d *= 10
    return None


def gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, sym: bool,
         act_order: bool = True, static_groups: bool = False, damp: float = 0.01,
         block: int = 128, mse: float = 0.0) -> GptqResult:
    n, k = w.shape

    def params(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return search_scale_zero(x, bits, sym, norm=mse) if mse else scale_zero(x, bits, sym)

    w0, h0 = w.float(), h.float()
    w = w0.clone()
    h = h0.clone()
    info: dict = {}
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    gs = group_size or k
    static = None
    if static_groups and group_size:
        static = [params(w[:, g * gs:(g + 1) * gs])
                  for g in range(n_groups(k, gs))]
    dev = w.device
    perm = (torch.argsort(torch.diag(h), descending=True) if act_order
            else torch.arange(k, device=dev))
    w, h = w[:, perm], h[perm][:, perm]
    hinv = _inverse_factor(h, damp, info)
    if hinv is None:   # fall back to round-to-nearest, reported
        info["fallback"] = "rtn (Hessian not positive definite at damp 1.0)"
        codes, scales, zeros = rtn(w0, bits, group_size, sym)
        deq = rtn_dequantized(codes, scales, zeros, group_size)
        return GptqResult(codes, scales, zeros, None, deq,
                          relative_output_error(w0, deq, h0), info)
    codes = torch.empty(n, k, dtype=torch.int64, device=dev)
    col_scale = torch.empty(n, k, device=dev)
    col_zero = torch.empty(n, k, device=dev)
    s = z = None
    if not group_size:
        s, z = params(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size:
                if static is not None:
                    s, z = static[int(perm[col]) // gs]
                elif col % gs == 0:
                    ahead = torch.cat([w1[:, i:], w[:, i2:]], dim=1)[:, :gs]
                    s, z = params(ahead)
            q = quantize(w1[:, i:i + 1], s, z, bits)
            deq = dequantize(q, s, z)[:, 0]
            codes[:, col], col_scale[:, col], col_zero[:, col] = q[:, 0], s[:, 0], z[:, 0]
            e = (w1[:, i] - deq) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    codes, col_scale, col_zero = codes[:, inv], col_scale[:, inv], col_zero[:, inv]
    if act_order and group_size and static is None:
        g_idx = (torch.arange(k, device=dev) // gs)[inv]   # rank in the act order // gs
    else:
        g_idx = (torch.arange(k, device=dev) // gs if group_size
                 else torch.zeros(k, dtype=torch.int64, device=dev))
    groups = n_groups(k, group_size)
    first = torch.full((groups,), -1, dtype=torch.int64)   # one column of each group
    for col, g in reversed(list(enumerate(g_idx.tolist()))):
        first[g] = col
    first = first.to(dev)
    scales, zeros = col_scale[:, first], col_zero[:, first]
    deq = dequantize(codes, scales[:, g_idx], zeros[:, g_idx])
    return GptqResult(codes, scales, zeros,
                      g_idx if (act_order and group_size and static is None) else None,
                      deq, relative_output_error(w0, deq, h0), info)


def relative_output_error(w: torch.Tensor, deq: torch.Tensor, h: torch.Tensor) -> float:
    """sqrt(tr(dW H dW^T) / tr(W H W^T)) = ||X dW^T|| / ||X W^T|| when H is X^T X."""
    dw = (deq - w).double()
    num = float(torch.einsum("nk,kl,nl->", dw, h.double(), dw))
    den = float(torch.einsum("nk,kl,nl->", w.double(), h.double(), w.double()))
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0
