"""Programmatic dependent launch (PDL, sm_90+) for our Triton kernels.

A kernel launched with PDL may start while the kernel before it in the stream is still
running: its programs are scheduled once every program of the previous kernel has called
``griddepcontrol.launch_dependents`` (`release`) or exited, and ``griddepcontrol.wait``
(`wait`) blocks until the previous kernel has finished and its writes are visible. In a
CUDA graph of a decode step this hides part of each launch's latency (the next kernel's
programs can be resident and past their prologue when the previous one ends), and a weight
GEMM can stream its first weight blocks into L2 (`prefetch_l2`) before it waits: the
weights are not written by any kernel, only the activations are.

The contract every kernel here keeps when ``PDL`` is set: nothing before `wait` reads memory
a previous kernel writes, and nothing before it writes at all. `wait` waits for the whole
previous kernel, which itself waited for the one before, so ordering is transitive along the
stream. Kernels not launched with PDL (cuBLAS, PyTorch ops) start as usual, after the
previous kernel has finished; `wait` is a no-op when the launch had no PDL attribute.

Only for decode-sized work: a launch whose activation has more than MAX_ROWS rows (a
prefill) goes without PDL. Decode at batch 1 gained 2-6% from PDL on an H200
(bench/RESULTS.md); the 512-token prefill timings (eager launches) scattered by up to 1.8x
between runs with and without it, so no effect there was shown either way, and prefill
keeps the plain launches.

Switch: ``OPTIMIZER_PDL=0`` launches everything without PDL (for measuring the difference);
never used in Triton's interpreter or below sm_90.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


MAX_ROWS = 64


def enabled(t: torch.Tensor) -> bool:
    """True when kernels working on ``t`` (an activation: rows = tokens or sequences) are
    launched with PDL (see the module doc)."""
    if not t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if t.dim() > 1 and t.shape[0] > MAX_ROWS:
        return False
    if os.environ.get("OPTIMIZER_PDL", "1") == "0":
        return False
    return _capable(t.device.index if t.device.index is not None
                    else torch.cuda.current_device())


def launch_args(t: torch.Tensor) -> dict:
    """Keyword arguments of a Triton launch: the ``PDL`` constexpr, and ``launch_pdl``
    where it is on (never passed to the interpreter)."""
    on = enabled(t)
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


@triton.jit
def wait(PDL: tl.constexpr):
    """Block until the previous kernel in the stream has finished (its writes visible)."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def release(PDL: tl.constexpr):
    """Let the next kernel's programs be scheduled (they still `wait` for this one)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptr, nbytes, PDL: tl.constexpr):
    """Ask the copy engine to bring [ptr, ptr + nbytes) into L2 (one bulk prefetch, issued by
    thread 0; ptr 16-byte aligned, nbytes a multiple of 16). Only with PDL: it is meant for
    weights, before `wait`."""
    if PDL:
        tl.inline_asm_elementwise(
            """{
            .reg .pred p;
            .reg .u32 t;
            mov.u32 t, %tid.x;
            setp.eq.u32 p, t, 0;
            @p cp.async.bulk.prefetch.L2.global [$1], $2;
            mov.u32 $0, 0;
            }""",
            "=r,l,r", [ptr, nbytes], dtype=tl.int32, is_pure=False, pack=1)
