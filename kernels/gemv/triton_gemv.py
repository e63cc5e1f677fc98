"""Float GEMV in Triton for the decode step's float projections at M = 1, for the weight
sizes where it measured faster than cuBLAS (`prefer`): ``y[n] = sum_k W[n, k] x[k] (+
bias[n])``.

Program n-tile: BN rows of W [N, K] (row-major), the whole K, in [BN, BK] tiles of 16-byte
loads; the next tile is loaded before the current one is multiplied (two tiles in flight per
program, several programs per SM), products and sums in float32, one rounding to x's dtype.
No split-K: N / BN programs (768 for Llama-3-8B's qkv, 512 for o and down) already give
every SM several.

With PDL (kernels/pdl.py), before waiting for the previous kernel each program asks for the
first NPF tiles of its rows in L2 (one bulk prefetch per row: W is a weight, nothing writes
it), so the weight stream starts while the previous kernel (an RMSNorm, the attention)
still runs. Why not cuBLAS: at M = 1 cuBLAS bf16 reaches only 55-71% of copy bandwidth on the
8B model's o and qkv shapes on an H200 (bench/RESULTS.md). Measured in CUDA-graph chains,
this kernel beat it on o (1.17x) and not on the larger shapes (0.94-1.05x), so `prefer`
picks it by weight size.

Preconditions: x [1, K] (unit stride), W [N, K] with unit stride along K and K a multiple of 8
(16-byte rows), bias [N] or None; x, W, bias of one dtype (bf16 or fp16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import pdl

BN, BK, NPF = 8, 512, 2


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_w, BN: tl.constexpr,
                 BK: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN: tl.constexpr,
                 NPF: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    mask_n = rows < N
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_w
    if PDL:
        for r in tl.static_range(BN):
            if pid * BN + r < N:
                pdl.prefetch_l2(w_ptr + (pid * BN + r).to(tl.int64) * stride_w,
                                tl.minimum(NPF * BK, K) * 2, PDL)
        pdl.wait(PDL)
        pdl.release(PDL)
    offs = tl.arange(0, BK)
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    if EVEN:
        w_next = tl.load(w_rows + offs[None, :])
    else:
        w_next = tl.load(w_rows + offs[None, :], mask=mask_n[:, None] & (offs < K)[None, :],
                         other=0.0)
    for k in range(0, K, BK):
        w = w_next
        kn = k + BK + offs
        if EVEN:
            x = tl.load(x_ptr + k + offs)
            w_next = tl.load(w_rows + kn[None, :], mask=(kn < K)[None, :], other=0.0)
        else:
            x = tl.load(x_ptr + k + offs, mask=k + offs < K, other=0.0)
            w_next = tl.load(w_rows + kn[None, :], mask=mask_n[:, None] & (kn < K)[None, :],
                             other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)                                              # [BN]
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=mask_n)


MAX_ELEMENTS = 4096 * 4096     # W sizes where `prefer` picks this kernel over cuBLAS


def prefer(weight: torch.Tensor) -> bool:
    """Whether to use this kernel rather than cuBLAS for W (both supported): measured on an
    H200 at M = 1 (bench/RESULTS.md), ours was 1.17x cuBLAS on 4096 x 4096 (Llama-3-8B's o)
    and 0.94-1.05x on the larger qkv, gate-up, down and lm_head shapes."""
    return weight.shape[0] * weight.shape[1] <= MAX_ELEMENTS


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `gemv` takes these operands (else use F.linear)."""
    return (x.dim() == 2 and x.shape[0] == 1 and x.dtype in (torch.bfloat16, torch.float16)
            and weight.dim() == 2 and weight.dtype == x.dtype and weight.stride(1) == 1
            and weight.shape[1] == x.shape[1] and weight.shape[1] % 8 == 0
            and weight.stride(0) % 8 == 0 and weight.data_ptr() % 16 == 0
            and x.device == weight.device)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """x [1, K] @ weight[N, K]^T (+ bias [N]) -> [1, N] in x's dtype (module doc)."""
    if not supported(x, weight):
        raise ValueError(f"gemv: x {x.dtype} {tuple(x.shape)}, weight {weight.dtype} "
                         f"{tuple(weight.shape)} strides {weight.stride()}: expected x [1, K] "
                         f"and W [N, K] of one 16-bit float dtype, K % 8 == 0, unit stride")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype):
        raise ValueError(f"gemv: bias {bias.dtype} {tuple(bias.shape)}, expected "
                         f"{x.dtype} ({weight.shape[0]},)")
    n, k = weight.shape
    x = x.contiguous()
    y = out if out is not None else torch.empty((1, n), dtype=x.dtype, device=x.device)
    if y.shape != (1, n) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"gemv: out must be a contiguous {x.dtype} (1, {n}) tensor")
    if n == 0:
        return y
    _gemv_kernel[(triton.cdiv(n, BN),)](
        x, weight, bias if bias is not None else y, y, n, k, weight.stride(0), BN=BN, BK=BK,
        HAS_BIAS=bias is not None, EVEN=n % BN == 0 and k % BK == 0, NPF=NPF,
        num_warps=4, num_stages=1, **pdl.launch_args(x))
    return y
