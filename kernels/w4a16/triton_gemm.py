"""W4A16 GEMM in Triton: y[M, N] = x[M, K] @ W^T (+ bias), W in the layout of layout.py.

One kernel, `_w4a16_kernel`, for M up to ~1024. It computes y^T = W x^T ("swapped"
operands): the weights are the tensor cores' A operand, taken from registers, and x^T the B
operand, from shared memory, so the M tile can be as small as 16 (decode) or as large as 256.

Per 128-row K block a program loads its [BN, 16] words (cp.async-pipelined, 16-byte loads:
a column's 16 words are contiguous) and makes the operand by integer ops alone: for a word w
and j < 4, ``((w >> 4j) & 0x000F000F) | MAGIC`` is a pair of 16-bit floats OFF + q for the
block rows kk, kk + 1 that one A-operand register holds (layout.py orders the nibbles so),
with MAGIC 0x4300 (bf16 128.0) or 0x6400 (fp16 1024.0): no int -> float conversion. One
packed subtraction of OFF + z leaves q - z exactly. `_unpack` does a word in 11 instructions
(3 shifts, 4 lop3, 4 packed subs; PTX through `tl.inline_asm_elementwise`, plain Triton ops
in the interpreter); the joins and reshapes in `_rows` only rename registers (checked in the
SASS: no shuffles or shared-memory round trips between the word load and the wgmma). The
decode loop runs ~2.4 instructions per weight and thread, 1.4 of them the unpacking.

- FACTORED (exact): ``part = dot(q - z, x)`` per group (small integer weights, exact
  products, float32 sums), then ``acc += s * part`` in float32; or
- dequantizing (FACTORED=False): ``(q - z) * s`` in the activation dtype (one more packed op
  per pair; for bf16 s is rounded to bf16 and the product once more: weights within ~2^-8
  instead of 2^-9) and ``acc = dot(a, x, acc)``, one accumulation chain whose wgmmas stay
  in flight across blocks (the factored one waits for each group's dot); better from M ~128.

Groups of 32 or 64 rows, or ``block_k`` < 128: the block is cut into sub-tiles of 32-row
chunks (word c of each quad lane, see layout.py), one dot each.

Act-order (``perm``): `gather_columns` writes ``x[:, perm]`` first (one small launch). With
``gather`` the kernel instead reads ``x[m, perm[k]]`` itself (2-byte loads, prefetched a
block ahead); measured on an H200 it only ties at M = 1 and loses elsewhere, so
`pick_config` never uses it.

Split-K (``SPLIT_K > 1``, grid axis 1): program (tile, s) covers K blocks [s*T, (s+1)*T),
stores its float32 partial to ``ws[s]`` and bumps the tile's arrival counter (acq_rel, after a
CTA barrier); the last program to arrive sums the SPLIT_K partials in split order
(deterministic), adds the bias, writes y and resets the counter to 0. One launch; the
epilogue is compiled only into kernels launched with a split (its loads cost registers).

From M = CUBLAS_MIN_M the "cublas" path dequantizes W^T (`_dequant_kernel`, float32 math,
rounded once) and calls cuBLAS (optionally in column chunks that stay in L2; measured no
better at M = 4096, so `pick_config` does it at once).

Preconditions (checked in `w4a16_linear`): x [M, KX] with unit stride along K and KX <= KP,
columns past KX count as zero; KP a multiple of 128; GS in (32, 64) or a multiple of 128.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import triton
import triton.language as tl

from .. import pdl
from ..triton_tiles import grouped_tile, split_blocks
from . import cuda_decode
from ..device_info import sm_count  # noqa: F401  (the benches use it too)

MAX_SPLIT_K = 32
PREFETCH_BLOCKS = int(os.environ.get("OPTIMIZER_PREFETCH", "4"))  # L2 prefetch under PDL
BLOCK_K = 128            # layout rows per K block (layout.BLOCK)

# word -> 4 registers of 16-bit pairs (q + OFF - (z + OFF)) [* s]; $8 = word, $9 = (OFF+z)x2,
# $10 = (s, s). Outputs $0..$7 are nibbles 0..7 (16-bit registers), $j and $j+4 from pair j.
_ASM_HEAD = """{
.reg .b32 t0, t1, t2, t3, u1, u2, u3;
lop3.b32 t0, $8, 0x000F000F, MAGIC, 0xea;
shr.u32 u1, $8, 4;
lop3.b32 t1, u1, 0x000F000F, MAGIC, 0xea;
shr.u32 u2, $8, 8;
lop3.b32 t2, u2, 0x000F000F, MAGIC, 0xea;
shr.u32 u3, $8, 12;
lop3.b32 t3, u3, 0x000F000F, MAGIC, 0xea;
sub.rn.TY t0, t0, $9;
sub.rn.TY t1, t1, $9;
sub.rn.TY t2, t2, $9;
sub.rn.TY t3, t3, $9;
"""
_ASM_SCALE = """mul.rn.TY t0, t0, $10;
mul.rn.TY t1, t1, $10;
mul.rn.TY t2, t2, $10;
mul.rn.TY t3, t3, $10;
"""
_ASM_TAIL = """mov.b32 {$0, $4}, t0;
mov.b32 {$1, $5}, t1;
mov.b32 {$2, $6}, t2;
mov.b32 {$3, $7}, t3;
}"""


def _asm(bf16: bool, scaled: bool) -> str:
    text = _ASM_HEAD + (_ASM_SCALE if scaled else "") + _ASM_TAIL
    magic, ty = ("0x43004300", "bf16x2") if bf16 else ("0x64006400", "f16x2")
    return text.replace("MAGIC", magic).replace("TY", ty)


ASM_BF16 = tl.constexpr(_asm(True, False))
ASM_BF16_SCALED = tl.constexpr(_asm(True, True))
ASM_F16 = tl.constexpr(_asm(False, False))
ASM_F16_SCALED = tl.constexpr(_asm(False, True))
_OUT8 = "=h,=h,=h,=h,=h,=h,=h,=h"
CONSTRAINTS = tl.constexpr(_OUT8 + ",r,r")
CONSTRAINTS_SCALED = tl.constexpr(_OUT8 + ",r,r,r")


@triton.jit
def _nibble(w, i: tl.constexpr, zoff, sdt, IS_BF16: tl.constexpr, SCALED: tl.constexpr):
    """Plain-Triton twin of one `_unpack` output (for the interpreter): nibble i - z [* s]."""
    if IS_BF16:
        v = (((w >> (4 * i)) & 0xF) | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        v = (((w >> (4 * i)) & 0xF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
    v = v - zoff
    if SCALED:
        v = v * sdt
    return v


@triton.jit
def _unpack(w, zz, ss, IS_BF16: tl.constexpr, SCALED: tl.constexpr, USE_ASM: tl.constexpr):
    """int32 words -> 8 tensors (nibbles 0..7) of q - z (times s if SCALED) in the
    activation dtype. zz / ss: int32 (OFF + z, OFF + z) / (s, s) 16-bit pairs, broadcast."""
    if USE_ASM:
        if IS_BF16:
            if SCALED:
                o = tl.inline_asm_elementwise(ASM_BF16_SCALED, CONSTRAINTS_SCALED, [w, zz, ss],
                                              dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
            else:
                o = tl.inline_asm_elementwise(ASM_BF16, CONSTRAINTS, [w, zz],
                                              dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
        else:
            if SCALED:
                o = tl.inline_asm_elementwise(ASM_F16_SCALED, CONSTRAINTS_SCALED, [w, zz, ss],
                                              dtype=(tl.float16,) * 8, is_pure=True, pack=1)
            else:
                o = tl.inline_asm_elementwise(ASM_F16, CONSTRAINTS, [w, zz],
                                              dtype=(tl.float16,) * 8, is_pure=True, pack=1)
        o0, o1, o2, o3, o4, o5, o6, o7 = o
    else:
        if IS_BF16:
            zoff = (zz & 0xFFFF).to(tl.int16).to(tl.bfloat16, bitcast=True)
            sdt = (ss & 0xFFFF).to(tl.int16).to(tl.bfloat16, bitcast=True)
        else:
            zoff = (zz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
            sdt = (ss & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
        o0 = _nibble(w, 0, zoff, sdt, IS_BF16, SCALED)
        o1 = _nibble(w, 1, zoff, sdt, IS_BF16, SCALED)
        o2 = _nibble(w, 2, zoff, sdt, IS_BF16, SCALED)
        o3 = _nibble(w, 3, zoff, sdt, IS_BF16, SCALED)
        o4 = _nibble(w, 4, zoff, sdt, IS_BF16, SCALED)
        o5 = _nibble(w, 5, zoff, sdt, IS_BF16, SCALED)
        o6 = _nibble(w, 6, zoff, sdt, IS_BF16, SCALED)
        o7 = _nibble(w, 7, zoff, sdt, IS_BF16, SCALED)
    return o0, o1, o2, o3, o4, o5, o6, o7


@triton.jit
def _rows(o0, o1, o2, o3, o4, o5, o6, o7, BN: tl.constexpr, NC: tl.constexpr):
    """8 nibble tensors [BN, 4, NC] (word r = 4t + c) -> [BN, 32 * NC], column
    kk = 32c + 16s + 8h + 2t + e from nibble 2s + h + 4e (layout.row_of_nibble)."""
    a = tl.join(tl.join(tl.join(o0, o4), tl.join(o1, o5)),
                tl.join(tl.join(o2, o6), tl.join(o3, o7)))          # [n, t, c, e, h, s]
    a = tl.permute(a, (0, 2, 5, 4, 1, 3))                            # [n, c, s, h, t, e]
    return tl.reshape(a, (BN, 32 * NC))


@triton.jit
def _sub_tile(acc, part, w, j: tl.constexpr, k0, x_rows, perm_ptr, sz_ptr, KX, N, offs_n,
              mask_m, mask_n, xg, GS: tl.constexpr, SUBK: tl.constexpr, SPG: tl.constexpr,
              BN: tl.constexpr, FACTORED: tl.constexpr, IS_BF16: tl.constexpr,
              GATHER: tl.constexpr, USE_ASM: tl.constexpr, EVEN_N: tl.constexpr,
              EVEN_K: tl.constexpr, X_GIVEN: tl.constexpr):
    """Sub-tile j of the block at row k0: rows [k, k + SUBK), k = k0 + j * SUBK, from the
    words w [BN, 4, SUBK // 32] and x[:, k:k+SUBK] (xg when X_GIVEN, else loaded here).
    FACTORED: part (the group's q - z dot, float32) is begun at the group's first sub-tile
    (j % SPG == 0) and scaled into acc at its last; otherwise acc += ((q - z) s) x^T.
    Returns (acc, part)."""
    k = k0 + j * SUBK
    if EVEN_N:
        sz = tl.load(sz_ptr + (k // GS) * N + offs_n)                                # [BN]
    else:
        sz = tl.load(sz_ptr + (k // GS) * N + offs_n, mask=mask_n, other=0)
    if IS_BF16:
        zz = (((sz >> 16) & 0xFF) | 0x4300) * 0x10001                # (128 + z) x2, bf16
    else:
        zz = (((sz >> 16) & 0xFF) | 0x6400) * 0x10001                # (1024 + z) x2, fp16
    s16 = (sz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)                # [BN]
    offs_k = k + tl.arange(0, SUBK)
    if X_GIVEN:
        x = xg
    elif GATHER:
        src = tl.load(perm_ptr + offs_k)
        x = tl.load(x_rows + src[None, :], mask=mask_m[:, None], other=0.0)
    elif EVEN_K:
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None], other=0.0)    # [BM, SUBK]
    else:
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & (offs_k[None, :] < KX),
                    other=0.0)
    if FACTORED:
        o0, o1, o2, o3, o4, o5, o6, o7 = _unpack(w, zz[:, None, None], zz[:, None, None],
                                                 IS_BF16, False, USE_ASM)
        a = _rows(o0, o1, o2, o3, o4, o5, o6, o7, BN, SUBK // 32)    # [BN, SUBK] q - z
        if j % SPG == 0:
            part = tl.dot(a, tl.trans(x))
        else:
            part = tl.dot(a, tl.trans(x), part)
        if j % SPG == SPG - 1:
            acc += s16.to(tl.float32)[:, None] * part
    else:
        sdt = s16.to(x.dtype).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        o0, o1, o2, o3, o4, o5, o6, o7 = _unpack(w, zz[:, None, None],
                                                 (sdt * 0x10001)[:, None, None],
                                                 IS_BF16, True, USE_ASM)
        a = _rows(o0, o1, o2, o3, o4, o5, o6, o7, BN, SUBK // 32)    # [BN, SUBK] (q - z) s
        acc = tl.dot(a, tl.trans(x), acc)
    return acc, part


@triton.jit
def _epilogue(acc, bias_ptr, y_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS: tl.constexpr):
    """y[offs_m, offs_n] = acc (+ bias), rounded to y's dtype."""
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc + b[None, :]
    ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "SPLIT_K"])
def _w4a16_kernel(
    x_ptr, w_ptr, sz_ptr, perm_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, KX, KP, SPLIT_K, stride_xm, stride_ym,
    GS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    GROUP_M: tl.constexpr, FACTORED: tl.constexpr, IS_BF16: tl.constexpr,
    HAS_BIAS: tl.constexpr, GATHER: tl.constexpr, USE_ASM: tl.constexpr,
    SPLIT: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    PDL: tl.constexpr, NPF: tl.constexpr,
):
    """x [M, KX] @ W^T -> y [M, N]; grid (tiles_m * tiles_n, SPLIT_K). See module docstring.

    w_ptr: int32 [KP/128, N, 16] words; sz_ptr: int32 [KP/GS, N] (fp16 scale bits | zero <<
    16); perm_ptr: int64 [KP] (GATHER); ws_ptr: float32 [SPLIT_K, M, N] partials; lock_ptr:
    int32 counters (zero on entry).
    """
    SUBK: tl.constexpr = GS if GS < BK else BK         # rows per dot: one group at most
    NSUB: tl.constexpr = 128 // SUBK                   # dots per block
    SPG: tl.constexpr = (GS if GS < 128 else 128) // SUBK    # dots per group in a block
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n, tiles_n = grouped_tile(pid, M, N, BM, BN, GROUP_M)

    b_lo, b_hi = split_blocks(KP // 128, SPLIT_K, pid_k)

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_ptrs = w_ptr + offs_n[:, None] * 16 + tl.arange(0, 16)[None, :]

    # PDL (kernels/pdl.py): the first NPF weight blocks of this program (contiguous 64-byte
    # columns: BN * 64 bytes a block) and their scale rows go to L2 while the previous
    # kernel still runs; x, the workspace and y only after the wait.
    if PDL:
        n0 = pid_n * BN
        cols = tl.minimum(BN, N - n0)
        SPB: tl.constexpr = 128 // GS if GS < 128 else 1           # scale rows per block
        for i in tl.static_range(NPF):
            if b_lo + i < b_hi:
                pdl.prefetch_l2(w_ptr + ((b_lo + i) * N + n0) * 16, cols * 64, PDL)
                for j in tl.static_range(SPB):
                    if N % 4 == 0:                             # 16-byte aligned rows
                        pdl.prefetch_l2(sz_ptr + (((b_lo + i) * 128 + j * GS) // GS) * N + n0,
                                        ((cols + 3) // 4) * 16, PDL)
        pdl.wait(PDL)
        pdl.release(PDL)

    # act-order with whole-block dots: the gathered x of block b + 1 (and perm of b + 2) is
    # loaded during block b, so the 2-byte gathers (no cp.async) are off the critical path
    PREFETCH: tl.constexpr = GATHER and NSUB == 1
    offs_kb = tl.arange(0, 128)
    if PREFETCH:
        src = tl.load(perm_ptr + b_lo * 128 + offs_kb, mask=(offs_kb < 128) & (b_lo < b_hi),
                      other=0)
        xg = tl.load(x_rows + src[None, :], mask=mask_m[:, None] & (b_lo < b_hi), other=0.0)
        src = tl.load(perm_ptr + (b_lo + 1) * 128 + offs_kb,
                      mask=(offs_kb < 128) & (b_lo + 1 < b_hi), other=0)
    else:
        xg = tl.zeros((BM, 128), dtype=x_ptr.dtype.element_ty)           # unused
        src = offs_kb
    acc = tl.zeros((BN, BM), dtype=tl.float32)                           # y^T tile
    for b in range(b_lo, b_hi):
        k0 = b * 128
        x_cur = xg
        if PREFETCH:
            xg = tl.load(x_rows + src[None, :], mask=mask_m[:, None] & (b + 1 < b_hi),
                         other=0.0)
            src = tl.load(perm_ptr + (b + 2) * 128 + offs_kb,
                          mask=(offs_kb < 128) & (b + 2 < b_hi), other=0)
        if EVEN_N:
            w = tl.load(w_ptrs + b * N * 16)                             # [BN, 16] words
        else:
            w = tl.load(w_ptrs + b * N * 16, mask=mask_n[:, None], other=0)
        w = tl.reshape(w, (BN, 4, 4))                                    # [n, t, c]
        part = tl.zeros((BN, BM), dtype=tl.float32)
        if NSUB == 1:
            acc, part = _sub_tile(acc, part, w, 0, k0, x_rows, perm_ptr, sz_ptr, KX, N,
                                  offs_n, mask_m, mask_n, x_cur, GS, SUBK, SPG, BN, FACTORED,
                                  IS_BF16, GATHER, USE_ASM, EVEN_N, EVEN_K, PREFETCH)
        elif NSUB == 2:                # c = 2 c1 + c0: sub-tile c1 holds chunks 2 c1, 2 c1 + 1
            w0, w1 = tl.split(tl.permute(tl.reshape(w, (BN, 4, 2, 2)), (0, 1, 3, 2)))
            acc, part = _sub_tile(acc, part, w0, 0, k0, x_rows, perm_ptr, sz_ptr, KX, N,
                                  offs_n, mask_m, mask_n, x_cur, GS, SUBK, SPG, BN, FACTORED,
                                  IS_BF16, GATHER, USE_ASM, EVEN_N, EVEN_K, False)
            acc, part = _sub_tile(acc, part, w1, 1, k0, x_rows, perm_ptr, sz_ptr, KX, N,
                                  offs_n, mask_m, mask_n, x_cur, GS, SUBK, SPG, BN, FACTORED,
                                  IS_BF16, GATHER, USE_ASM, EVEN_N, EVEN_K, False)
        else:                          # NSUB == 4: sub-tile c holds chunk c
            wa, wb = tl.split(tl.reshape(w, (BN, 4, 2, 2)))              # c0 = 0, 1
            wa0, wa1 = tl.split(wa)                                      # c = 0, 2
            wb0, wb1 = tl.split(wb)                                      # c = 1, 3
            acc, part = _sub_tile(acc, part, tl.reshape(wa0, (BN, 4, 1)), 0, k0, x_rows,
                                  perm_ptr, sz_ptr, KX, N, offs_n, mask_m, mask_n, x_cur, GS,
                                  SUBK, SPG, BN, FACTORED, IS_BF16, GATHER, USE_ASM, EVEN_N,
                                  EVEN_K, False)
            acc, part = _sub_tile(acc, part, tl.reshape(wb0, (BN, 4, 1)), 1, k0, x_rows,
                                  perm_ptr, sz_ptr, KX, N, offs_n, mask_m, mask_n, x_cur, GS,
                                  SUBK, SPG, BN, FACTORED, IS_BF16, GATHER, USE_ASM, EVEN_N,
                                  EVEN_K, False)
            acc, part = _sub_tile(acc, part, tl.reshape(wa1, (BN, 4, 1)), 2, k0, x_rows,
                                  perm_ptr, sz_ptr, KX, N, offs_n, mask_m, mask_n, x_cur, GS,
                                  SUBK, SPG, BN, FACTORED, IS_BF16, GATHER, USE_ASM, EVEN_N,
                                  EVEN_K, False)
            acc, part = _sub_tile(acc, part, tl.reshape(wb1, (BN, 4, 1)), 3, k0, x_rows,
                                  perm_ptr, sz_ptr, KX, N, offs_n, mask_m, mask_n, x_cur, GS,
                                  SUBK, SPG, BN, FACTORED, IS_BF16, GATHER, USE_ASM, EVEN_N,
                                  EVEN_K, False)
    out = tl.trans(acc)                                                  # [BM, BN]

    if not SPLIT:
        _epilogue(out, bias_ptr, y_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS)
    else:
        mask = mask_m[:, None] & mask_n[None, :]
        part_off = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + pid_k * M * N + part_off, out, mask=mask)
        tl.debug_barrier()                 # all partial stores of this CTA before the release
        tile = pid_m * tiles_n + pid_n
        count = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:           # last to arrive: reduce in split order
            INFLIGHT: tl.constexpr = 4 if BM * BN <= 4096 else 1    # loads per round trip
            total = tl.zeros((BM, BN), dtype=tl.float32)
            for i0 in range(0, SPLIT_K, INFLIGHT):
                for d in tl.static_range(INFLIGHT):
                    total += tl.load(ws_ptr + (i0 + d) * M * N + part_off,
                                     mask=mask & (i0 + d < SPLIT_K), other=0.0,
                                     cache_modifier=".cg")
            tl.atomic_xchg(lock_ptr + tile, 0)
            _epilogue(total, bias_ptr, y_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS)


@triton.jit
def _gather_kernel(x_ptr, perm_ptr, out_ptr, KP, stride_xm, BLOCK: tl.constexpr,
                   PDL: tl.constexpr):
    """out[m, i] = x[m, perm[i]] for i < KP; grid (cdiv(KP, BLOCK), M): the programs of
    one row run together, so its scattered 2-byte reads hit L2."""
    pdl.wait(PDL)
    pdl.release(PDL)
    m = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < KP
    src = tl.load(perm_ptr + offs, mask=mask, other=0)
    v = tl.load(x_ptr + m * stride_xm + src, mask=mask)
    tl.store(out_ptr + m * KP + offs, v, mask=mask)


def gather_columns(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x[:, perm] ([M, KP], contiguous): one Triton launch for M < CUBLAS_MIN_M (measured
    ~7 µs less than index_select at M <= 16 on an H200), index_select above (measured
    there; the Triton kernel's row-local order is untested at that size)."""
    m, kp = x.shape[0], perm.shape[0]
    if m >= CUBLAS_MIN_M:
        return x.index_select(1, perm)
    out = torch.empty((m, kp), dtype=x.dtype, device=x.device)
    if m:
        _gather_kernel[(triton.cdiv(kp, 1024), m)](x, perm, out, kp, x.stride(0), BLOCK=1024,
                                                    num_warps=4, **pdl.launch_args(x))
    return out


@triton.jit
def _dequant_nibble(w, i: tl.constexpr, z, s):
    return ((w >> (4 * i)) & 0xF).to(tl.float32) * s - z


@triton.jit
def _dequant_kernel(w_ptr, sz_ptr, out_ptr, N, n0, n_end, ld_out, GS: tl.constexpr,
                    BN: tl.constexpr):
    """out[k, n - n0] = W^T[k, n] (layout row order, activation dtype) for the columns n of
    program axis 1 within [n0, n_end): (q - z) * s in float32, rounded once.
    grid (KP/128, cdiv(n_end - n0, BN))."""
    b = tl.program_id(0)
    offs_n = n0 + tl.program_id(1) * BN + tl.arange(0, BN)
    mask_n = offs_n < n_end
    w = tl.load(w_ptr + b * N * 16 + offs_n[:, None] * 16 + tl.arange(0, 16)[None, :],
                mask=mask_n[:, None], other=0)
    w = tl.reshape(w, (BN, 4, 4))
    out = tl.zeros((BN, 128), dtype=tl.float32)
    sub_rows: tl.constexpr = GS if GS < 128 else 128
    for sub in tl.static_range(128 // sub_rows):
        sz = tl.load(sz_ptr + ((b * 128 + sub * sub_rows) // GS) * N + offs_n, mask=mask_n,
                     other=0)
        s = (sz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        zs = ((sz >> 16) & 0xFF).to(tl.float32) * s                   # exact: z < 256, fp16 s
        s3 = s[:, None, None]
        z3 = zs[:, None, None]
        a = _rows(_dequant_nibble(w, 0, z3, s3), _dequant_nibble(w, 1, z3, s3),
                  _dequant_nibble(w, 2, z3, s3), _dequant_nibble(w, 3, z3, s3),
                  _dequant_nibble(w, 4, z3, s3), _dequant_nibble(w, 5, z3, s3),
                  _dequant_nibble(w, 6, z3, s3), _dequant_nibble(w, 7, z3, s3), BN, 4)
        if GS < 128:   # keep this group's 32-row chunks (kk // 32 = chunk) of the block
            kk = tl.arange(0, 128)
            in_sub = (kk // sub_rows) == sub
            out = tl.where(in_sub[None, :], a, out)
        else:
            out = a
    rows = b * 128 + tl.arange(0, 128)
    ptrs = out_ptr + rows.to(tl.int64)[None, :] * ld_out + (offs_n - n0)[:, None]
    tl.store(ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_n[:, None])


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Launch parameters of `_w4a16_kernel` (block_n is the MMA's M: >= 64 uses wgmma).
    block_k: rows per tensor-core dot (128, 64, 32; fewer live operand registers for big
    tiles). gather: act-order x gathered inside the kernel (else `gather_columns` first)."""

    block_m: int
    block_n: int
    split_k: int = 1
    factored: bool = True
    num_warps: int = 4
    num_stages: int = 4
    group_m: int = 8
    gather: bool = False
    block_k: int = 128

    def __post_init__(self) -> None:
        for key in ("block_m", "block_n"):
            v = getattr(self, key)
            if v < 16 or v > 256 or v & (v - 1):
                raise ValueError(f"GemmConfig.{key}: expected a power of two in 16..256, "
                                 f"got {v}")
        if not 1 <= self.split_k <= 64:
            raise ValueError(f"GemmConfig.split_k: expected 1..64, got {self.split_k}")
        if self.num_warps not in (1, 2, 4, 8):
            raise ValueError(f"GemmConfig.num_warps: expected 1, 2, 4 or 8, got "
                             f"{self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"GemmConfig.num_stages: expected >= 1, got {self.num_stages}")
        if self.block_k not in (32, 64, 128):
            raise ValueError(f"GemmConfig.block_k: expected 32, 64 or 128, got {self.block_k}")


@dataclasses.dataclass(frozen=True)
class CublasConfig:
    """The dequantize + cuBLAS path: W^T dequantized chunk_n columns at a time (0: all at
    once) into a scratch buffer, each chunk multiplied by cuBLAS while it sits in L2."""

    chunk_n: int = 0

    def __post_init__(self) -> None:
        if self.chunk_n < 0 or self.chunk_n % 128:
            raise ValueError(f"CublasConfig.chunk_n: expected 0 or a multiple of 128, got "
                             f"{self.chunk_n}")


def choose_split_k(m: int, n: int, kp: int, bm: int, bn: int, sms: int,
                   per_sm: float = 2.0, min_blocks: int = 2) -> int:
    """Splits of K: 1 when the output tiles alone fill the SMs, else about per_sm * SMs
    programs, keeping at least min_blocks K blocks of 128 rows per split."""
    tiles = -(-m // bm) * -(-n // bn)
    blocks = kp // BLOCK_K
    if tiles >= sms or blocks < 2 * min_blocks:
        return 1
    return max(1, min(-(-int(per_sm * sms) // tiles), blocks // min_blocks, MAX_SPLIT_K))


CUBLAS_MIN_M = 1025      # M above this: dequantize + cuBLAS (measured better at M = 4096)


def pick_config(m: int, n: int, kp: int, sms: int = 132) -> GemmConfig | CublasConfig:
    """The launch configuration by M and shape: the winners of `bench/w4a16_sweep.py` on
    an H200 (2026-12-01, bench/RESULTS.md) for Llama-3-8B's qkv, o, gate-up and down, each
    pick the best or within ~5% of it. "wide": N alone makes a 128-column tile per SM
    (gate-up); otherwise narrower tiles and split-K make up the parallelism (~2 programs
    per SM for M <= 32, ~1 above). Act-order always gathers x first (`gather_columns`):
    the in-kernel gather lost everywhere but M = 1 on o, where it tied."""
    wide = -(-n // 128) >= sms
    if m >= CUBLAS_MIN_M:
        return CublasConfig(0)
    if m <= 16:
        if wide:
            cfg = GemmConfig(16, 128, factored=True, num_warps=4, num_stages=4, gather=False)
        elif kp <= 4096 and n <= 4096:
            cfg = GemmConfig(16, 64, factored=True, num_warps=4, num_stages=4, gather=False)
        else:
            cfg = GemmConfig(16, 128, factored=True, num_warps=4, num_stages=3, gather=False)
        per_sm = 2.0
    elif m <= 32:
        cfg = GemmConfig(32, 128 if wide else 64, factored=True, num_warps=4, num_stages=4,
                         gather=False)
        per_sm = 2.0
    elif m <= 64:
        cfg = (GemmConfig(64, 256, factored=False, num_warps=8, num_stages=3, gather=False)
               if wide else
               GemmConfig(64, 64, factored=True, num_warps=4, num_stages=4, gather=False))
        per_sm = 1.0
    elif m <= 256:
        cfg = (GemmConfig(128, 256, factored=False, num_warps=8, num_stages=3, gather=False)
               if wide else
               GemmConfig(64, 128, factored=False, num_warps=4, num_stages=4, gather=False))
        per_sm = 1.0
    else:
        bm = 256 if n >= 6144 else 128
        return GemmConfig(bm, 128, 1, factored=False, num_warps=8, num_stages=3, gather=False)
    split = 1 if wide else choose_split_k(m, n, kp, cfg.block_m, cfg.block_n, sms, per_sm)
    return dataclasses.replace(cfg, split_k=split)


def _use_asm(x: torch.Tensor) -> bool:
    return x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1"


def _group_rows(prepared: dict[str, torch.Tensor]) -> int:
    qweight, sz = prepared["qweight"], prepared["sz"]
    kp = qweight.shape[0] * 8
    gs = kp // sz.shape[0]
    if kp % BLOCK_K or not (gs in (32, 64) or gs % BLOCK_K == 0):
        raise ValueError(f"layout: KP={kp} must be a multiple of {BLOCK_K} and the group size "
                         f"{gs} 32, 64 or a multiple of {BLOCK_K} (see layout.prepare)")
    return gs


def _gemm(x: torch.Tensor, prepared: dict[str, torch.Tensor], bias: torch.Tensor | None,
          y: torch.Tensor, cfg: GemmConfig, gather: bool) -> None:
    """One launch of `_w4a16_kernel`; x [M, KX] (gathered already unless ``gather``)."""
    qweight, sz = prepared["qweight"], prepared["sz"]
    m, kx = x.shape
    kp, n = qweight.shape[0] * 8, qweight.shape[1]
    gs = _group_rows(prepared)
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
    perm = prepared["perm"] if gather else qweight       # qweight: an unused placeholder
    grid = (tiles_m * tiles_n, split)
    _w4a16_kernel[grid](
        x, qweight, sz, perm, bias if bias is not None else y, y, ws, locks,
        m, n, kx, kp, split, x.stride(0), y.stride(0),
        GS=gs, BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, GROUP_M=cfg.group_m,
        FACTORED=cfg.factored, IS_BF16=x.dtype == torch.bfloat16,
        HAS_BIAS=bias is not None, GATHER=gather, USE_ASM=_use_asm(x), SPLIT=split > 1,
        EVEN_N=n % cfg.block_n == 0, EVEN_K=gather or kx == kp, NPF=PREFETCH_BLOCKS,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl.launch_args(x))


def _dequant_into(prepared: dict[str, torch.Tensor], out: torch.Tensor, n0: int) -> None:
    """out [KP, C] = W^T[:, n0:n0+C] (C = out.shape[1], the columns that exist)."""
    qweight, sz = prepared["qweight"], prepared["sz"]
    n = qweight.shape[1]
    cols = min(out.shape[1], n - n0)
    _dequant_kernel[(qweight.shape[0] // 16, -(-cols // 64))](
        qweight, sz, out, n, n0, n0 + cols, out.stride(0), GS=_group_rows(prepared),
        BN=64, num_warps=4)


def dequantize_t(prepared: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """W^T [KP, N] in ``dtype``, rows in layout order (pad rows are 0); one pass."""
    qweight = prepared["qweight"]
    out = torch.empty((qweight.shape[0] * 8, qweight.shape[1]), dtype=dtype,
                      device=qweight.device)
    _dequant_into(prepared, out, 0)
    return out


def _cublas(x2: torch.Tensor, prepared: dict[str, torch.Tensor], bias: torch.Tensor | None,
            y: torch.Tensor, cfg: CublasConfig) -> None:
    """y = x2 @ W^T[:KX] (+ bias), W^T dequantized chunk by chunk into one scratch buffer."""
    kx = x2.shape[1]
    kp, n = prepared["qweight"].shape[0] * 8, prepared["qweight"].shape[1]
    chunk = n if cfg.chunk_n <= 0 or cfg.chunk_n >= n else cfg.chunk_n
    buf = torch.empty((kp, chunk), dtype=x2.dtype, device=x2.device)
    for n0 in range(0, n, chunk):
        c = min(chunk, n - n0)
        wt = buf[:, :c]
        _dequant_into(prepared, wt, n0)
        yc = y[:, n0:n0 + c]
        if bias is not None:
            torch.addmm(bias[n0:n0 + c], x2, wt[:kx], out=yc)
        else:
            torch.mm(x2, wt[:kx], out=yc)


def w4a16_linear(x: torch.Tensor, prepared: dict[str, torch.Tensor],
                 bias: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
                 config: GemmConfig | CublasConfig | None = None,
                 path: str = "auto") -> torch.Tensor:
    """x [..., K] (bf16/fp16) -> [..., N] = x @ W^T + bias, W from `layout.prepare`.

    path: "auto" (M <= 4: the CUDA decode kernel of cuda_decode.py where it is available;
    otherwise `pick_config` by M, or ``config``), "fused" (always `_w4a16_kernel`), "mma"
    (always the CUDA decode kernel; M <= 8) or "cublas" (dequantize W^T, then ``x @ W^T``
    through cuBLAS). ``out``: optional contiguous [M, N] tensor of x's dtype to write into.
    ``config`` overrides the pick (a `cuda_decode.MmaConfig` selects the CUDA kernel).
    """
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"x: expected bfloat16 or float16, got {x.dtype}")
    if path not in ("auto", "fused", "cublas", "mma"):
        raise ValueError(f"path: expected 'auto', 'fused', 'mma' or 'cublas', got {path!r}")
    qweight = prepared["qweight"]
    kp, n = qweight.shape[0] * 8, qweight.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    has_perm = "perm" in prepared
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
    mma = (path == "mma" or isinstance(config, cuda_decode.MmaConfig)
           or (path == "auto" and config is None and m <= cuda_decode.AUTO_MAX_M
               and cuda_decode.available(x2)))
    if mma:
        if has_perm:
            x2 = gather_columns(x2, prepared["perm"])
        if not cuda_decode.available(x2):
            raise ValueError(f"path='mma': the CUDA decode kernel cannot take x {tuple(x2.shape)}"
                             f" on {x2.device} (M <= {cuda_decode.MAX_M}, even K, CUDA, nvcc)")
        cfg = config if isinstance(config, cuda_decode.MmaConfig) else None
        cuda_decode.w4a16_mma(x2, prepared, bias, y, _group_rows(prepared), cfg)
        return y.reshape(*lead, n)
    cfg = config if config is not None else pick_config(m, n, kp, sm_count(x.device))
    if path == "cublas" and not isinstance(cfg, CublasConfig):
        cfg = CublasConfig()
    elif path == "fused" and not isinstance(cfg, GemmConfig):
        cfg = pick_config(min(m, 128), n, kp, sm_count(x.device))
    gather = has_perm and isinstance(cfg, GemmConfig) and cfg.gather
    if has_perm and not gather:
        x2 = gather_columns(x2, prepared["perm"])                    # [M, KP]
    if isinstance(cfg, CublasConfig):
        _cublas(x2, prepared, bias, y, cfg)
    else:
        _gemm(x2, prepared, bias, y, cfg, gather)
    return y.reshape(*lead, n)


def _epilogue_input(x: torch.Tensor, prepared: dict[str, torch.Tensor],
                    bias: torch.Tensor | None, switch: str
                    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(x2, bias) for one of the CUDA decode kernel's fused epilogues where `w4a16_linear`
    would run that kernel on x (M <= cuda_decode.AUTO_MAX_M, a 16-bit x, the kernel
    available) and the environment switch ``switch`` is not "0": x as [M, K] in layout row
    order (act-order gathered), the bias in x's dtype. Otherwise None: the caller runs
    `w4a16_linear` and the separate kernel."""
    kp = prepared["qweight"].shape[0] * 8
    x2 = x.reshape(-1, x.shape[-1])
    if not (0 < x2.shape[0] <= cuda_decode.AUTO_MAX_M and x2.shape[1] <= kp
            and x.dtype in (torch.bfloat16, torch.float16)
            and os.environ.get(switch, "1") != "0"):
        return None
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if not cuda_decode.available(x2):
        return None
    if "perm" in prepared:
        x2 = gather_columns(x2, prepared["perm"])
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return x2, bias


def w4a16_gate_up_silu(x: torch.Tensor, prepared: dict[str, torch.Tensor],
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """``silu_mul(w4a16_linear(x, prepared, bias))`` for a fused gate-up projection
    ([W_gate; W_up], N = 2F): x [..., K] -> [..., F]. Where `w4a16_linear` would run the
    CUDA decode kernel (M <= cuda_decode.AUTO_MAX_M, the kernel built), the SiLU-mul is
    done in that kernel's epilogue: one launch, gate and up never stored (float32 inside,
    one rounding, where the two kernels round gate and up first). Otherwise the two
    kernels. ``OPTIMIZER_FUSE_GU_SILU=0`` always takes the two."""
    from ..activation.triton_silu_mul import silu_mul
    n = prepared["qweight"].shape[1]
    fused = _epilogue_input(x, prepared, bias, "OPTIMIZER_FUSE_GU_SILU") if n % 2 == 0 else None
    if fused is None:
        return silu_mul(w4a16_linear(x, prepared, bias))
    x2, bias = fused
    y = torch.empty((x2.shape[0], n // 2), dtype=x.dtype, device=x.device)
    cuda_decode.w4a16_mma(x2, prepared, bias, y, _group_rows(prepared), gate_up_silu=True)
    return y.reshape(*x.shape[:-1], n // 2)


def w4a16_qkv_rope(x: torch.Tensor, prepared: dict[str, torch.Tensor],
                   bias: torch.Tensor | None, positions: torch.Tensor, freqs: torch.Tensor,
                   n_heads: int, n_kv_heads: int, head_dim: int, k_cache: torch.Tensor,
                   v_cache: torch.Tensor) -> torch.Tensor:
    """The decode step's qkv projection with RoPE and the KV-cache write:
    ``rope_qk_cache(w4a16_linear(x, prepared, bias), positions, freqs, ...)`` (x [B, K], row
    b sequence b's new token at positions[b]) -> q [B, n_heads * head_dim], k and v written
    into the caches [>= B, S, n_kv_heads, head_dim] at [b, positions[b]]. Where
    `w4a16_linear` would run the CUDA decode kernel and head_dim % 32 == 0, the rotation and
    the writes are that kernel's epilogue (`cuda_decode.QkvRope`): one launch instead of
    two, qkv never stored (float32 inside, one rounding, where the two kernels round qkv
    first). Otherwise the two kernels. ``OPTIMIZER_FUSE_QKV_ROPE=0`` always takes the two.
    (The CUDA engine calls this only where it groups the nodes, with
    ``OPTIMIZER_FUSE_QKV_ROPE=1``: runtime/cuda_ops.group_nodes.)"""
    from ..rope.triton_rope import rope_qk_cache
    fused = (_epilogue_input(x, prepared, bias, "OPTIMIZER_FUSE_QKV_ROPE")
             if head_dim % 32 == 0 and x.dim() == 2 else None)
    if fused is None:
        return rope_qk_cache(w4a16_linear(x, prepared, bias), positions, freqs, n_heads,
                             n_kv_heads, head_dim, k_cache, v_cache)
    x2, bias = fused
    q = torch.empty((x2.shape[0], n_heads * head_dim), dtype=x.dtype, device=x.device)
    rope = cuda_decode.QkvRope(positions.to(torch.int64).contiguous(),
                               freqs.float().contiguous(), q, k_cache, v_cache, n_heads,
                               n_kv_heads, head_dim)
    cuda_decode.w4a16_mma(x2, prepared, bias, None, _group_rows(prepared), rope=rope)
    return q


def w4a16_add_norm_linear(x: torch.Tensor, prepared: dict[str, torch.Tensor],
                          bias: torch.Tensor | None, residual: torch.Tensor,
                          weight: torch.Tensor, eps: float,
                          prepared_b: dict[str, torch.Tensor], bias_b: torch.Tensor | None,
                          gate_up: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two projections with a residual add + RMSNorm between them, as the decode step has
    them (o -> post-attention norm -> gate-up, down -> next layer's input norm -> qkv):

        s, n = add_rms_norm(w4a16_linear(x, prepared, bias), residual, weight, eps)
        z = w4a16_linear(n, prepared_b, bias_b)         (gate_up: w4a16_gate_up_silu)

    -> (s, z). Where both would run on the CUDA decode kernel (M <= `add_norm_max_m`, bf16,
    the second without act-order, the norm's weight bf16, `cuda_decode.norm_supported` configs)
    the norm kernel goes: the first kernel's epilogue adds the residual and writes s, s *
    weight and per-tile sums of s^2 (`cuda_decode.AddNormOut`), the second scales its rows
    by their rsqrt(mean(s^2) + eps) after the product (`cuda_decode.NormIn`): two launches
    instead of three, n never stored (the weight multiplies s before the product, the rstd
    after it, where add_rms_norm rounds s * rstd first). Otherwise the three kernels.
    ``OPTIMIZER_FUSE_ADD_NORM=0`` always takes the three."""
    from ..rms_norm.triton_rms_norm import add_rms_norm
    n_a = prepared["qweight"].shape[1]
    fused = _add_norm_input(x, prepared, bias, residual, weight, prepared_b, gate_up)
    if fused is None:
        s, n = add_rms_norm(w4a16_linear(x, prepared, bias), residual, weight, eps)
        z = (w4a16_gate_up_silu(n, prepared_b, bias_b) if gate_up
             else w4a16_linear(n, prepared_b, bias_b))
        return s, z
    x2, bias, cfg_a, cfg_b = fused
    m = x2.shape[0]
    res2 = residual.reshape(m, n_a)
    if res2.stride(1) != 1:
        res2 = res2.contiguous()
    s = torch.empty((m, n_a), dtype=x.dtype, device=x.device)
    g = torch.empty_like(s)
    ss = torch.empty((m, -(-n_a // 32)), dtype=torch.float32, device=x.device)
    cuda_decode.w4a16_mma(x2, prepared, bias, None, _group_rows(prepared), cfg_a,
                          add_norm=cuda_decode.AddNormOut(res2, weight, s, g, ss))
    if bias_b is not None and bias_b.dtype != x.dtype:
        bias_b = bias_b.to(x.dtype)
    n_b = prepared_b["qweight"].shape[1]
    z = torch.empty((m, n_b // 2 if gate_up else n_b), dtype=x.dtype, device=x.device)
    cuda_decode.w4a16_mma(g, prepared_b, bias_b, z, _group_rows(prepared_b), cfg_b,
                          gate_up_silu=gate_up, norm_in=cuda_decode.NormIn(ss, eps))
    lead = x.shape[:-1]
    return s.reshape(*lead, n_a), z.reshape(*lead, z.shape[1])


def add_norm_max_m() -> int:
    """The largest M that `w4a16_add_norm_linear` splits the norm over two kernels for: 1,
    where it was measured faster (8B int4 decode on an H100, twelfth session: 471.5 against
    464 tok/s at batch 1; a tie at batch 2, 1673.8 against 1740 at batch 4, bench/RESULTS.md),
    or ``OPTIMIZER_FUSE_ADD_NORM_MAX_M`` (A/B measurements; at most AUTO_MAX_M)."""
    v = os.environ.get("OPTIMIZER_FUSE_ADD_NORM_MAX_M")
    return min(int(v), cuda_decode.AUTO_MAX_M) if v else 1


def _add_norm_input(x, prepared, bias, residual, weight, prepared_b, gate_up):
    """(x2, bias, producer config, consumer config) where `w4a16_add_norm_linear` can take
    its two-kernel path, else None."""
    n_a = prepared["qweight"].shape[1]
    kp_b, n_b = prepared_b["qweight"].shape[0] * 8, prepared_b["qweight"].shape[1]
    if (x.dtype != torch.bfloat16 or weight.dtype != x.dtype or weight.shape != (n_a,)
            or not weight.is_contiguous() or residual.dtype != x.dtype
            or residual.shape != (*x.shape[:-1], n_a) or "perm" in prepared_b
            or n_a > kp_b or n_a % 2 or (gate_up and n_b % 2)
            or x.reshape(-1, x.shape[-1]).shape[0] > add_norm_max_m()):
        return None
    fused = _epilogue_input(x, prepared, bias, "OPTIMIZER_FUSE_ADD_NORM")
    if fused is None:
        return None
    x2, bias = fused
    m, sms = x2.shape[0], sm_count(x.device)
    cfg_a = cuda_decode.pick_config(m, n_a, prepared["qweight"].shape[0] * 8, sms)
    cfg_b = cuda_decode.pick_config(m, n_b, kp_b, sms)
    if not (cuda_decode.norm_supported(cfg_a, "producer")
            and cuda_decode.norm_supported(cfg_b, "gate_up" if gate_up else "plain")):
        return None
    return x2, bias, cfg_a, cfg_b
