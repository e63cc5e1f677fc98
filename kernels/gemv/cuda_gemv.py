"""The CUDA C++ float GEMV (gemv.cu) for decode, M <= 4: build, configure, launch.

The engine's float projections at M <= MAX_M go here where `available` says the kernel can
run (a CUDA device of compute capability >= 8.0 and nvcc to build it at first use, see
kernels/cuda_build.py); otherwise to the Triton GEMV (M = 1, small weights) or cuBLAS.
``OPTIMIZER_CUDA_GEMV=0`` turns it off (for A/B measurements).

Why a CUDA kernel beside the Triton one: at M = 1 on an H200 both cuBLAS and the Triton GEMV
spent a fixed 3-5 µs per launch beyond the weight stream (bench/RESULTS.md: 69% of copy
bandwidth on Llama-3-8B's qkv and o). Here every warp keeps two chunks of R rows in flight,
the first two loaded before the PDL wait, so the weight stream starts while the previous
kernel still runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
from pathlib import Path

import torch

from .. import cuda_build, pdl
from ..device_info import device_index

MAX_M = 4
SOURCE = Path(__file__).with_name("gemv.cu")


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    """rows: rows of W per CTA (4, 8 or 16); warps: warps per CTA (4 or 8), splitting K."""

    rows: int = 8
    warps: int = 8

    def __post_init__(self) -> None:
        if self.rows not in (4, 8, 16):
            raise ValueError(f"GemvConfig.rows: expected 4, 8 or 16, got {self.rows}")
        if self.warps not in (4, 8):
            raise ValueError(f"GemvConfig.warps: expected 4 or 8, got {self.warps}")


def pick_config(m: int, n: int, k: int) -> GemvConfig:
    """The winners of bench/gemv_sweep.py on an H200 (2026-12-01, bench/RESULTS.md) on
    Llama-3-8B's qkv, o, gate-up, down and lm_head at M = 1 and 2: 4 rows per CTA; 4 warps
    where W has at most 4096 rows (o, down), 8 on the wider ones. Each pick was the best or
    within 2% of it."""
    return GemvConfig(rows=4, warps=4 if n <= 4096 else 8)


PREFER_MAX_M = 2


def prefer(x: torch.Tensor) -> bool:
    """Whether the engine should use this kernel rather than cuBLAS for x @ W^T (both
    supported): x of at most 2 rows. On an H200 (bench/gemv_sweep.py, each call after an RMSNorm as
    in decode) it beat cuBLAS on all five 8B shapes at M = 1 (1.05-1.36x) and M = 2
    (1.05-1.25x); at M = 4 its best config was 0.83-1.01x cuBLAS, and bf16 decode at
    batch 4 measured 719 tok/s with it against 887 without."""
    return x.dim() == 2 and x.shape[0] <= PREFER_MAX_M


@functools.lru_cache(maxsize=None)
def _library(index: int) -> ctypes.CDLL | None:
    lib = cuda_build.load_for_device(SOURCE, index, "CUDA GEMV",
                                     "using cuBLAS / the Triton GEMV")
    if lib is None:
        return None
    fn = lib.gemv_launch
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.c_int] * 4 + [ctypes.c_void_p] * 4 + [ctypes.c_int] * 6
                   + [ctypes.c_void_p, ctypes.c_int])
    lib.gemv_error_string.restype = ctypes.c_char_p
    lib.gemv_error_string.argtypes = [ctypes.c_int]
    return lib


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel takes these operands: x [M <= 4, K], W [N, K] of one 16-bit float
    dtype on one CUDA device, unit stride along K, K and the row strides multiples of 8 with
    16-byte aligned starts."""
    return (x.is_cuda and x.dim() == 2 and 1 <= x.shape[0] <= MAX_M
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dim() == 2
            and weight.dtype == x.dtype and weight.device == x.device
            and weight.shape[1] == x.shape[1] and x.shape[1] % 8 == 0
            and x.stride(1) == 1 and weight.stride(1) == 1
            and x.stride(0) % 8 == 0 and weight.stride(0) % 8 == 0
            and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0)


def available(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """`supported`, not switched off, and the kernel built for x's device."""
    if os.environ.get("OPTIMIZER_CUDA_GEMV", "1") == "0" or not supported(x, weight):
        return False
    return _library(device_index(x.device)) is not None


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         out: torch.Tensor | None = None, cfg: GemvConfig | None = None,
         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T (+ bias [N]) -> [M, N] in ``out_dtype`` (x's dtype, or
    float32: the float32 sums unrounded, for logits); `available` true."""
    if not supported(x, weight):
        raise ValueError(f"cuda gemv: x {x.dtype} {tuple(x.shape)} strides {x.stride()}, "
                         f"weight {weight.dtype} {tuple(weight.shape)} strides "
                         f"{weight.stride()}: expected CUDA x [M <= {MAX_M}, K] and W [N, K] "
                         f"of one 16-bit float dtype, K % 8 == 0, unit stride, aligned rows")
    m, k = x.shape
    n = weight.shape[0]
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype
                             or not bias.is_contiguous()):
        raise ValueError(f"cuda gemv: bias {bias.dtype} {tuple(bias.shape)}, expected a "
                         f"contiguous {x.dtype} ({n},)")
    dt = out_dtype or (out.dtype if out is not None else x.dtype)
    if dt not in (x.dtype, torch.float32):
        raise ValueError(f"cuda gemv: out_dtype {dt}: expected {x.dtype} or torch.float32")
    y = out if out is not None else torch.empty((m, n), dtype=dt, device=x.device)
    if y.shape != (m, n) or y.dtype != dt or y.stride(1) != 1:
        raise ValueError(f"cuda gemv: out must be a {dt} ({m}, {n}) tensor with unit "
                         f"stride along N")
    if n == 0:
        return y
    lib = _library(device_index(x.device))
    if lib is None:
        raise RuntimeError("cuda gemv: the kernel could not be built for this device")
    cfg = cfg or pick_config(m, n, k)
    err = lib.gemv_launch(
        int(x.dtype == torch.bfloat16), int(dt == torch.float32 != x.dtype), cfg.rows,
        cfg.warps, x.data_ptr(), weight.data_ptr(),
        bias.data_ptr() if bias is not None else None, y.data_ptr(), m, n, k, x.stride(0),
        weight.stride(0), y.stride(0), torch.cuda.current_stream(x.device).cuda_stream,
        int(pdl.enabled(x)))
    if err:
        raise RuntimeError(f"cuda gemv: launch failed: {lib.gemv_error_string(err).decode()}")
    return y
