"""W8A16 GEMM in Triton: y[M, N] = x[M, K] @ W^T (+ bias), W in the layout of layout.py.

Two fused kernels and a cuBLAS path, chosen by M (`pick_config`, `w8a16_linear`):

- `_w8a16_mma_kernel` (any M; tensor cores): y^T = W x^T ("swapped" operands): the weight
  tile [BN, BK] (uint8, K contiguous, cp.async-pipelined) is the MMA's A operand, made in
  registers, and x^T [BK, BM] the B operand, so the M tile can be as small as 16 (decode).
- `_w8a16_gemv_kernel` (M = 1 candidate; CUDA cores): float32 FMAs of the weight tile with
  one row of x, summed along K once per group (or once at the end per channel).

Codes become ``q - z`` without int->float instructions (quarter rate on Hopper), exactly:
``CONVERT`` "magic32": ``u | 0x4B000000`` read as float32 is 2^23 + u; subtracting 2^23 + z
leaves q - z, an integer of at most 8 bits, exact in bf16/fp16 (rounding to them is exact).
"magic16" (fp16 only): ``u | 0x6400`` read as fp16 is 1024 + u; minus 1024 + z. "cvt": plain
conversions (a baseline for the sweep).

Scales, FACTORED (exact): ``part = dot(q - z, x)`` per group in float32, then ``acc += s *
part`` (per output channel: once after the loop); dequantizing (FACTORED=False, groups only):
``acc = dot((q - z) * s, x, acc)`` with s rounded to the activation dtype (bf16: weights
within about 2^-8 instead of exact).

Split-K (SPLIT, ``SPLIT_K`` programs along grid axis 1): program (tile, s) covers K blocks
[s*T, (s+1)*T), stores its float32 partial to ``ws[s]`` and bumps the tile's arrival counter
(acq_rel after a CTA barrier); the last to arrive sums the partials in split order
(deterministic), adds the bias, writes y and resets the counter. One launch.

Checked offline in the sm_90 SASS (``triton.compile`` for ``GPUTarget("cuda", 90, 32)``, no
GPU needed): the 16x64x128 decode tile's loop is ~400 instructions per thread per 128-row K
step for 64 codes a thread (wgmma with the codes in registers, read from shared memory in the
operand layout: no STS/LDSM round trip; see `_group`), about half the issue budget of
streaming 8-bit weights at 80% of an H100's bandwidth; no spills in the main loops.

Preconditions (checked in `w8a16_linear`): x [M, K] with unit stride along K; the layout's
group size 0, 32, 64 or a multiple of 128 (a K step then lies in one group); layout rows
past KQ, and channels past K (padding rows of perm), read as zero.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .. import pdl
from ..triton_tiles import grouped_tile, split_blocks
from ..device_info import sm_count  # noqa: F401  (the benches use it too)

from .layout import SYM_ZERO, supported_group

# Dispatch thresholds: first guesses, to be revised with `bench/gemm_int8.py --sweep`.
GEMV_MAX_M = 0           # M <= this: the CUDA-core kernel (0: never; candidate for M = 1)
DECODE_MAX_M = 16        # M <= this: 16-row M tiles, split-K to fill the SMs
CUBLAS_MIN_M = 512       # M >= this: dequantize W once, then cuBLAS (x @ W^T)
MAX_SPLIT_K = 16
CONVERTS = {"magic32": 0, "magic16": 1, "cvt": 2}


@triton.jit
def _codes(w, z, dt: tl.constexpr, CONVERT: tl.constexpr):
    """uint8 codes [BN, BK] and their groups' zeros int32 [BN] -> q - z [BN, BK] in ``dt``,
    exact."""
    if CONVERT == 1:           # magic16 (fp16): 0x6400 | u == 1024 + u
        h = (w.to(tl.int32) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        a = h - (z + 1024).to(tl.float16)[:, None]
    elif CONVERT == 0:         # magic32: 0x4B000000 | u == 2^23 + u
        f = (w.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)
        zf = (z | 0x4B000000).to(tl.float32, bitcast=True)
        a = (f - zf[:, None]).to(dt)
    else:
        a = (w.to(tl.int32) - z[:, None]).to(dt)
    return a


@triton.jit
def _group(s_ptr, z_ptr, g, G, offs_n, mask_n, ZSYM, HAS_ZEROS: tl.constexpr,
           HOIST: tl.constexpr):
    """(float32 scales [BN], int32 zeros [BN]) of group g for output channels offs_n.

    Symmetric (no zeros tensor): z = ZSYM (128). HOIST: taken from a load that never
    accesses memory (mask all false), so that Triton, seeing the codes' operands come from
    loads, reads the codes from shared memory straight in the MMA operand layout (checked in
    the sm_90 SASS: no STS/LDSM round trip, 2 barriers per K step instead of 5, but 8-byte
    cp.async for the codes instead of 16). Else a splat of the runtime ZSYM (a compile-time
    constant would fold the same way)."""
    s = tl.load(s_ptr + offs_n * G + g, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        z = tl.load(z_ptr + offs_n * G + g, mask=mask_n, other=0).to(tl.int32)
    elif HOIST:
        z = tl.load(z_ptr + offs_n, mask=offs_n < 0, other=ZSYM).to(tl.int32)
    else:
        z = offs_n * 0 + ZSYM
    return s, z


@triton.jit
def _load_w(w_ptrs, k0, KQ, offs_k, mask_n, EVEN_K: tl.constexpr):
    """Codes [BN, BK] of layout rows k0 + offs_k (0 past KQ)."""
    if EVEN_K:
        w = tl.load(w_ptrs + k0, mask=mask_n[:, None], other=0)
    else:
        w = tl.load(w_ptrs + k0, mask=mask_n[:, None] & (k0 + offs_k < KQ)[None, :], other=0)
    return w


@triton.jit
def _finish(val, y_ptr, ws_ptr, lock_ptr, bias_ptr, y_off, ws_off, n_idx, mask, tile, pid_k,
            MN, SPLIT_K, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Write ``val`` (+ bias) to y[y_off] (not SPLIT), or store it as partial pid_k of
    SPLIT_K and let the last program of the tile reduce all partials in split order. Any
    tensor shape: y_off / ws_off / n_idx (output channel) / mask have val's shape."""
    if SPLIT:
        tl.store(ws_ptr + pid_k * MN + ws_off, val, mask=mask)
        tl.debug_barrier()                 # all partial stores of this CTA before the release
        count = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:           # last to arrive: reduce in split order
            total = tl.zeros_like(val)
            for i in range(0, SPLIT_K):
                total += tl.load(ws_ptr + i * MN + ws_off, mask=mask, other=0.0,
                                 cache_modifier=".cg")
            tl.atomic_xchg(lock_ptr + tile, 0)
            if HAS_BIAS:
                total += tl.load(bias_ptr + n_idx, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_ptr + y_off, total.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        if HAS_BIAS:
            val += tl.load(bias_ptr + n_idx, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + y_off, val.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _w8a16_mma_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, perm_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, K, KQ, G, SPLIT_K, ZSYM, stride_xm, stride_ym,
    GS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    GROUP_M: tl.constexpr, FACTORED: tl.constexpr,
    CONVERT: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_PERM: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr, HOIST: tl.constexpr,
    PDL: tl.constexpr,
):
    """x [M, K] @ W^T -> y [M, N]; grid (tiles_m * tiles_n, SPLIT_K). GS = 0: one group per
    output channel, else GS layout rows per group (a multiple of BK).

    w_ptr: uint8 [N, KQ]; s_ptr: float16 [N, G]; z_ptr: uint8 [N, G] (HAS_ZEROS); perm_ptr:
    int32 [KQ] (HAS_PERM); ws_ptr: float32 [SPLIT_K, M, N]; lock_ptr: int32 counters (zero
    on entry). EVEN_K: KQ is a multiple of BK."""
    pdl.wait(PDL)
    pdl.release(PDL)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n, tiles_n = grouped_tile(pid, M, N, BM, BN, GROUP_M)

    b_lo, b_hi = split_blocks(tl.cdiv(KQ, BK), SPLIT_K, pid_k)

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm                  # [BM, 1]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * KQ + offs_k[None, :]       # [BN, BK]
    dt = x_ptr.dtype.element_ty

    s, z = _group(s_ptr, z_ptr, 0, G, offs_n, mask_n, ZSYM, HAS_ZEROS, HOIST)       # group 0
    acc = tl.zeros((BN, BM), dtype=tl.float32)                                 # y^T tile
    for b in range(b_lo, b_hi):
        k0 = b * BK
        w = _load_w(w_ptrs, k0, KQ, offs_k, mask_n, EVEN_K)                    # [BN, BK]
        if HAS_PERM:
            ch = tl.load(perm_ptr + k0 + offs_k)
        else:
            ch = k0 + offs_k
        x = tl.load(x_rows + ch[None, :], mask=mask_m[:, None] & (ch[None, :] < K),
                    other=0.0)                                                 # [BM, BK]
        if GS == 0:        # a fresh dot, not dot(a, x, acc): Triton then reads the codes
            acc += tl.dot(_codes(w, z, dt, CONVERT), tl.trans(x))   # from smem in MMA layout
        else:
            s, z = _group(s_ptr, z_ptr, k0 // GS, G, offs_n, mask_n, ZSYM, HAS_ZEROS,
                          HOIST)
            a = _codes(w, z, dt, CONVERT)                                      # q - z
            if FACTORED:
                acc += s[:, None] * tl.dot(a, tl.trans(x))
            else:
                acc = tl.dot(a * s.to(dt)[:, None], tl.trans(x), acc)
    if GS == 0:
        acc = acc * s[:, None]
    out = tl.trans(acc)                                                        # [BM, BN]
    mask = mask_m[:, None] & mask_n[None, :]
    y_off = offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    ws_off = offs_m[:, None] * N + offs_n[None, :]
    n_idx = offs_n[None, :] + 0 * offs_m[:, None]
    _finish(out, y_ptr, ws_ptr, lock_ptr, bias_ptr, y_off, ws_off, n_idx, mask,
            pid_m * tiles_n + pid_n, pid_k, M * N, SPLIT_K, SPLIT, HAS_BIAS)


@triton.jit
def _w8a16_gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, perm_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, K, KQ, G, SPLIT_K, ZSYM, stride_xm, stride_ym,
    GS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HAS_ZEROS: tl.constexpr,
    HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
    PDL: tl.constexpr,
):
    """One row of x per program: y[m, n-tile] = sum_k (q - z) * x[m, k] (* s) in float32;
    grid (tiles_n, SPLIT_K, M). Operands as in `_w8a16_mma_kernel`."""
    pdl.wait(PDL)
    pdl.release(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    b_lo, b_hi = split_blocks(tl.cdiv(KQ, BK), SPLIT_K, pid_k)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    mask_n = offs_n < N
    x_row = x_ptr + m.to(tl.int64) * stride_xm
    w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * KQ + offs_k[None, :]       # [BN, BK]

    s, z = _group(s_ptr, z_ptr, 0, G, offs_n, mask_n, ZSYM, HAS_ZEROS, False)
    wide = tl.zeros((BN, BK), dtype=tl.float32)        # per channel: summed along K at the end
    acc = tl.zeros((BN,), dtype=tl.float32)
    for b in range(b_lo, b_hi):
        k0 = b * BK
        w = _load_w(w_ptrs, k0, KQ, offs_k, mask_n, EVEN_K)                    # [BN, BK]
        if HAS_PERM:
            ch = tl.load(perm_ptr + k0 + offs_k)
        else:
            ch = k0 + offs_k
        x = tl.load(x_row + ch, mask=ch < K, other=0.0).to(tl.float32)        # [BK]
        if GS == 0:
            wide += _codes(w, z, tl.float32, 0) * x[None, :]
        else:
            s, z = _group(s_ptr, z_ptr, k0 // GS, G, offs_n, mask_n, ZSYM, HAS_ZEROS,
                          False)
            acc += s * tl.sum(_codes(w, z, tl.float32, 0) * x[None, :], axis=1)
    if GS == 0:
        acc = tl.sum(wide, axis=1) * s
    _finish(acc, y_ptr, ws_ptr, lock_ptr, bias_ptr, m.to(tl.int64) * stride_ym + offs_n,
            m * N + offs_n, offs_n, mask_n, m * tl.cdiv(N, BN) + pid_n, pid_k, M * N,
            SPLIT_K, SPLIT, HAS_BIAS)


@triton.jit
def _dequant_kernel(w_ptr, s_ptr, z_ptr, perm_ptr, out_ptr, N, K, KQ, G, ZSYM, GS: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr, HAS_ZEROS: tl.constexpr,
                    HAS_PERM: tl.constexpr):
    """out [N, K] (activation dtype) = W, input channels in their original order: (q - z) * s
    in float32, rounded once; grid (cdiv(N, BN), cdiv(KQ, BK)), BK dividing GS."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    k0 = tl.program_id(1) * BK
    offs_k = k0 + tl.arange(0, BK)
    mask_n = offs_n < N
    w = tl.load(w_ptr + offs_n.to(tl.int64)[:, None] * KQ + offs_k[None, :],
                mask=mask_n[:, None] & (offs_k < KQ)[None, :], other=0)
    if GS == 0:
        s, z = _group(s_ptr, z_ptr, 0, G, offs_n, mask_n, ZSYM, HAS_ZEROS, False)
    else:
        s, z = _group(s_ptr, z_ptr, k0 // GS, G, offs_n, mask_n, ZSYM, HAS_ZEROS, False)
    wd = _codes(w, z, tl.float32, 0) * s[:, None]
    if HAS_PERM:
        ch = tl.load(perm_ptr + offs_k)
    else:
        ch = offs_k
    tl.store(out_ptr + offs_n.to(tl.int64)[:, None] * K + ch[None, :],
             wd.to(out_ptr.dtype.element_ty), mask=mask_n[:, None] & (ch[None, :] < K))


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Launch parameters. kernel "mma" (`_w8a16_mma_kernel`; block_n >= 64 uses wgmma) or
    "gemv" (`_w8a16_gemv_kernel`; block_m unused). block_k is an upper bound: it is lowered
    to divide the group size (and KQ where it can). convert: a key of CONVERTS, or "auto"
    (magic16 for fp16, magic32 for bf16). hoist: symmetric codes read in the MMA layout
    (see `_group`)."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    factored: bool = True
    num_warps: int = 4
    num_stages: int = 4
    group_m: int = 8
    kernel: str = "mma"
    convert: str = "auto"
    hoist: bool = True

    def __post_init__(self) -> None:
        for key, lo in (("block_m", 16), ("block_n", 16), ("block_k", 32)):
            v = getattr(self, key)
            if v < lo or v > 256 or v & (v - 1):
                raise ValueError(f"GemmConfig.{key}: expected a power of two in {lo}..256, "
                                 f"got {v}")
        if not 1 <= self.split_k <= 64:
            raise ValueError(f"GemmConfig.split_k: expected 1..64, got {self.split_k}")
        if self.num_warps not in (1, 2, 4, 8):
            raise ValueError(f"GemmConfig.num_warps: expected 1, 2, 4 or 8, got "
                             f"{self.num_warps}")
        if self.kernel not in ("mma", "gemv"):
            raise ValueError(f"GemmConfig.kernel: expected 'mma' or 'gemv', got "
                             f"{self.kernel!r}")
        if self.convert != "auto" and self.convert not in CONVERTS:
            raise ValueError(f"GemmConfig.convert: expected 'auto' or one of "
                             f"{sorted(CONVERTS)}, got {self.convert!r}")

    def describe(self) -> str:
        if self.kernel == "gemv":
            return f"gemv {self.block_n}x{self.block_k} s{self.split_k} w{self.num_warps}"
        kind = "fac" if self.factored else "deq"
        return (f"{kind} {self.block_m}x{self.block_n}x{self.block_k} s{self.split_k} "
                f"w{self.num_warps} st{self.num_stages}"
                + ("" if self.convert == "auto" else f" {self.convert}")
                + ("" if self.hoist else " nohoist"))


def choose_split_k(tiles: int, blocks: int, sms: int, per_sm: float = 2.0) -> int:
    """Splits of K so that ``tiles`` output tiles make at most per_sm programs per SM (one
    wave where per_sm is what fits on an SM: a partial second wave costs more than idle
    slots), keeping at least 2 K blocks per split."""
    if tiles >= per_sm * sms or blocks < 4:
        return 1
    return max(1, min(int(per_sm * sms) // tiles, blocks // 2, MAX_SPLIT_K))


def pick_config(m: int, n: int, kq: int, sms: int = 132) -> GemmConfig:
    """First-guess configs per M bucket (unmeasured: revise with bench/gemm_int8.py --sweep).
    Small M: 16-row tiles, 128 columns where N alone fills the SMs, else 64 and split-K."""
    wide_n = -(-n // 128) >= sms
    if m <= GEMV_MAX_M:
        cfg = GemmConfig(16, 64, 128, kernel="gemv", num_warps=4)
        return dataclasses.replace(
            cfg, split_k=choose_split_k(m * -(-n // 64), kq // 128, sms, 3.0))
    if m <= DECODE_MAX_M:
        cfg = GemmConfig(16, 128 if wide_n else 64, 128, num_warps=4, num_stages=4)
    elif m <= 32:
        cfg = GemmConfig(32, 128, 128, num_warps=4, num_stages=4)
    elif m <= 64:      # from here, groups dequantize (one accumulation chain) rather than factor
        cfg = GemmConfig(64, 128, 128, factored=False, num_warps=4, num_stages=4)
    elif m <= 128:
        cfg = GemmConfig(128, 128, 128, factored=False, num_warps=8, num_stages=3)
    else:
        cfg = GemmConfig(128, 256, 64, factored=False, num_warps=8, num_stages=3)
    tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    per_sm = 2.0 if cfg.block_m <= 32 else 1.0
    return dataclasses.replace(
        cfg, split_k=choose_split_k(tiles, kq // cfg.block_k, sms, per_sm))


def configs(m: int) -> list[GemmConfig]:
    """Candidates for `bench/gemm_int8.py --sweep` at this M (split-K is varied there;
    ``factored`` only matters for grouped weights)."""
    if m <= 16:
        c = [GemmConfig(16, 64, 128), GemmConfig(16, 128, 128), GemmConfig(16, 64, 256),
             GemmConfig(16, 128, 128, num_stages=3), GemmConfig(16, 256, 128, num_warps=8),
             GemmConfig(16, 64, 128, hoist=False), GemmConfig(16, 128, 128, hoist=False),
             GemmConfig(16, 64, 128, convert="cvt")]
        if m == 1:
            c += [GemmConfig(16, 64, 128, kernel="gemv"), GemmConfig(16, 32, 256, kernel="gemv"),
                  GemmConfig(16, 128, 128, kernel="gemv", num_warps=8)]
        return c
    if m <= 64:
        bm = max(16, triton.next_power_of_2(m))
        return [GemmConfig(bm, 128, 128), GemmConfig(bm, 64, 128),
                GemmConfig(bm, 128, 128, factored=False),
                GemmConfig(bm, 128, 128, num_warps=8, num_stages=3),
                GemmConfig(bm, 128, 64, num_stages=5)]
    if m <= 128:
        return [GemmConfig(128, 128, 128, factored=False, num_warps=8, num_stages=3),
                GemmConfig(128, 128, 64, factored=False, num_warps=4, num_stages=4),
                GemmConfig(64, 128, 128, factored=False, num_warps=4, num_stages=4),
                GemmConfig(128, 256, 64, factored=False, num_warps=8, num_stages=3),
                GemmConfig(128, 128, 128, factored=True, num_warps=8, num_stages=3)]
    return [GemmConfig(128, 256, 64, factored=False, num_warps=8, num_stages=3),
            GemmConfig(256, 128, 64, factored=False, num_warps=8, num_stages=3),
            GemmConfig(128, 128, 128, factored=False, num_warps=8, num_stages=3),
            GemmConfig(128, 128, 64, factored=False, num_warps=4, num_stages=4)]


def _block_k(bk: int, kq: int, gs: int) -> int:
    """The K step: the largest power of two <= bk dividing the group size, lowered further
    (not below 32) to divide KQ if that makes K even (no masks)."""
    while gs and gs % bk:
        bk //= 2
    even = bk
    while even > 32 and kq % even:
        even //= 2
    return even if kq % even == 0 else bk


def _convert(cfg: GemmConfig, dtype: torch.dtype) -> int:
    if cfg.convert == "auto":
        return CONVERTS["magic16" if dtype == torch.float16 else "magic32"]
    if cfg.convert == "magic16" and dtype != torch.float16:
        raise ValueError("GemmConfig.convert 'magic16' needs float16 activations")
    return CONVERTS[cfg.convert]


def _operands(prepared: dict) -> tuple:
    """(qweight, scales, zeros or scales, perm or scales, gs, flags) of a layout dict."""
    qweight, scales = prepared["qweight"], prepared["scales"]
    gs = prepared["group_size"] if scales.shape[1] > 1 else 0
    if not supported_group(gs):
        raise ValueError(f"layout: group_size {gs} must be 0, 32, 64 or a multiple of 128 "
                         f"(see layout.prepare)")
    zeros, perm = prepared.get("zeros"), prepared.get("perm")
    return (qweight, scales, scales if zeros is None else zeros,
            scales if perm is None else perm, gs, zeros is not None, perm is not None)


def _gemm(x: torch.Tensor, prepared: dict, bias: torch.Tensor | None, y: torch.Tensor,
          cfg: GemmConfig) -> None:
    qweight, scales, zeros, perm, gs, has_z, has_p = _operands(prepared)
    n, kq = qweight.shape
    m, k = x.shape
    bk = _block_k(cfg.block_k, kq, gs)
    gemv = cfg.kernel == "gemv"
    tiles_m = m if gemv else -(-m // cfg.block_m)
    tiles_n = -(-n // cfg.block_n)
    split = max(1, min(cfg.split_k, -(-kq // bk)))
    if split > 1:
        ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
        locks = prepared.get("locks")
        if locks is None or locks.numel() < tiles_m * tiles_n or locks.device != x.device:
            locks = torch.zeros(tiles_m * tiles_n, dtype=torch.int32, device=x.device)
    else:                                                # unused by the kernels
        ws = torch.empty(1, dtype=torch.float32, device=x.device)
        locks = torch.empty(1, dtype=torch.int32, device=x.device)
    args = (x, qweight, scales, zeros, perm, bias if bias is not None else y, y, ws, locks,
            m, n, k, kq, scales.shape[1], split, SYM_ZERO, x.stride(0), y.stride(0))
    flags = dict(GS=gs, BN=cfg.block_n, BK=bk, HAS_ZEROS=has_z, HAS_PERM=has_p,
                 HAS_BIAS=bias is not None, EVEN_K=kq % bk == 0, SPLIT=split > 1,
                 num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl.launch_args(x))
    if gemv:
        _w8a16_gemv_kernel[(tiles_n, split, m)](*args, **flags)
    else:
        _w8a16_mma_kernel[(tiles_m * tiles_n, split)](
            *args, BM=cfg.block_m, GROUP_M=cfg.group_m, FACTORED=cfg.factored,
            CONVERT=_convert(cfg, x.dtype), HOIST=cfg.hoist, **flags)


def dequantize_w(prepared: dict, k: int, dtype: torch.dtype) -> torch.Tensor:
    """W [N, K] in ``dtype``, input channels in their original order; one pass."""
    qweight, scales, zeros, perm, gs, has_z, has_p = _operands(prepared)
    n, kq = qweight.shape
    bk = _block_k(128, kq, gs)
    out = torch.empty((n, k), dtype=dtype, device=qweight.device)
    _dequant_kernel[(-(-n // 64), -(-kq // bk))](
        qweight, scales, zeros, perm, out, n, k, kq, scales.shape[1], SYM_ZERO, GS=gs, BN=64,
        BK=bk,
        HAS_ZEROS=has_z, HAS_PERM=has_p, num_warps=4)
    return out


def w8a16_linear(x: torch.Tensor, prepared: dict,
                 bias: torch.Tensor | None = None, out: torch.Tensor | None = None, *,
                 config: GemmConfig | None = None, path: str = "auto") -> torch.Tensor:
    """x [..., K] (bf16/fp16) -> [..., N] = x @ W^T + bias, W from `layout.prepare`.

    path: "auto" (by M, see the thresholds above), "fused" (a Triton kernel: ``config`` or
    `pick_config`) or "cublas" (dequantize W once, then ``x @ W^T`` through cuBLAS).
    ``out``: optional contiguous [M, N] tensor of x's dtype to write into.
    """
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"x: expected bfloat16 or float16, got {x.dtype}")
    if path not in ("auto", "fused", "cublas"):
        raise ValueError(f"path: expected 'auto', 'fused' or 'cublas', got {path!r}")
    n, kq = prepared["qweight"].shape
    lead, k = x.shape[:-1], x.shape[-1]
    if k > kq:
        raise ValueError(f"x: {k} input features, the weight has at most {kq}")
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    y = out if out is not None else torch.empty((m, n), dtype=x.dtype, device=x.device)
    if tuple(y.shape) != (m, n) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out: expected contiguous {x.dtype} [{m}, {n}]")
    if m == 0:
        return y.reshape(*lead, n)
    if path == "cublas" or (path == "auto" and config is None and m >= CUBLAS_MIN_M):
        w = dequantize_w(prepared, k, x.dtype)                       # [N, K]
        if bias is not None:
            torch.addmm(bias, x2, w.T, out=y)
        else:
            torch.mm(x2, w.T, out=y)
    else:
        _gemm(x2, prepared, bias, y, config or pick_config(m, n, kq, sm_count(x.device)))
    return y.reshape(*lead, n)
