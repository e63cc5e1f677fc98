"""The CUDA C++ W4A16 decode kernel (mma_decode.cu) for M <= 8: build, configure, launch.

`w4a16_linear` (triton_gemm.py) sends M <= AUTO_MAX_M here when `available` says the kernel
can run (a CUDA device of compute capability >= 8.0 and nvcc to build it at first use, see
kernels/cuda_build.py); otherwise, or with ``OPTIMIZER_W4A16_MMA=0``, those M stay on the
Triton kernel. Both read the same layout (layout.py) and compute the same sums: per group
the tensor cores add (q - z) x in float32, then acc += s * part.

Why AUTO_MAX_M = 4 (H200, Llama-3-8B-shaped int4 decode, bench/RESULTS.md): this kernel made
decode faster at batch 1, 2 and 4 (+8%, +7%, +5.5%) but slower at batch 8 (-9%). Timed in
place (bench/decode_profile.py, 8 layers at batch 8), its M = 8 GEMMs took 514.6 µs a step
against the Triton kernel's 450.1: the isolated sweep, where it looked faster, replays one
GEMM back to back, and PDL overlap inflates the Triton kernel's times there. M up to
MAX_M = 8 still runs here when asked for (path="mma" or an `MmaConfig`).

Tried on an H200 and not faster in decode (bench/RESULTS.md, fifth session; the code is on
the branch exp/w4a16-ring-streamk): a cp.async ring of K blocks in shared memory instead of
the registers, the zero point factored out of the unpacking (17% fewer instructions), and a
warp-level stream-K split of the work. ncu finds the kernel using 12-21% of the SMs' warps,
with neither DRAM nor the issue slots saturated: more independent work per SM (more warps,
or more columns per warp) is what is left to try. The sixth session tried 64 columns per
warp (slower at every shape), the RMSNorm done inside this kernel's staging of x (slower:
every CTA redoes the norm of the whole row) and, with x staged, no per-weight zero
subtraction (faster in isolation, not in decode); branch exp/next-session, RESULTS.md.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
from pathlib import Path

import torch

from .. import cuda_build, pdl
from ..device_info import device_index, sm_count

MAX_M = 8                     # the MMA's n dimension: rows of x per launch
# rows up to which path="auto" picks this kernel; OPTIMIZER_W4A16_MMA_MAX_M (1..8) moves
# it, for A/B measurements (bench/decode_profile.py)
AUTO_MAX_M = max(1, min(MAX_M, int(os.environ.get("OPTIMIZER_W4A16_MMA_MAX_M", "4"))))
SOURCE = Path(__file__).with_name("mma_decode.cu")
SMEM_MAX = 96 * 1024          # staged x per CTA: M * (its K blocks) * 256 bytes


@dataclasses.dataclass(frozen=True)
class MmaConfig:
    """warps: warps per CTA (2, 4, 8 or 16), all on the same 32 columns, each
    taking every warps-th K block; inflight: K blocks each warp holds in registers ahead (2
    or 4); split_k: CTAs along K (0: chosen by `choose_split`); stage_x: x of the CTA's K
    range copied into shared memory first (else each lane loads its operands from global
    memory block by block)."""

    warps: int = 8
    inflight: int = 2
    split_k: int = 0
    stage_x: bool = False

    def __post_init__(self) -> None:
        if self.warps not in (2, 4, 8, 16):
            raise ValueError(f"MmaConfig.warps: expected 2, 4, 8 or 16, got {self.warps}")
        if self.warps in (2, 16) and self.inflight != 2:
            raise ValueError(f"MmaConfig: {self.warps} warps per CTA only with 2 blocks in "
                             f"flight")
        if self.inflight not in (2, 4):
            raise ValueError(f"MmaConfig.inflight: expected 2 or 4, got {self.inflight}")
        if not 0 <= self.split_k <= 64:
            raise ValueError(f"MmaConfig.split_k: expected 0..64, got {self.split_k}")


def _min_split(m: int, kp: int, cfg: MmaConfig) -> int:
    """The smallest split at which the staged x fits in SMEM_MAX (1 without staging)."""
    blocks, split = kp // 128, 1
    while cfg.stage_x and split < blocks and m * -(-blocks // split) * 256 > SMEM_MAX:
        split += 1
    return split


def choose_split(m: int, kp: int, cfg: MmaConfig) -> int:
    """CTAs along K: 1, or 2 where a warp would otherwise stream more than 8 K blocks
    (down projections); more only as far as the staged x needs to fit in SMEM_MAX."""
    return max(2 if kp // 128 > 8 * cfg.warps else 1, _min_split(m, kp, cfg))


def pick_override(n: int) -> MmaConfig | None:
    """The config OPTIMIZER_W4A16_PICK names for width N, else None: entries
    ``N:warps/inflight/split/stage_x`` joined by ``+`` (e.g. ``6144:8/2/2/1+28672:4/2/1/0``;
    split 0: `choose_split`), for A/B measurements of configs in the decode step."""
    spec = os.environ.get("OPTIMIZER_W4A16_PICK")
    if not spec:
        return None
    for entry in spec.split("+"):
        try:
            width, cfg = entry.split(":")
            warps, inflight, split, stage_x = (int(v) for v in cfg.split("/"))
            width_n = int(width)
        except ValueError:
            raise ValueError(f"OPTIMIZER_W4A16_PICK: {entry!r} is not "
                             f"N:warps/inflight/split/stage_x") from None
        if width_n == n:
            return MmaConfig(warps, inflight, split, bool(stage_x))
    return None


def pick_config(m: int, n: int, kp: int, sms: int = 132) -> MmaConfig:
    """The winners of bench/w4a16_mma_sweep.py on an H200 (2026-12-01, bench/RESULTS.md),
    Llama-3-8B qkv / o / gate-up / down at M = 1 and 8: 8 warps per CTA, except 2 where the
    32-column tiles alone make more than 2 CTAs per SM (gate-up: its 896 CTAs of 64 threads
    fit 132 SMs in one wave, where 4 warps took 1.70), unsplit (in the int4 decode step on
    an H100, gate-up 24.4 µs instead of 25.9 and 464.5 against 455.3 tok/s at batch 1, +2%
    at 2 and 4; with `choose_split`'s split-K 2 it took 29.7 µs: eleventh session), and 16
    where they fit the SMs one CTA each (o, down: twice the warps per SM, and no split-K,
    whose sum cost down ~3.5 us of its 12.9; 4.9% more int4 decode tok/s, eighth session);
    x staged in shared
    memory at M = 1 on the narrower shapes (5-8% faster there), loaded per block otherwise;
    2 blocks in flight per warp; split-K as `choose_split` (16 warps: only as far as the
    staged x needs). Each pick was the best or within ~5% of it.
    OPTIMIZER_W4A16_WK16=0 gives the 8-warp picks for o and down (A/B measurements), and
    OPTIMIZER_W4A16_PICK (`pick_override`) any config for a given N."""
    over = pick_override(n)
    if over is not None:
        return over
    tiles = -(-n // 32)
    wide = tiles > 2 * sms
    few = tiles <= sms and os.environ.get("OPTIMIZER_W4A16_WK16", "1") != "0"
    cfg = MmaConfig(warps=2 if wide else 16 if few else 8, inflight=2,
                    stage_x=m == 1 and not wide)
    if few or wide:
        return dataclasses.replace(cfg, split_k=_min_split(m, kp, cfg))
    return dataclasses.replace(cfg, split_k=choose_split(m, kp, cfg))


@dataclasses.dataclass(frozen=True)
class QkvRope:
    """The qkv projection's RoPE and KV-cache write, done in the decode kernel's epilogue
    (mma_decode.cu, EPI_ROPE): W's rows are n_heads q heads, n_kv_heads k heads and
    n_kv_heads v heads of head_dim columns. Row m of the product is sequence m's new token
    at positions[m]: its q and k heads are rotated (rotate-half, angle float(positions[m]) *
    freqs[j], float32), q is written to q_out [M, n_heads * head_dim], k and v into k_cache /
    v_cache [>= M, S, n_kv_heads, head_dim] at row positions[m] (not written where that is
    >= S), as kernels/rope/reference.py ``rope_qk_cache``."""

    positions: torch.Tensor     # [M] int64
    freqs: torch.Tensor         # [head_dim / 2] float32
    q_out: torch.Tensor         # [M, n_heads * head_dim], x's dtype, unit stride along D
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    n_heads: int
    n_kv_heads: int
    head_dim: int

    def check(self, x: torch.Tensor, n: int) -> None:
        """ValueError unless these fit x [M, K] and a weight of N = n rows."""
        m, d, hq, hk = x.shape[0], self.head_dim, self.n_heads, self.n_kv_heads
        if d <= 0 or d % 32 or (hq + 2 * hk) * d != n:
            raise ValueError(f"QkvRope: head_dim {d} must be a multiple of 32 and ({hq} + 2 *"
                             f" {hk}) * {d} the weight's {n} rows")
        p, f = self.positions, self.freqs
        if p.shape != (m,) or p.dtype != torch.int64 or not p.is_contiguous():
            raise ValueError(f"QkvRope.positions: expected contiguous int64 ({m},), got "
                             f"{p.dtype} {tuple(p.shape)}")
        if f.shape != (d // 2,) or f.dtype != torch.float32 or not f.is_contiguous():
            raise ValueError(f"QkvRope.freqs: expected contiguous float32 ({d // 2},), got "
                             f"{f.dtype} {tuple(f.shape)}")
        q = self.q_out
        if q.shape != (m, hq * d) or q.dtype != x.dtype or q.stride(1) != 1:
            raise ValueError(f"QkvRope.q_out: expected {x.dtype} ({m}, {hq * d}) with unit "
                             f"last stride, got {q.dtype} {tuple(q.shape)}")
        for name, c in (("k_cache", self.k_cache), ("v_cache", self.v_cache)):
            if (c.dim() != 4 or c.shape[0] < m or c.shape[2:] != (hk, d) or c.stride(3) != 1
                    or c.dtype != x.dtype):
                raise ValueError(f"QkvRope.{name} {c.dtype} {tuple(c.shape)}: expected "
                                 f"{x.dtype} [>= {m}, S, {hk}, {d}] with unit stride along D")
        if self.k_cache.stride() != self.v_cache.stride() or (
                self.k_cache.shape != self.v_cache.shape):
            raise ValueError("QkvRope: k_cache and v_cache must have the same shape and "
                             "strides")
        for t in (p, f, q, self.k_cache, self.v_cache):
            if t.device != x.device:
                raise ValueError(f"QkvRope: every tensor must be on {x.device}")


@dataclasses.dataclass(frozen=True)
class AddNormOut:
    """The producer half of a residual add + RMSNorm split over two decode kernels
    (mma_decode.cu, EPI_RES): with y = round(x @ W^T (+ bias)) [M, N], the epilogue writes
    s = round(y + residual) to s_out, g = round(s * weight) to g_out (the consumer's x) and
    to ss_out [M, ceil(N / 32)] the float32 sums of s^2 over each 32-column tile. No y.
    bf16 only."""

    residual: torch.Tensor      # [M, N], unit stride along N
    weight: torch.Tensor        # the norm's weight [N], contiguous
    s_out: torch.Tensor         # [M, N], unit stride along N
    g_out: torch.Tensor         # [M, N], unit stride along N
    ss_out: torch.Tensor        # [M, ceil(N / 32)] float32, contiguous

    def check(self, x: torch.Tensor, n: int) -> None:
        m, tiles = x.shape[0], -(-n // 32)
        for name in ("residual", "s_out", "g_out"):
            t = getattr(self, name)
            if t.shape != (m, n) or t.dtype != x.dtype or t.stride(1) != 1:
                raise ValueError(f"AddNormOut.{name}: expected {x.dtype} ({m}, {n}) with unit "
                                 f"last stride, got {t.dtype} {tuple(t.shape)}")
        w = self.weight
        if w.shape != (n,) or w.dtype != x.dtype or not w.is_contiguous():
            raise ValueError(f"AddNormOut.weight: expected contiguous {x.dtype} ({n},), got "
                             f"{w.dtype} {tuple(w.shape)}")
        _check_ss(self.ss_out, m, tiles, "AddNormOut.ss_out")
        for t in (self.residual, w, self.s_out, self.g_out, self.ss_out):
            if t.device != x.device:
                raise ValueError(f"AddNormOut: every tensor must be on {x.device}")


@dataclasses.dataclass(frozen=True)
class NormIn:
    """The consumer half (mma_decode.cu, NORM): x is an `AddNormOut`'s g_out and ss its
    ss_out; every row m of the product is scaled by rsqrt(sum(ss[m]) / K + eps) before the
    bias, which makes it the product of rms_norm(s) (K: x's width). bf16 only."""

    ss: torch.Tensor            # [M, tiles] float32, contiguous
    eps: float

    def check(self, x: torch.Tensor) -> None:
        _check_ss(self.ss, x.shape[0], -(-x.shape[1] // 32), "NormIn.ss")
        if self.ss.device != x.device:
            raise ValueError(f"NormIn.ss: must be on {x.device}")


def _check_ss(ss: torch.Tensor, m: int, tiles: int, what: str) -> None:
    if ss.shape != (m, tiles) or ss.dtype != torch.float32 or not ss.is_contiguous():
        raise ValueError(f"{what}: expected contiguous float32 ({m}, {tiles}), got "
                         f"{ss.dtype} {tuple(ss.shape)}")


def norm_supported(cfg: MmaConfig, role: str) -> bool:
    """Whether mma_decode.cu has the residual add + RMSNorm kernel that role ("producer",
    "plain" consumer or "gate_up" consumer, the SiLU-mul epilogue) needs at this config:
    2 blocks in flight; producer and plain consumer at 8 or 16 warps; gate-up at 16, or at
    2, 4 and 8 warps with x not staged (the configs `pick_config` makes)."""
    if cfg.inflight != 2:
        return False
    if role in ("producer", "plain"):
        return cfg.warps in (8, 16)
    if role == "gate_up":
        return cfg.warps == 16 or (cfg.warps in (2, 4, 8) and not cfg.stage_x)
    raise ValueError(f"norm_supported: role {role!r}")


@functools.lru_cache(maxsize=None)
def _library(index: int) -> ctypes.CDLL | None:
    lib = cuda_build.load_for_device(SOURCE, index, "W4A16 decode kernel",
                                     "using the Triton kernel")
    if lib is None:
        return None
    fn = lib.w4a16_mma_launch
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.c_int] * 7 + [ctypes.c_void_p] * 7 + [ctypes.c_int] * 7
                   + [ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
                   + [ctypes.c_void_p] * 5 + [ctypes.c_longlong] * 3 + [ctypes.c_int] * 5
                   + [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4 + [ctypes.c_float])
    lib.w4a16_mma_error_string.restype = ctypes.c_char_p
    lib.w4a16_mma_error_string.argtypes = [ctypes.c_int]
    return lib


def available(x: torch.Tensor) -> bool:
    """True when x (an M x K activation) can go to the CUDA kernel: a CUDA tensor of at
    most MAX_M rows, even K and row stride (4-byte pairs), the kernel built for its device."""
    if os.environ.get("OPTIMIZER_W4A16_MMA", "1") == "0" or not x.is_cuda:
        return False
    if x.dim() != 2 or x.shape[0] > MAX_M or x.shape[1] % 2 or x.stride(0) % 2:
        return False
    if x.stride(1) != 1 or x.data_ptr() % 4:
        return False
    return _library(device_index(x.device)) is not None


def w4a16_mma(x: torch.Tensor, prepared: dict[str, torch.Tensor], bias: torch.Tensor | None,
              y: torch.Tensor | None, gs: int, cfg: MmaConfig | None = None,
              gate_up_silu: bool = False, rope: QkvRope | None = None,
              add_norm: AddNormOut | None = None, norm_in: NormIn | None = None) -> None:
    """y [M, N] = x [M, KX] @ W^T (+ bias) by mma_decode.cu; x in layout row order (act-order
    gathered already), `available(x)` true, y contiguous of x's dtype. gate_up_silu: W is a
    fused gate-up projection [W_gate; W_up] (N = 2F) and y [M, F] = silu(gate) * up, the
    SiLU-mul done in the kernel's epilogue. rope: W is a qkv projection and the epilogue
    rotates and writes q, k and v as `QkvRope` says (y unused: None). Both with 2 blocks in
    flight only; rope with 4-16 warps. add_norm (y unused: None) / norm_in: the two halves
    of a residual add + RMSNorm between two projections (`AddNormOut`, `NormIn`; bf16, the
    configs `norm_supported` accepts)."""
    qweight, sz = prepared["qweight"], prepared["sz"]
    m, kx = x.shape
    kp, n = qweight.shape[0] * 8, qweight.shape[1]
    if cfg is None:
        cfg = pick_config(m, n, kp, sm_count(x.device))
        if rope is not None and cfg.warps == 2:        # no 2-warp RoPE kernel
            cfg = dataclasses.replace(cfg, warps=4)
    if gate_up_silu and (n % 2 or cfg.inflight != 2):
        raise ValueError(f"w4a16_mma: the gate-up SiLU-mul needs an even N (got {n}) and 2 "
                         f"blocks in flight (got {cfg.inflight})")
    if rope is not None:
        if gate_up_silu or cfg.inflight != 2 or cfg.warps == 2:
            raise ValueError(f"w4a16_mma: the qkv RoPE epilogue needs 2 blocks in flight and "
                             f"4-16 warps, not the SiLU-mul too (got {cfg})")
        rope.check(x, n)
    if add_norm is not None or norm_in is not None:
        role = ("producer" if add_norm is not None else
                "gate_up" if gate_up_silu else "plain")
        if (x.dtype != torch.bfloat16 or rope is not None
                or (add_norm is not None and (norm_in is not None or gate_up_silu))
                or not norm_supported(cfg, role)):
            raise ValueError(f"w4a16_mma: the residual add + RMSNorm kernels take bf16, one "
                             f"half, no RoPE, and the configs norm_supported accepts (got "
                             f"{x.dtype}, {role}, {cfg})")
        if add_norm is not None:
            add_norm.check(x, n)
        else:
            norm_in.check(x)
    if y is None and rope is None and add_norm is None:
        raise ValueError("w4a16_mma: y is needed (only the RoPE and add-norm epilogues write "
                         "no y)")
    split = cfg.split_k or choose_split(m, kp, cfg)
    blocks = kp // 128
    split = min(split, blocks)
    per = -(-blocks // split)
    smem = (m * per * 256 if cfg.stage_x else 0) + cfg.warps * 2 * 32 * 4 * 4
    if cfg.stage_x and m * per * 256 > SMEM_MAX:
        raise ValueError(f"w4a16_mma: x of {m} rows x {per} blocks needs more than "
                         f"{SMEM_MAX} bytes of shared memory; use a larger split_k")
    tiles = -(-n // 32)
    if split > 1:
        ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
        locks = prepared.get("locks")
        if locks is None or locks.numel() < tiles:
            locks = torch.zeros(tiles, dtype=torch.int32, device=x.device)
        ws_ptr, locks_ptr = ws.data_ptr(), locks.data_ptr()
    else:
        ws_ptr = locks_ptr = None
    lib = _library(device_index(x.device))
    if rope is not None:
        kc = rope.k_cache
        rope_args = (rope.positions.data_ptr(), rope.freqs.data_ptr(), rope.q_out.data_ptr(),
                     kc.data_ptr(), rope.v_cache.data_ptr(), kc.stride(0), kc.stride(1),
                     kc.stride(2), rope.q_out.stride(0), kc.shape[1], rope.n_heads,
                     rope.n_kv_heads, rope.head_dim)
    else:
        rope_args = (None,) * 5 + (0,) * 8
    if add_norm is not None:
        a = add_norm
        norm_args = (a.residual.data_ptr(), a.weight.data_ptr(), a.s_out.data_ptr(),
                     a.g_out.data_ptr(), a.ss_out.data_ptr(), a.residual.stride(0),
                     a.s_out.stride(0), a.g_out.stride(0), tiles, 0.0)
    elif norm_in is not None:
        norm_args = (None,) * 4 + (norm_in.ss.data_ptr(), 0, 0, 0, norm_in.ss.shape[1],
                                   float(norm_in.eps))
    else:
        norm_args = (None,) * 5 + (0,) * 4 + (0.0,)
    epi = 2 if rope is not None else 3 if add_norm is not None else int(gate_up_silu)
    err = lib.w4a16_mma_launch(
        int(x.dtype == torch.bfloat16), gs, cfg.warps, cfg.inflight, int(cfg.stage_x),
        epi, int(norm_in is not None),
        x.data_ptr(), qweight.data_ptr(), sz.data_ptr(),
        bias.data_ptr() if bias is not None else None,
        y.data_ptr() if y is not None else None, ws_ptr, locks_ptr,
        m, n, kx, kp, split, x.stride(0), y.stride(0) if y is not None else 0, smem,
        torch.cuda.current_stream(x.device).cuda_stream, int(pdl.enabled(x)),
        int(x.data_ptr() % 16 == 0 and x.stride(0) % 8 == 0), *rope_args, *norm_args)
    if err:
        raise RuntimeError(f"w4a16_mma: launch failed: "
                           f"{lib.w4a16_mma_error_string(err).decode()}")
