"""W8A8 GEMM in Triton (SmoothQuant): per-token dynamic int8 activations, int8 tensor cores.

    s_x[t] = max_k |x[t, k]| / 127 (1 for an all-zero row),  x_q = round(x / s_x) in [-127, 127]
    y[t, n] = (sum_k x_q[t, k] * w_q[n, k]) * s_x[t] * s_w[n] + bias[n]

as kernels/w8a8/reference.py, bit for bit in x_q and s_x: float32 amax, IEEE division
(``tl.div_rn``; plain ``/`` is approximate on the GPU), round half to even by the magic number
1.5 * 2^23 (``bits(v + 1.5*2^23) - bits(1.5*2^23)`` is round(v) for |v| < 2^22: no float
subtraction for a compiler to fold away, no float->int instruction).

- `_quant_kernel`: x [M, K] -> x_q int8 [M, K], s_x float32 [M]; one program per row.
- `_w8a8_kernel`: int8 x int8 -> int32 ``tl.dot`` (both operands K-major: rows of x_q and of
  w_q, as int8 wgmma needs), the scale/bias epilogue fused. SWAP computes y^T = w_q x_q^T so
  the M tile can be 16 (decode); QUANT makes the kernel quantize x itself (each program first
  takes the amax of its rows over all of K, then quantizes the tiles it reads), saving the
  quantization launch at small M. Split-K partials are int32 (exact), reduced in split order
  by the last program to arrive (deterministic), one launch.

The integer dot products are exact while K * 127 * 127 < 2^31 (K < 133,000).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .. import pdl
from ..triton_tiles import grouped_tile, split_blocks
from ..device_info import sm_count  # noqa: F401  (the benches use it too)

# Dispatch: first guesses, to be revised with `bench/gemm_int8.py --sweep`.
FUSE_QUANT_MAX_M = 0     # M <= this: quantize inside the GEMM (0: always a separate kernel)
SWAP_MAX_M = 64          # M <= this: y^T = W x^T, M as the MMA's N side
MAX_SPLIT_K = 16
ROUND_MAGIC = tl.constexpr(12582912.0)   # 1.5 * 2^23
ROUND_BITS = tl.constexpr(0x4B400000)     # its float32 bits


@triton.jit
def _quantize(x, s):
    """float32 x and per-row scales s (x's shape) -> int8 clamp(round_half_even(x / s))."""
    v = tl.div_rn(x, s)
    r = (v + ROUND_MAGIC).to(tl.int32, bitcast=True) - ROUND_BITS
    return tl.minimum(tl.maximum(r, -127), 127).to(tl.int8)


@triton.jit
def _row_scale(amax):
    """s_x = amax / 127, or 1 where amax is 0."""
    return tl.where(amax > 0, tl.div_rn(amax, tl.zeros_like(amax) + 127.0), 1.0)


@triton.jit
def _quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, BLOCK: tl.constexpr,
                  PDL: tl.constexpr):
    """Row program_id(0): x [M, K] (any float dtype) -> x_q int8, s_x float32 [M]."""
    pdl.wait(PDL)
    pdl.release(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    s = _row_scale(tl.max(amax, axis=0))
    sb = tl.zeros((BLOCK,), dtype=tl.float32) + s
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0)
        tl.store(q_ptr + row * stride_qm + k0 + offs, _quantize(x.to(tl.float32), sb),
                 mask=k0 + offs < K)
    tl.store(s_ptr + row, s)


@triton.jit
def _epilogue(acc, sx, sw, bias_ptr, y_ptr, offs_m, offs_n, mask, N, stride_ym,
              HAS_BIAS: tl.constexpr):
    """y = acc * s_x[m] * s_w[n] (+ bias) in float32, rounded to y's dtype."""
    val = acc.to(tl.float32) * sx[:, None] * sw[None, :]
    if HAS_BIAS:
        val += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(ptrs, val.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _w8a8_kernel(
    a_ptr, sx_ptr, w_ptr, sw_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, K, SPLIT_K, stride_am, stride_ym,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    SWAP: tl.constexpr, QUANT: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr,
    PDL: tl.constexpr,
):
    """y [M, N] = (x_q @ w_q^T) * s_x * s_w + bias; grid (tiles_m * tiles_n, SPLIT_K).

    a_ptr: x_q int8 [M, K] with s_x at sx_ptr, or (QUANT) x itself (float); w_ptr: int8
    [N, K]; sw_ptr: float32 [N]; ws_ptr: int32 [SPLIT_K, M, N]; lock_ptr: int32 counters
    (zero on entry). EVEN_K: K is a multiple of BK; SPLIT: SPLIT_K > 1."""
    pdl.wait(PDL)
    pdl.release(PDL)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n, tiles_n = grouped_tile(pid, M, N, BM, BN, GROUP_M)

    b_lo, b_hi = split_blocks(tl.cdiv(K, BK), SPLIT_K, pid_k)

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]  # [BM, BK]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * K + offs_k[None, :]         # [BN, BK]

    if QUANT:                              # the amax of this tile's rows over all of K
        amax = tl.zeros((BM,), dtype=tl.float32)
        for k0 in range(0, K, BK):
            xa = tl.load(a_ptrs + k0, mask=mask_m[:, None] & (k0 + offs_k < K)[None, :],
                         other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(xa.to(tl.float32)), axis=1))
        sx = _row_scale(amax)
        sxb = tl.zeros((BM, BK), dtype=tl.float32) + sx[:, None]
    else:
        sx = tl.load(sx_ptr + offs_m, mask=mask_m, other=0.0)

    if SWAP:
        acc = tl.zeros((BN, BM), dtype=tl.int32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    for b in range(b_lo, b_hi):
        k0 = b * BK
        if EVEN_K:
            w = tl.load(w_ptrs + k0, mask=mask_n[:, None], other=0)
            a = tl.load(a_ptrs + k0, mask=mask_m[:, None], other=0)
        else:
            kin = (k0 + offs_k < K)[None, :]
            w = tl.load(w_ptrs + k0, mask=mask_n[:, None] & kin, other=0)
            a = tl.load(a_ptrs + k0, mask=mask_m[:, None] & kin, other=0)
        if QUANT:
            a = _quantize(a.to(tl.float32), sxb)
        if SWAP:
            acc = tl.dot(w, tl.trans(a), acc, out_dtype=tl.int32)        # [BN, BM]
        else:
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)        # [BM, BN]
    if SWAP:
        out = tl.trans(acc)
    else:
        out = acc
    sw = tl.load(sw_ptr + offs_n, mask=mask_n, other=0.0)
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT:
        ws_off = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + pid_k * M * N + ws_off, out, mask=mask)
        tl.debug_barrier()                 # all partial stores of this CTA before the release
        tile = pid_m * tiles_n + pid_n
        count = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:           # last to arrive: reduce in split order (exact)
            total = tl.zeros_like(out)
            for i in range(0, SPLIT_K):
                total += tl.load(ws_ptr + i * M * N + ws_off, mask=mask, other=0,
                                 cache_modifier=".cg")
            tl.atomic_xchg(lock_ptr + tile, 0)
            _epilogue(total, sx, sw, bias_ptr, y_ptr, offs_m, offs_n, mask, N, stride_ym,
                      HAS_BIAS)
    else:
        _epilogue(out, sx, sw, bias_ptr, y_ptr, offs_m, offs_n, mask, N, stride_ym, HAS_BIAS)


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Launch parameters of `_w8a8_kernel`. swap: y^T = W x^T (block_n is then the MMA's M
    side: >= 64 uses wgmma); quant: quantize x inside the GEMM. block_k is lowered to
    divide K where it can (not below 32)."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    swap: bool = True
    quant: bool = False
    num_warps: int = 4
    num_stages: int = 4
    group_m: int = 8

    def __post_init__(self) -> None:
        for key, lo in (("block_m", 16), ("block_n", 16), ("block_k", 32)):
            v = getattr(self, key)
            if v < lo or v > 256 or v & (v - 1):
                raise ValueError(f"GemmConfig.{key}: expected a power of two in {lo}..256, "
                                 f"got {v}")
        if not 1 <= self.split_k <= 64:
            raise ValueError(f"GemmConfig.split_k: expected 1..64, got {self.split_k}")
        if self.num_warps not in (4, 8):
            raise ValueError(f"GemmConfig.num_warps: expected 4 or 8, got {self.num_warps}")

    def describe(self) -> str:
        return (f"{'swap' if self.swap else 'mk'}{'+q' if self.quant else ''} "
                f"{self.block_m}x{self.block_n}x{self.block_k} s{self.split_k} "
                f"w{self.num_warps} st{self.num_stages}")


def choose_split_k(tiles: int, blocks: int, sms: int, per_sm: float = 2.0) -> int:
    """Splits of K so that ``tiles`` output tiles make at most per_sm programs per SM (one
    wave where per_sm is what fits on an SM: a partial second wave costs more than idle
    slots), keeping at least 2 K blocks per split."""
    if tiles >= per_sm * sms or blocks < 4:
        return 1
    return max(1, min(int(per_sm * sms) // tiles, blocks // 2, MAX_SPLIT_K))


def pick_config(m: int, n: int, k: int, sms: int = 132) -> GemmConfig:
    """First-guess configs per M bucket (unmeasured: revise with bench/gemm_int8.py --sweep)."""
    wide_n = -(-n // 128) >= sms
    if m <= 16:
        cfg = GemmConfig(16, 128 if wide_n else 64, 128, quant=m <= FUSE_QUANT_MAX_M)
    elif m <= 32:
        cfg = GemmConfig(32, 128, 128)
    elif m <= SWAP_MAX_M:
        cfg = GemmConfig(64, 128, 128)
    elif m <= 128:
        cfg = GemmConfig(128, 128, 128, swap=False, num_warps=8, num_stages=4)
    else:
        cfg = GemmConfig(128, 256, 128, swap=False, num_warps=8, num_stages=3)
    tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    per_sm = 2.0 if cfg.block_m <= 32 else 1.0
    return dataclasses.replace(
        cfg, split_k=choose_split_k(tiles, -(-k // cfg.block_k), sms, per_sm))


def configs(m: int) -> list[GemmConfig]:
    """Candidates for `bench/gemm_int8.py --sweep` at this M (split-K is varied there)."""
    if m <= 16:
        return [GemmConfig(16, 64, 128), GemmConfig(16, 128, 128), GemmConfig(16, 64, 256),
                GemmConfig(16, 128, 256, num_stages=3), GemmConfig(16, 64, 128, quant=True),
                GemmConfig(16, 128, 128, quant=True)]
    if m <= 64:
        bm = max(16, triton.next_power_of_2(m))
        return [GemmConfig(bm, 128, 128), GemmConfig(bm, 64, 128), GemmConfig(bm, 128, 256,
                num_stages=3), GemmConfig(bm, 128, 128, swap=False) if bm == 64 else
                GemmConfig(bm, 256, 128, num_warps=8)]
    if m <= 128:
        return [GemmConfig(128, 128, 128, swap=False, num_warps=8),
                GemmConfig(128, 128, 128, swap=False, num_warps=4),
                GemmConfig(64, 128, 128, swap=False), GemmConfig(128, 128, 128, swap=True),
                GemmConfig(128, 256, 128, swap=False, num_warps=8, num_stages=3)]
    return [GemmConfig(128, 256, 128, swap=False, num_warps=8, num_stages=3),
            GemmConfig(256, 128, 128, swap=False, num_warps=8, num_stages=3),
            GemmConfig(128, 128, 128, swap=False, num_warps=8, num_stages=4),
            GemmConfig(128, 256, 64, swap=False, num_warps=8, num_stages=4)]


def _block_k(bk: int, k: int) -> int:
    even = bk
    while even > 32 and k % even:
        even //= 2
    return even if k % even == 0 else bk


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (float) -> (x_q int8 [M, K], s_x float32 [M]), as the reference does."""
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x: expected a float [M, K] tensor, got {x.dtype} {list(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m:
        block = min(triton.next_power_of_2(max(k, 16)), 4096)
        _quant_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), BLOCK=block,
                            num_warps=4 if block <= 1024 else 8, **pdl.launch_args(x))
    return q, s


def _gemm(a: torch.Tensor, sx: torch.Tensor | None, prepared: dict[str, torch.Tensor],
          bias: torch.Tensor | None, y: torch.Tensor, cfg: GemmConfig) -> None:
    w, sw = prepared["qweight"], prepared["scales"]
    n, k = w.shape
    m = a.shape[0]
    bk = _block_k(cfg.block_k, k)
    tiles_m, tiles_n = -(-m // cfg.block_m), -(-n // cfg.block_n)
    split = max(1, min(cfg.split_k, -(-k // bk)))
    if split > 1:
        ws = torch.empty((split, m, n), dtype=torch.int32, device=a.device)
        locks = prepared.get("locks")
        if locks is None or locks.numel() < tiles_m * tiles_n or locks.device != a.device:
            locks = torch.zeros(tiles_m * tiles_n, dtype=torch.int32, device=a.device)
    else:                                                # unused by the kernel
        ws = torch.empty(1, dtype=torch.int32, device=a.device)
        locks = torch.empty(1, dtype=torch.int32, device=a.device)
    _w8a8_kernel[(tiles_m * tiles_n, split)](
        a, sx if sx is not None else sw, w, sw, bias if bias is not None else y, y, ws, locks,
        m, n, k, split, a.stride(0), y.stride(0),
        BM=cfg.block_m, BN=cfg.block_n, BK=bk, GROUP_M=cfg.group_m,
        SWAP=cfg.swap, QUANT=cfg.quant, HAS_BIAS=bias is not None, EVEN_K=k % bk == 0,
        SPLIT=split > 1,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl.launch_args(a))


def w8a8_linear(x: torch.Tensor, prepared: dict[str, torch.Tensor],
                bias: torch.Tensor | None = None, out: torch.Tensor | None = None, *,
                config: GemmConfig | None = None, path: str = "auto") -> torch.Tensor:
    """x [..., K] (bf16/fp16/fp32) -> [..., N] in x.dtype: quantize per token, int8 GEMM.

    path: "auto" / "fused" (Triton: ``config`` or `pick_config`; quantization inside the GEMM
    where the config says so, else `quantize_per_token` first) or "int_mm" (quantize, then
    ``torch._int_mm`` and the epilogue in PyTorch: a baseline). ``out``: optional contiguous
    [M, N] tensor of x's dtype.
    """
    if path not in ("auto", "fused", "int_mm"):
        raise ValueError(f"path: expected 'auto', 'fused' or 'int_mm', got {path!r}")
    w = prepared["qweight"]
    n, k = w.shape
    if x.shape[-1] != k:
        raise ValueError(f"x: expected {k} input features, got {x.shape[-1]}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = out if out is not None else torch.empty((m, n), dtype=x.dtype, device=x.device)
    if tuple(y.shape) != (m, n) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out: expected contiguous {x.dtype} [{m}, {n}]")
    if m == 0:
        return y.reshape(*lead, n)
    if path == "int_mm":
        xq, sx = quantize_per_token(x2)
        pad = max(0, 17 - m)                             # _int_mm wants M > 16
        acc = torch._int_mm(torch.nn.functional.pad(xq, (0, 0, 0, pad)), w.T)[:m]
        val = acc.float() * sx[:, None] * prepared["scales"][None, :]
        y.copy_(val + bias.float() if bias is not None else val)
        return y.reshape(*lead, n)
    cfg = config or pick_config(m, n, k, sm_count(x.device))
    if cfg.quant:
        _gemm(x2, None, prepared, bias, y, cfg)
    else:
        xq, sx = quantize_per_token(x2)
        _gemm(xq, sx, prepared, bias, y, cfg)
    return y.reshape(*lead, n)
