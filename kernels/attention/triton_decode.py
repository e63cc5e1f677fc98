"""Decode attention in Triton: one new query token per sequence over a batched KV cache, GQA,
optional sliding window, split-K ("flash-decoding").

For sequence b with L = lengths[b], query head h, kv head g = h // R (R = Hq / Hk)::

    out[b, h] = sum_p softmax_p(q[b, h] . k[b, p, g] * scale) v[b, p, g]
    over p in [lo, L), lo = max(0, L - W) with a window W, else 0.

Split kernel, grid (B * Hk, NC): program (b, g, c) covers positions [c * CHUNK, (c+1) * CHUNK)
in BLOCK_N tiles; each K/V tile is loaded once for the group's R query heads (rows of a
[BLOCK_R >= 16, D] q tile, so both products are tensor-core dots). Online softmax in float32,
base 2 (scores times scale * log2 e): per (b, h, c) it stores the unnormalized partial
``acc = sum_p 2^(s_p - m) v_p``, ``m = max_p s_p`` and ``l = sum_p 2^(s_p - m)``.
Combine: ``out = sum_c 2^(m_c - M) acc_c / sum_c 2^(m_c - M) l_c`` over the chunks that
hold a valid position (M = max_c m_c), in chunk order. By default the last split program of
each (b, g) to finish (an arrival counter per (b, g), reset after use) does it for the R
heads of its group, so attention is one launch; ``fused=False`` (or
``OPTIMIZER_ATTN_FUSED=0``) runs the separate combine kernel, grid (B * Hq,), instead. On an
H200 (bench/RESULTS.md) the fusion showed no gain: alone it was slower (8.7 against 5.1 µs
at batch 1, 512 positions, different sessions), and in the decode step attention plus the o
projection after it took about as long either way (10.4 against 10.7 µs a layer in int4),
since the projection's weight loads overlap the attention under PDL. With one chunk
(NC = 1) the split kernel writes out itself. Probabilities are rounded to v's dtype before
the second dot, as the reference rounds them.

Default tile (`default_tile`): one 256-position tile and 8 warps per (b, g) where that covers
the cache on sm_90 (16-bit q, D <= 128, B * Hk <= SMs), else 64 positions and 4 warps (32
for float32 or D > 128).

CUDA-graph capturable: the grid depends on shapes only (B, Hk, S_max), lengths are read on
the device, no host syncs; programs past a sequence's length loop zero times and store
nothing. A sequence of length 0 gets zeros.

Preconditions: q [B, Hq*D] (unit stride along the row), k_cache, v_cache [B, S_max, Hk, D]
with unit stride along D, lengths [B] int32 in [0, S_max], Hq % Hk == 0; any D (masked to a
power of two >= 16: D = 64 and 128 are the tuned cases).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .. import pdl
from ..device_info import sm_count

from .kv_cache import cache_write  # noqa: F401  (re-exported: the runtime's decode step)

NO_WINDOW = 1 << 30


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, len_ptr, ws_ptr, ml_ptr, o_ptr, lock_ptr,
                  stride_qb, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                  stride_ob, qk_scale, window, CHUNK, NUM_CHUNKS,
                  HK: tl.constexpr, R: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
                  FUSED: tl.constexpr, BLOCK_C: tl.constexpr, IEEE: tl.constexpr,
                  PDL: tl.constexpr):
    pdl.wait(PDL)
    pdl.release(PDL)
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid // HK).to(tl.int64)
    g = pid % HK
    length = tl.load(len_ptr + b)
    lo = tl.maximum(length - window, 0)
    n_lo = tl.maximum(c * CHUNK, (lo // BLOCK_N) * BLOCK_N)   # every tile holds a valid p
    n_hi = tl.minimum(c * CHUNK + CHUNK, length)

    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_rd = (offs_r < R)[:, None] & (offs_d < D)[None, :]
    heads = g * R + offs_r                                                   # [BR]
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * D + offs_d[None, :], mask=mask_rd,
                other=0.0)                                                   # [BR, BD]
    k_base = k_ptr + b * stride_kb + g * stride_kh
    v_base = v_ptr + b * stride_vb + g * stride_vh

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for start in range(n_lo, n_hi, BLOCK_N):
        n = start + offs_n                                                   # [BN]
        valid = (n >= lo) & (n < length)
        mask_nd = valid[:, None] & (offs_d < D)[None, :]
        k = tl.load(k_base + n[:, None] * stride_ks + offs_d[None, :], mask=mask_nd,
                    other=0.0)                                               # [BN, BD]
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))                                       # [BR, BN] f32
        s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * stride_vs + offs_d[None, :], mask=mask_nd,
                    other=0.0)                                               # [BN, BD]
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    if SINGLE:
        out = tl.where(l_i[:, None] > 0, acc / l_i[:, None], 0.0)
        tl.store(o_ptr + b * stride_ob + heads[:, None] * D + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=mask_rd)
    else:
        has = n_lo < n_hi
        row = (b * (HK * R) + heads) * NUM_CHUNKS + c                         # [BR]
        tl.store(ws_ptr + row[:, None] * D + offs_d[None, :], acc, mask=mask_rd & has)
        tl.store(ml_ptr + row * 2, m_i, mask=(offs_r < R) & has)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=(offs_r < R) & has)
        if FUSED:                          # the last of the group's chunks combines them
            tl.debug_barrier()             # all partial stores of this program first
            count = tl.atomic_add(lock_ptr + pid, 1, sem="acq_rel", scope="gpu")
            if count == NUM_CHUNKS - 1:
                _combine_group(ws_ptr, ml_ptr, o_ptr, b, heads, offs_r, offs_d, mask_rd,
                               stride_ob, lo, length, CHUNK, NUM_CHUNKS, HK, R, D, BLOCK_R,
                               BLOCK_D, BLOCK_C)
                tl.atomic_xchg(lock_ptr + pid, 0)


@triton.jit
def _combine_group(ws_ptr, ml_ptr, o_ptr, b, heads, offs_r, offs_d, mask_rd, stride_ob, lo,
                   length, CHUNK, NUM_CHUNKS, HK: tl.constexpr, R: tl.constexpr,
                   D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """The combine kernel's sum for one (b, g): the R heads' chunk partials in chunk order,
    read past L1 (other programs wrote them); the maxima of BLOCK_C chunks in one load, the
    partials of 4 chunks per round trip."""
    c_lo = lo // CHUNK
    c_hi = tl.cdiv(length, CHUNK)
    base = (b * (HK * R) + heads) * NUM_CHUNKS                               # [BR]
    mask_r = offs_r < R
    offs_c = tl.arange(0, BLOCK_C)
    m_max = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        cs = c0 + offs_c
        m = tl.load(ml_ptr + (base[None, :] + cs[:, None]) * 2,
                    mask=(cs < c_hi)[:, None] & mask_r[None, :], other=float("-inf"),
                    cache_modifier=".cg")                                    # [BC, BR]
        m_max = tl.maximum(m_max, tl.max(m, 0))
    l_sum = tl.zeros([BLOCK_R], tl.float32)
    total = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for c0 in range(c_lo, c_hi, 4):
        for j in tl.static_range(4):
            ok = c0 + j < c_hi
            row = base + c0 + j
            m = tl.load(ml_ptr + row * 2, mask=mask_r & ok, other=float("-inf"),
                        cache_modifier=".cg")
            el = tl.load(ml_ptr + row * 2 + 1, mask=mask_r & ok, other=0.0,
                         cache_modifier=".cg")
            a = tl.load(ws_ptr + row[:, None] * D + offs_d[None, :], mask=mask_rd & ok,
                        other=0.0, cache_modifier=".cg")
            w = tl.where(mask_r & ok, tl.exp2(m - m_max), 0.0)
            l_sum += w * el
            total += w[:, None] * a
    out = tl.where(l_sum[:, None] > 0, total / l_sum[:, None], 0.0)
    tl.store(o_ptr + b * stride_ob + heads[:, None] * D + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=mask_rd)


@triton.jit
def _combine_kernel(ws_ptr, ml_ptr, len_ptr, o_ptr, stride_ob, window, CHUNK, NUM_CHUNKS,
                    HQ: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)
    pdl.release(PDL)
    pid = tl.program_id(0).to(tl.int64)                                      # b * HQ + h
    b = pid // HQ
    h = pid % HQ
    length = tl.load(len_ptr + b)
    lo = tl.maximum(length - window, 0)
    c_lo = lo // CHUNK                                                       # valid chunks:
    c_hi = tl.cdiv(length, CHUNK)                                            # [c_lo, c_hi)
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    base = pid * NUM_CHUNKS

    m_vec = tl.full([BLOCK_C], float("-inf"), tl.float32)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        cs = c0 + offs_c
        m_vec = tl.maximum(m_vec, tl.load(ml_ptr + (base + cs) * 2, mask=cs < c_hi,
                                          other=float("-inf")))
    m_max = tl.max(m_vec, 0)
    l_vec = tl.zeros([BLOCK_C], tl.float32)
    acc = tl.zeros([BLOCK_C, BLOCK_D], tl.float32)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        cs = c0 + offs_c
        mc = cs < c_hi
        w = tl.exp2(tl.load(ml_ptr + (base + cs) * 2, mask=mc, other=float("-inf")) - m_max)
        l_vec += w * tl.load(ml_ptr + (base + cs) * 2 + 1, mask=mc, other=0.0)
        a = tl.load(ws_ptr + (base + cs)[:, None] * D + offs_d[None, :],
                    mask=mc[:, None] & (offs_d < D)[None, :], other=0.0)     # [BC, BD]
        acc += w[:, None] * a
    l_sum = tl.sum(l_vec, 0)
    out = tl.where(l_sum > 0, tl.sum(acc, 0) / l_sum, 0.0)
    tl.store(o_ptr + b * stride_ob + h * D + offs_d, out.to(o_ptr.dtype.element_ty),
             mask=offs_d < D)


def _env(name: str) -> int | None:
    v = os.environ.get(f"OPTIMIZER_ATTN_{name}")
    return int(v) if v else None


def default_tile(q: torch.Tensor, b: int, hk: int, s_max: int, block_d: int,
                 sms: int) -> tuple[int, int]:
    """(BLOCK_N, warps). One 256-position tile and 8 warps per (b, g), with no combine, where
    that covers the whole cache (S_max <= 256), B * Hk <= SMs, q is 16-bit with D <= 128 on
    sm_90: in the 8B int4 decode step on an H200 (S_max 200) it gave batch 1 / 2 / 4 decode
    0.7 / 1.6 / 2.1% more tok/s than (64, 4) (bench/RESULTS.md). Otherwise 64 positions and
    4 warps (32 for float32 or D > 128): 256-position tiles elsewhere measured slower alone
    at batch 8 and 32 with 512 and 4096 positions (and at batch 1 with 512)."""
    if block_d > 128 or q.dtype == torch.float32:
        return 32, 4
    if (s_max <= 256 and b * hk <= sms and q.is_cuda
            and torch.cuda.get_device_capability(q.device)[0] == 9):
        return 256, 8
    return 64, 4


def pick_chunk(b: int, hk: int, s_max: int, block_n: int, sms: int) -> int:
    """Positions per split program: the largest power of two (>= block_n) that still gives
    B * Hk * cdiv(S_max, chunk) >= 2 programs per SM; S_max-sized when B * Hk alone does."""
    want = triton.cdiv(2 * sms, b * hk)                                      # chunks per (b, g)
    chunk = triton.next_power_of_2(triton.cdiv(s_max, want))
    return max(block_n, chunk)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     lengths: torch.Tensor, n_heads: int, n_kv_heads: int,
                     window: int | None = None, scale: float | None = None,
                     out: torch.Tensor | None = None, *, locks: torch.Tensor | None = None,
                     fused: bool | None = None, chunk: int | None = None,
                     block_n: int | None = None, num_warps: int | None = None,
                     num_stages: int | None = None) -> torch.Tensor:
    """q [B, Hq*D], caches [B, S_max, Hk, D], lengths [B] int32 -> out [B, Hq*D] in q's
    dtype (see the module doc). ``locks``: int32 zeros of at least B * Hk entries, left zero
    (the fused combine's arrival counters; allocated per call when None); ``fused=False``
    combines in a second kernel instead (default: fused, unless ``OPTIMIZER_ATTN_FUSED=0``).
    ``chunk`` / ``block_n`` / warps / stages override the shape-based choice (a power-of-two
    multiple of block_n; for tuning); where one is None, the environment's
    ``OPTIMIZER_ATTN_CHUNK`` / ``_BLOCK_N`` / ``_WARPS`` / ``_STAGES`` (A/B measurements in
    the decode step) before the default."""
    bsz, s_max, hk, d = k_cache.shape
    if hk != n_kv_heads or n_heads % n_kv_heads or q.shape != (bsz, n_heads * d):
        raise ValueError(f"q {tuple(q.shape)}, cache {tuple(k_cache.shape)}: expected "
                         f"q [B, {n_heads} * D], cache [B, S, {n_kv_heads}, D]")
    if v_cache.shape != k_cache.shape or lengths.shape != (bsz,):
        raise ValueError(f"v_cache {tuple(v_cache.shape)}, lengths {tuple(lengths.shape)}: "
                         f"expected {tuple(k_cache.shape)}, ({bsz},)")
    if q.stride(1) != 1:
        q = q.contiguous()
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache need unit stride along D")
    o = out if out is not None else torch.empty_like(q, memory_format=torch.contiguous_format)
    if o.shape != q.shape or o.dtype != q.dtype or o.stride(1) != 1:
        raise ValueError(f"out must be a {q.dtype} {tuple(q.shape)} tensor")
    if bsz == 0:
        return o
    r = n_heads // n_kv_heads
    block_d = max(16, triton.next_power_of_2(d))
    sms = sm_count(q.device, off_gpu=4)
    chunk = chunk or _env("CHUNK")
    block_n = block_n or _env("BLOCK_N")
    tile_n, tile_warps = default_tile(q, bsz, hk, s_max, block_d, sms)
    if not block_n:                            # a caller's chunk smaller than the tile
        block_n = min(tile_n, chunk) if chunk else tile_n
    chunk = chunk or pick_chunk(bsz, hk, s_max, block_n, sms)
    num_warps = num_warps or _env("WARPS") or tile_warps
    num_stages = num_stages or _env("STAGES") or 2
    if chunk % block_n or (window is not None and window < 1):
        raise ValueError(f"chunk {chunk} must be a multiple of block_n {block_n}, "
                         f"window {window} >= 1")   # tiles must not cross a chunk's end
    nc = triton.cdiv(s_max, chunk)
    lengths = lengths.to(torch.int32)
    qk_scale = (scale if scale is not None else d ** -0.5) * math.log2(math.e)
    win = NO_WINDOW if window is None else int(window)
    single = nc == 1
    ws = torch.empty((bsz * n_heads * nc * d) if not single else 1, dtype=torch.float32,
                     device=q.device)
    ml = torch.empty((bsz * n_heads * nc * 2) if not single else 1, dtype=torch.float32,
                     device=q.device)
    if fused is None:
        fused = os.environ.get("OPTIMIZER_ATTN_FUSED", "1") != "0"
    fused = fused and not single
    if fused:
        if locks is None:
            locks = torch.zeros(bsz * hk, dtype=torch.int32, device=q.device)
        elif locks.dtype != torch.int32 or locks.numel() < bsz * hk:
            raise ValueError(f"locks: expected int32 with at least {bsz * hk} entries")
    _split_kernel[(bsz * hk, nc)](
        q, k_cache, v_cache, lengths, ws, ml, o, locks if fused else ml, q.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0),
        v_cache.stride(1), v_cache.stride(2), o.stride(0), qk_scale, win, chunk, nc, HK=hk,
        R=r, D=d, BLOCK_R=max(16, triton.next_power_of_2(r)), BLOCK_D=block_d,
        BLOCK_N=block_n, SINGLE=single, FUSED=fused,
        BLOCK_C=min(16, triton.next_power_of_2(nc)), IEEE=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages, **pdl.launch_args(q))
    if not single and not fused:
        _combine_kernel[(bsz * n_heads,)](
            ws, ml, lengths, o, o.stride(0), win, chunk, nc, HQ=n_heads, D=d,
            BLOCK_C=min(16, triton.next_power_of_2(nc)), BLOCK_D=block_d,
            num_warps=max(1, min(4, block_d // 64)), **pdl.launch_args(q))
    return o
