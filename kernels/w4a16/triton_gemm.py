"""W4A16 GEMM in Triton: y[M, N] = x[M, K] @ W^T (+ bias), W in the layout of layout.py.

One kernel, `_w4a16_kernel`, for every M. It computes y^T = W x^T ("swapped" operands): the
weights are the tensor cores' A operand, taken from registers, and x^T the B operand, from
shared memory, so the M tile can be as small as 16 (decode) and as large as 256 (prefill).

Per 128-row K block it loads a word tile [16, BN] (int32, cp.async-pipelined) and makes the
operand ``a = q - z`` by integer ops alone: ``((w >> 4j) & 15) | MAGIC`` read as a 16-bit
float is OFF + q (MAGIC 0x4300 = 128.0 in bf16, 0x6400 = 1024.0 in fp16: no int->float
instruction), and subtracting OFF + z leaves q - z exactly.

- Group size a multiple of 128 (one group per block): `_block_rows` turns the words into all
  128 rows at once (joins keep a word's 8 nibbles in one thread, the permute + reshape only
  renames registers) and one dot of K = 128 consumes them with x[:, block].
- Group 32 or 64 (`_groups_in_block`): 8 dots of K = 16, one per nibble j (rows 16j .. 16j+15
  of the block), each by elementwise ops on the words.

Either way Triton reads the words from shared memory straight into the MMA operand registers:
the dequantized tile never goes through shared memory (checked in the SASS: no STS/LDSM in the
loop). Then

- FACTORED (exact; M <= 32 and some M <= 64): ``part = dot(a, x)`` per group (exact small
  integer weights, exact products, float32 sums), then ``acc += s * part`` in float32; or
- dequantizing (FACTORED=False): ``a * s`` in the activation dtype (for bf16 this rounds s
  to bf16 and the product once more: weights within ~2^-8 instead of 2^-9; exact rounding for
  fp16) and ``acc = dot(a, x, acc)``, one accumulation chain with no per-group correction.

Split-K (``SPLIT_K > 1``, grid axis 1): program (tile, s) covers K blocks [s*T, (s+1)*T),
stores its float32 partial to ``ws[s]`` and bumps the tile's arrival counter (acq_rel, after a
CTA barrier); the last program to arrive sums the SPLIT_K partials in split order
(deterministic), adds the bias, writes y and resets the counter to 0. One launch.

Preconditions (checked in `w4a16_linear`): x [M, KX] with unit stride along K and KX <= KP,
columns past KX count as zero; KP a multiple of 128; GS in (32, 64) or a multiple of 128.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

# Dispatch thresholds, measured on an H100 with `bench/gemm.py --sweep` (bench/README.md).
DECODE_MAX_M = 16        # M <= this: 16-row M tiles (one wgmma N step), factored
CUBLAS_MIN_M = 512       # M >= this: dequantize once to W^T and call cuBLAS (x @ W^T); at
                         # M = 512 that wins for N = 4096 (o, down), loses ~7% on gate-up
MAX_SPLIT_K = 16
BLOCK_K = 128            # layout rows per K block (layout.BLOCK)


@triton.jit
def _block_rows(w, BN: tl.constexpr):
    """int32 words [16, BN] of one K block -> int32 codes [128, BN], row 16j + r = nibble j
    of word r. The joins put the 8 nibbles of a word in one thread's registers and the
    permute + reshape only renames them, so this costs the shifts and one mask."""
    t = tl.join(tl.join(tl.join(w, w >> 16), tl.join(w >> 8, w >> 24)),
                tl.join(tl.join(w >> 4, w >> 20), tl.join(w >> 12, w >> 28)))
    # each join appends a last axis (the innermost pair first): t[r, n, a, b, c] = w[r, n]
    # >> 4j with j = 4a + 2b + c
    t = tl.permute(t, (2, 3, 4, 0, 1))                                   # [a, b, c, r, n]
    return tl.reshape(t, (128, BN)) & 0xF


@triton.jit
def _groups_in_block(acc, w, x_rows, sz_ptr, k0, KX, N, offs_n, offs_r, mask_m, mask_n,
                     GS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     FACTORED: tl.constexpr, MAGIC: tl.constexpr, OFF: tl.constexpr):
    """One K block of groups smaller than the block (GS 32 or 64): 8 dots of K = 16, one
    per nibble j (rows k0 + 16j .. +16), with each group's scales and zeros."""
    dt = x_rows.dtype.element_ty
    part = tl.zeros((BN, BM), dtype=tl.float32)
    for j in tl.static_range(8):
        kj = k0 + j * 16
        if (j * 16) % GS == 0:             # first tile of a group: its scales and zeros
            sz = tl.load(sz_ptr + (kj // GS) * N + offs_n, mask=mask_n, other=0)
            s = (sz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)              # [BN]
            zoff = (((sz >> 16) & 0xFF) + OFF).to(dt)                             # OFF + z
        xj = tl.load(x_rows + kj + offs_r[None, :],
                     mask=mask_m[:, None] & (kj + offs_r[None, :] < KX), other=0.0)  # [BM, 16]
        q = (((w >> (4 * j)) & 0xF) | MAGIC).to(tl.int16)
        a = q.to(dt, bitcast=True) - zoff[None, :]                       # [16, BN] q - z
        if FACTORED:
            part = tl.dot(tl.trans(a), tl.trans(xj), part)                   # [BN, BM]
            if ((j + 1) * 16) % GS == 0:   # last tile of the group
                acc += s.to(tl.float32)[:, None] * part
                part = tl.zeros((BN, BM), dtype=tl.float32)
        else:
            acc = tl.dot(tl.trans(a * s.to(dt)[None, :]), tl.trans(xj), acc)
    return acc


@triton.jit
def _epilogue(acc, bias_ptr, y_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS: tl.constexpr):
    """y[offs_m, offs_n] = acc (+ bias), rounded to y's dtype."""
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc + b[None, :]
    ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _w4a16_kernel(
    x_ptr, w_ptr, sz_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, KX, KP, SPLIT_K, stride_xm, stride_ym,
    GS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr,
    FACTORED: tl.constexpr, IS_BF16: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """x [M, KX] @ W^T -> y [M, N]; grid (tiles_m * tiles_n, SPLIT_K). See module docstring.

    w_ptr: int32 [KP/8, N] words; sz_ptr: int32 [KP/GS, N] (fp16 scale bits | zero << 16);
    ws_ptr: float32 [SPLIT_K, M, N] partials; lock_ptr: int32 counters (zero on entry).
    """
    KB: tl.constexpr = 16                  # words per block = rows per nibble tile
    if IS_BF16:
        MAGIC: tl.constexpr = 0x4300       # bf16 128.0: 0x4300 | q == 128 + q
        OFF: tl.constexpr = 128
    else:
        MAGIC: tl.constexpr = 0x6400       # fp16 1024.0
        OFF: tl.constexpr = 1024
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    tiles_m = tl.cdiv(M, BM)
    tiles_n = tl.cdiv(N, BN)
    in_group = GROUP_M * tiles_n
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m

    blocks = KP // (8 * KB)
    per_split = tl.cdiv(blocks, SPLIT_K)
    b_lo = pid_k * per_split
    b_hi = tl.minimum(b_lo + per_split, blocks)

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_r = tl.arange(0, KB)
    offs_k = tl.arange(0, 8 * KB)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_ptrs = w_ptr + offs_r[:, None] * N + offs_n[None, :]
    dt = x_ptr.dtype.element_ty

    acc = tl.zeros((BN, BM), dtype=tl.float32)                           # y^T tile
    for b in range(b_lo, b_hi):
        k0 = b * (8 * KB)
        w = tl.load(w_ptrs + b * KB * N, mask=mask_n[None, :], other=0)  # [KB, BN] words
        if GS % (8 * KB) == 0:             # one group over the block: a single K=128 dot
            x = tl.load(x_rows + k0 + offs_k[None, :],
                        mask=mask_m[:, None] & (k0 + offs_k[None, :] < KX), other=0.0)
            sz = tl.load(sz_ptr + (k0 // GS) * N + offs_n, mask=mask_n, other=0)
            s = (sz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)              # [BN]
            zoff = (((sz >> 16) & 0xFF) + OFF).to(dt)                             # OFF + z
            q = (_block_rows(w, BN) | MAGIC).to(tl.int16)
            a = q.to(dt, bitcast=True) - zoff[None, :]                   # [128, BN] q - z
            if FACTORED:
                acc += s.to(tl.float32)[:, None] * tl.dot(tl.trans(a), tl.trans(x))
            else:
                acc = tl.dot(tl.trans(a * s.to(dt)[None, :]), tl.trans(x), acc)
        else:
            acc = _groups_in_block(acc, w, x_rows, sz_ptr, k0, KX, N, offs_n, offs_r, mask_m,
                                   mask_n, GS, BM, BN, FACTORED, MAGIC, OFF)
    out = tl.trans(acc)                                                  # [BM, BN]

    if SPLIT_K == 1:
        _epilogue(out, bias_ptr, y_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS)
    else:
        mask = mask_m[:, None] & mask_n[None, :]
        part_off = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + pid_k * M * N + part_off, out, mask=mask)
        tl.debug_barrier()                 # all partial stores of this CTA before the release
        tile = pid_m * tiles_n + pid_n
        count = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:           # last to arrive: reduce in split order
            total = tl.zeros((BM, BN), dtype=tl.float32)
            for i0 in range(0, SPLIT_K, 4):    # 4 loads in flight per round trip
                for d in tl.static_range(4):
                    total += tl.load(ws_ptr + (i0 + d) * M * N + part_off,
                                     mask=mask & (i0 + d < SPLIT_K), other=0.0,
                                     cache_modifier=".cg")
            tl.atomic_xchg(lock_ptr + tile, 0)
            _epilogue(total, bias_ptr, y_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS)


@triton.jit
def _dequant_kernel(w_ptr, sz_ptr, out_ptr, N, GS: tl.constexpr, BN: tl.constexpr):
    """out [KP, N] (activation dtype) = W^T in layout row order: (q - z) * s in float32;
    grid (KP / 128, cdiv(N, BN))."""
    KB: tl.constexpr = 16
    b = tl.program_id(0)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    offs_r = tl.arange(0, KB)
    w = tl.load(w_ptr + (b * KB + offs_r)[:, None] * N + offs_n[None, :], mask=mask_n[None, :],
                other=0)
    for j in tl.static_range(8):
        kj = b * (8 * KB) + j * KB
        sz = tl.load(sz_ptr + (kj // GS) * N + offs_n, mask=mask_n, other=0)
        s = (sz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        z = ((sz >> 16) & 0xFF).to(tl.float32)
        q = ((w >> (4 * j)) & 0xF).to(tl.float32)
        wd = (q - z[None, :]) * s[None, :]
        tl.store(out_ptr + (kj + offs_r).to(tl.int64)[:, None] * N + offs_n[None, :],
                 wd.to(out_ptr.dtype.element_ty), mask=mask_n[None, :])


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Launch parameters of `_w4a16_kernel` (block_n is the MMA's M: >= 64 uses wgmma)."""

    block_m: int
    block_n: int
    split_k: int = 1
    factored: bool = True
    num_warps: int = 4
    num_stages: int = 4
    group_m: int = 8

    def __post_init__(self) -> None:
        for key in ("block_m", "block_n"):
            v = getattr(self, key)
            if v < 16 or v > 256 or v & (v - 1):
                raise ValueError(f"GemmConfig.{key}: expected a power of two in 16..256, "
                                 f"got {v}")
        if not 1 <= self.split_k <= 64:
            raise ValueError(f"GemmConfig.split_k: expected 1..64, got {self.split_k}")
        if self.num_warps not in (4, 8):
            raise ValueError(f"GemmConfig.num_warps: expected 4 or 8, got {self.num_warps}")


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (132 assumed off-GPU, e.g. in the interpreter)."""
    if device.type != "cuda":
        return 132
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def choose_split_k(m: int, n: int, kp: int, bm: int, bn: int, sms: int,
                   per_sm: float = 1.0) -> int:
    """Splits of K when there are fewer than per_sm * SMs output tiles: about per_sm
    programs per SM, keeping at least 2 K blocks of 128 rows per split. Small tiles (several
    programs per SM) want per_sm > 1; large ones (one per SM) 0.5, as a second partial wave
    costs more than idle SMs."""
    tiles = -(-m // bm) * -(-n // bn)
    blocks = kp // BLOCK_K
    if tiles >= per_sm * sms or blocks < 4:
        return 1
    return max(1, min(-(-int(per_sm * sms) // tiles), blocks // 2, MAX_SPLIT_K))


def pick_config(m: int, n: int, kp: int, sms: int = 132) -> GemmConfig:
    """Hand-picked configs per M bucket, from `bench/gemm.py --sweep` on an H100 (the six
    Llama shapes' o/qkv/down and gate-up, M = 1 .. 512; each pick within ~10% of the best
    config tried for those shapes).

    Up to M = 32 the factored kernel (exact); dequantizing from M = 64 where N is wide.
    "wide": N alone makes at least one tile of 128 columns per SM (gate-up); otherwise
    narrower tiles and split-K make up the parallelism."""
    wide_n = -(-n // 128) >= sms
    per_sm = 1.0
    if m <= DECODE_MAX_M:
        if wide_n:
            cfg = GemmConfig(16, 128, factored=True, num_warps=4, num_stages=3)
        else:
            cfg, per_sm = GemmConfig(16, 64, factored=True, num_warps=4, num_stages=3), 2.5
    elif m <= 32:
        cfg = (GemmConfig(32, 128, factored=True, num_warps=4, num_stages=4) if wide_n
               else GemmConfig(32, 128, factored=True, num_warps=8, num_stages=3))
    elif m <= 64:
        cfg = (GemmConfig(64, 128, factored=False, num_warps=4, num_stages=4) if wide_n
               else GemmConfig(64, 64, factored=True, num_warps=4, num_stages=4))
    elif m <= 128:
        if wide_n:
            cfg, per_sm = GemmConfig(128, 256, factored=False, num_warps=8, num_stages=3), 0.5
        else:
            cfg = GemmConfig(128, 64, factored=False, num_warps=4, num_stages=3)
    else:
        cfg, per_sm = GemmConfig(256, 128, factored=False, num_warps=8, num_stages=3), 0.5
    split = choose_split_k(m, n, kp, cfg.block_m, cfg.block_n, sms, per_sm)
    return dataclasses.replace(cfg, split_k=split)


def _gemm(x: torch.Tensor, prepared: dict[str, torch.Tensor], bias: torch.Tensor | None,
          y: torch.Tensor, cfg: GemmConfig) -> None:
    qweight, sz = prepared["qweight"], prepared["sz"]
    m, kx = x.shape
    kp, n = qweight.shape[0] * 8, qweight.shape[1]
    gs = kp // sz.shape[0]
    if kp % BLOCK_K or not (gs in (32, 64) or gs % BLOCK_K == 0):
        raise ValueError(f"layout: KP={kp} must be a multiple of {BLOCK_K} and the group size "
                         f"{gs} 32, 64 or a multiple of {BLOCK_K} (see layout.prepare)")
    tiles_m, tiles_n = -(-m // cfg.block_m), -(-n // cfg.block_n)
    split = min(cfg.split_k, kp // BLOCK_K)
    if split > 1:
        ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
        locks = prepared.get("locks")
        if locks is None or locks.numel() < tiles_m * tiles_n:
            locks = torch.zeros(tiles_m * tiles_n, dtype=torch.int32, device=x.device)
    else:                                                # unused by the kernel
        ws = torch.empty(1, dtype=torch.float32, device=x.device)
        locks = torch.empty(1, dtype=torch.int32, device=x.device)
    grid = (tiles_m * tiles_n, split)
    _w4a16_kernel[grid](
        x, qweight, sz, bias if bias is not None else y, y, ws, locks,
        m, n, kx, kp, split, x.stride(0), y.stride(0),
        GS=gs, BM=cfg.block_m, BN=cfg.block_n, GROUP_M=cfg.group_m,
        FACTORED=cfg.factored, IS_BF16=x.dtype == torch.bfloat16,
        HAS_BIAS=bias is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def dequantize_t(prepared: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """W^T [KP, N] in ``dtype``, rows in layout order (pad rows are 0); one pass."""
    qweight, sz = prepared["qweight"], prepared["sz"]
    kp, n = qweight.shape[0] * 8, qweight.shape[1]
    out = torch.empty((kp, n), dtype=dtype, device=qweight.device)
    _dequant_kernel[(kp // BLOCK_K, -(-n // 128))](qweight, sz, out, n, GS=kp // sz.shape[0],
                                                   BN=128, num_warps=4)
    return out


def w4a16_linear(x: torch.Tensor, prepared: dict[str, torch.Tensor],
                 bias: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
                 config: GemmConfig | None = None, path: str = "auto") -> torch.Tensor:
    """x [..., K] (bf16/fp16) -> [..., N] = x @ W^T + bias, W from `layout.prepare`.

    path: "auto" (by M: see the thresholds above), "fused" (always `_w4a16_kernel`) or
    "cublas" (dequantize W^T once, then ``x @ W^T`` through cuBLAS). ``out``: optional
    contiguous [M, N] tensor of x's dtype to write into. ``config`` overrides the pick.
    """
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"x: expected bfloat16 or float16, got {x.dtype}")
    if path not in ("auto", "fused", "cublas"):
        raise ValueError(f"path: expected 'auto', 'fused' or 'cublas', got {path!r}")
    qweight = prepared["qweight"]
    kp, n = qweight.shape[0] * 8, qweight.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if "perm" in prepared:
        x2 = x2.index_select(1, prepared["perm"])                    # [M, KP]
    if x2.shape[1] > kp:
        raise ValueError(f"x: {x2.shape[1]} input features, the weight has at most {kp}")
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    y = out if out is not None else torch.empty((m, n), dtype=x.dtype, device=x.device)
    if y.shape != (m, n) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out: expected contiguous {x.dtype} [{m}, {n}]")
    if m == 0:
        return y.reshape(*lead, n)
    if path == "cublas" or (path == "auto" and m >= CUBLAS_MIN_M and config is None):
        wt = dequantize_t(prepared, x.dtype)[: x2.shape[1]]         # [KX, N]
        if bias is not None:
            torch.addmm(bias, x2, wt, out=y)
        else:
            torch.mm(x2, wt, out=y)
    else:
        cfg = config or pick_config(m, n, kp, sm_count(x.device))
        _gemm(x2, prepared, bias, y, cfg)
    return y.reshape(*lead, n)
