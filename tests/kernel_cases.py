"""Helpers shared by the kernel test files (test_kernels_*.py): fresh seeds, random
quantized weights in our storage format (kernels/qlinear/reference.py), and the kernel
modules, imported from ``optimizer.kernels`` (the installed package), else from plain
``kernels`` (a source tree run without `pip install -e .`). Not plain ``kernels`` first: that
name is also a PyPI package (a dependency of transformers), which it would import.
"""

from __future__ import annotations

import importlib
import os

import torch

try:
    importlib.import_module("optimizer.kernels.qlinear.reference")
    PKG = "optimizer.kernels"
except ImportError:
    PKG = "kernels"

_pack_bits = importlib.import_module(f"{PKG}.qlinear.reference").pack_bits
SCALES = {4: (0.02, 0.002), 8: (0.002, 0.0002)}     # bits -> scales drawn in [lo, lo + span)


def kernel(name: str):
    """The kernel module ``name`` (e.g. "w4a16.triton_gemm"), imported on use."""
    return importlib.import_module(f"{PKG}.{name}")


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def random_weight(bits: int, n: int, k: int, group: int, sym: bool, act_order: bool,
                  seed: int, device: str = "cpu") -> tuple[torch.Tensor | None, ...]:
    """Storage tensors (qweight, scales, zeros, g_idx) of a random ``bits``-bit linear [N, K]:
    uniform codes and zeros, float16 scales, and with act_order a GPTQ desc_act g_idx (the
    groups follow a random permutation of the input channels)."""
    gen = torch.Generator().manual_seed(seed)
    groups = -(-k // group) if group > 0 else 1
    top = 1 << bits
    span, lo = SCALES[bits]
    codes = torch.randint(0, top, (n, k), generator=gen)
    scales = (torch.rand(n, groups, generator=gen) * span + lo).half()
    zeros = None if sym else torch.randint(0, top, (n, groups), generator=gen).to(torch.uint8)
    g_idx = None
    if act_order:
        perm = torch.randperm(k, generator=gen)
        g_idx = torch.empty(k, dtype=torch.int64)
        g_idx[perm] = torch.arange(k) // group
    out = (_pack_bits(codes, bits), scales, zeros, g_idx)
    return tuple(t.to(device) if t is not None else None for t in out)
