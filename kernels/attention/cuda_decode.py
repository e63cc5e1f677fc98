"""The CUDA C++ decode attention (decode_attn.cu, sm_90): build, plan, launch.

Same contract as triton_decode.decode_attention (one new query token per sequence over a
batched cache [B, S_max, Hk, D], GQA, optional sliding window; reference: reference.py),
for 16-bit q and caches, D = 64 or 128 and up to 8 query heads per kv head. The positions
of each (sequence, kv head) are split over a thread-block cluster of up to 8 CTAs whose
partial softmax sums meet in distributed shared memory: one launch, no workspace, no
arrival counters. Under PDL the first positions' k/v rows are loaded before the wait on
the kernel before it (see decode_attn.cu for what that kernel may write).

The engine's decode step uses it where `available` says so: an sm_90 device, nvcc to build it
at first use (kernels/cuda_build.py) and ``OPTIMIZER_ATTN_CUDA=1``. Off by default: in the
Llama-3-8B-shaped int4 decode step on an H100 it took 8.42 µs a layer against the Triton
kernel's 4.99 (448 against 471 tok/s at batch 1; bench/RESULTS.md, twelfth session), for
reasons not yet looked into (a cluster of 8 CTAs must be placed on one GPC at once, which
may keep it from starting early under PDL; the scores' shuffle sums sit on the critical
path).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from pathlib import Path

import torch

from .. import cuda_build
from ..device_info import device_index

SOURCE = Path(__file__).with_name("decode_attn.cu")
HEAD_DIMS = (64, 128)
MAX_R = 8
MAX_CLUSTER = 8
MIN_POSITIONS = 32      # per CTA: 8 per warp, the first group's loads before the PDL wait


def plan(s_max: int) -> tuple[int, int]:
    """(CTAs per cluster C, positions per CTA P) for a cache of s_max positions: the smallest
    power of two C <= 8 that gives each CTA at most MIN_POSITIONS, P = ceil(s_max / C).
    ``OPTIMIZER_ATTN_CUDA_CLUSTER`` (1, 2, 4 or 8) sets C instead (A/B measurements)."""
    over = os.environ.get("OPTIMIZER_ATTN_CUDA_CLUSTER")
    if over:
        if over not in ("1", "2", "4", "8"):
            raise ValueError(f"OPTIMIZER_ATTN_CUDA_CLUSTER={over!r}: expected 1, 2, 4 or 8")
        c = int(over)
    else:
        want = max(1, -(-s_max // MIN_POSITIONS))
        c = min(MAX_CLUSTER, 1 << (want - 1).bit_length())
    return c, -(-s_max // c)


@functools.lru_cache(maxsize=None)
def _library(index: int) -> ctypes.CDLL | None:
    if torch.cuda.get_device_capability(index)[0] < 9:     # clusters: sm_90 and later
        return None
    lib = cuda_build.load_for_device(SOURCE, index, "CUDA decode attention",
                                     "using the Triton kernel")
    if lib is None:
        return None
    fn = lib.attn_decode_launch
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.c_int] * 3 + [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5
                   + [ctypes.c_longlong] * 8 + [ctypes.c_float, ctypes.c_int,
                                                ctypes.c_void_p, ctypes.c_int])
    lib.attn_decode_error_string.restype = ctypes.c_char_p
    lib.attn_decode_error_string.argtypes = [ctypes.c_int]
    return lib


def _why_not(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             lengths: torch.Tensor, n_heads: int, n_kv_heads: int) -> str | None:
    """None where the kernel takes these operands, else what it does not take."""
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        return f"caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)}: expected [B, S, Hk, D]"
    bsz, s_max, hk, d = k_cache.shape
    if hk != n_kv_heads or n_kv_heads < 1 or n_heads % n_kv_heads \
            or q.shape != (bsz, n_heads * d):
        return f"q {tuple(q.shape)}: expected [B, {n_heads} * D] over {n_kv_heads} kv heads"
    if not (q.is_cuda and k_cache.device == q.device == v_cache.device == lengths.device):
        return "q, caches and lengths must be on one CUDA device"
    if q.dtype not in (torch.bfloat16, torch.float16) or not \
            (k_cache.dtype == v_cache.dtype == q.dtype):
        return f"dtypes {q.dtype}, {k_cache.dtype}, {v_cache.dtype}: expected one of bf16/fp16"
    if d not in HEAD_DIMS or n_heads // n_kv_heads > MAX_R:
        return f"head size {d}, {n_heads // n_kv_heads} query heads per kv head: expected " \
               f"D in {HEAD_DIMS} and at most {MAX_R}"
    if lengths.shape != (bsz,) or lengths.dtype != torch.int32 or not lengths.is_contiguous():
        return f"lengths {lengths.dtype} {tuple(lengths.shape)}: expected contiguous int32 ({bsz},)"
    align = d // 32                                    # elements a lane loads at once
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1 or any(s % align for s in t.stride()[:-1]) \
                or t.data_ptr() % (2 * align):
            return f"{name}: unit stride along D and {2 * align}-byte aligned rows expected"
    return None


def supported(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              lengths: torch.Tensor, n_heads: int, n_kv_heads: int) -> bool:
    """Whether the kernel takes these operands (see `decode_attention`)."""
    return _why_not(q, k_cache, v_cache, lengths, n_heads, n_kv_heads) is None


def available(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              lengths: torch.Tensor, n_heads: int, n_kv_heads: int) -> bool:
    """`supported`, switched on (``OPTIMIZER_ATTN_CUDA=1``) and built for q's device."""
    if os.environ.get("OPTIMIZER_ATTN_CUDA", "0") != "1" \
            or not supported(q, k_cache, v_cache, lengths, n_heads, n_kv_heads):
        return False
    return _library(device_index(q.device)) is not None


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     lengths: torch.Tensor, n_heads: int, n_kv_heads: int,
                     window: int | None = None, scale: float | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, Hq*D], caches [B, S_max, Hk, D], lengths [B] int32 in [0, S_max] -> out [B, Hq*D]
    in q's dtype: reference.decode_attention, softmax and sums in float32. ValueError where
    the kernel does not take the operands (`supported`), RuntimeError where it could not be
    built for this device."""
    why = _why_not(q, k_cache, v_cache, lengths, n_heads, n_kv_heads)
    if why is not None:
        raise ValueError(f"cuda decode attention: {why}")
    if window is not None and window < 1:
        raise ValueError(f"cuda decode attention: window {window}: expected >= 1 or None")
    bsz, s_max, hk, d = k_cache.shape
    o = out if out is not None else torch.empty_like(q, memory_format=torch.contiguous_format)
    if o.shape != q.shape or o.dtype != q.dtype or o.device != q.device or o.stride(1) != 1:
        raise ValueError(f"cuda decode attention: out must be a {q.dtype} "
                         f"{tuple(q.shape)} tensor with unit stride along its rows")
    if bsz == 0 or s_max == 0:
        return o.zero_() if s_max == 0 else o
    lib = _library(device_index(q.device))
    if lib is None:
        raise RuntimeError("cuda decode attention: the kernel could not be built for this "
                           "device (needs sm_90 and nvcc)")
    from .. import pdl                 # imports triton: not needed to plan or check
    c, p = plan(s_max)
    qk_scale = (scale if scale is not None else d ** -0.5) * math.log2(math.e)
    err = lib.attn_decode_launch(
        int(q.dtype == torch.bfloat16), d, n_heads // n_kv_heads, q.data_ptr(),
        k_cache.data_ptr(), v_cache.data_ptr(), lengths.data_ptr(), o.data_ptr(), bsz, hk,
        s_max, p, c, q.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), o.stride(0), qk_scale,
        int(window) if window is not None else 0,
        torch.cuda.current_stream(q.device).cuda_stream, int(pdl.enabled(q)))
    if err:
        raise RuntimeError(f"cuda decode attention: launch failed: "
                           f"{lib.attn_decode_error_string(err).decode()}")
    return o
