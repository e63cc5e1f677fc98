"""bench/read_floor.py and read_floor.cu, the read-only kernels that give the W4A16 decode
kernel's floor: on CPU the library builds for sm_90 (nvcc only), its launchers refuse
configs they do not have, and the shared-memory cap admits exactly the CTAs asked for; on
a GPU, every read kernel reads each weight word exactly once (the XOR of what it read
against the XOR of the weights computed on the CPU)."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from functools import reduce
from pathlib import Path

import pytest
import torch

from kernel_cases import kernel

ROOT = Path(__file__).resolve().parent.parent
cuda_build = kernel("cuda_build")
needs_nvcc = pytest.mark.skipif(cuda_build.find_nvcc() is None, reason="no nvcc here")
INVALID = 1                                              # cudaErrorInvalidValue


def _module():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("read_floor", ROOT / "bench" / "read_floor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_nvcc
def test_library_builds_and_refuses_unknown_configs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPTIMIZER_CACHE", str(tmp_path / "cache"))
    lib = ctypes.CDLL(str(cuda_build.build(ROOT / "bench" / "read_floor.cu", "sm_90")))
    lib.read_pattern_launch.restype = lib.read_linear_launch.restype = ctypes.c_int
    lib.read_floor_error_string.restype = ctypes.c_char_p
    # warps 6 / in flight 3 / 3 scale words are not built: refused before any CUDA call
    args = [None] * 4 + [1, 64, 256, 1, 64, ctypes.c_size_t(0), None, 0, 0]
    assert lib.read_pattern_launch(6, 2, 1, *args) == INVALID
    assert lib.read_pattern_launch(8, 3, 1, *args) == INVALID
    assert lib.read_pattern_launch(8, 2, 3, *args) == INVALID
    assert lib.read_linear_launch(3, 132, None, ctypes.c_size_t(16), None, None, 0, 0) \
        == INVALID
    assert lib.read_linear_launch(4, 0, None, ctypes.c_size_t(16), None, None, 0, 0) \
        == INVALID
    assert lib.read_floor_error_string(INVALID) == b"invalid argument"


@pytest.mark.parametrize("ctas", range(1, 9))
def test_shared_memory_cap_admits_exactly_that_many_ctas(ctas: int) -> None:
    mod = _module()
    smem = mod.cap_smem(ctas) + 1024                     # each CTA's own 1 KiB as well
    assert ctas * smem <= mod.SMEM_PER_SM < (ctas + 1) * smem


def test_xor_words_matches_python() -> None:
    mod = _module()
    t = torch.randint(-2**31, 2**31 - 1, (37, 5), dtype=torch.int32)
    want = reduce(lambda a, b: a ^ b, (v & 0xFFFFFFFF for v in t.flatten().tolist()))
    assert mod.xor_words(t) == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("warps,inflight,split", [(8, 2, 1), (4, 4, 2), (8, 2, 3)])
def test_read_kernels_read_every_word_once(gs: int, warps: int, inflight: int,
                                           split: int) -> None:
    mod = _module()
    cd = kernel("w4a16.cuda_decode")
    k, n = 1152, 320                                     # 9 K blocks: ragged splits
    g = torch.Generator().manual_seed(gs + 7 * split)
    prepared = {"qweight": torch.randint(-2**31, 2**31 - 1, (k // 8, n), generator=g,
                                         dtype=torch.int32).cuda(),
                "sz": torch.randint(-2**31, 2**31 - 1, (k // gs, n), generator=g,
                                    dtype=torch.int32).cuda()}
    want = mod.xor_words(prepared["qweight"])            # scale words are read 4x: cancel
    rd = mod.Reader()
    y = torch.full((2, n), 7.0, dtype=torch.bfloat16, device="cuda")
    cfg = cd.MmaConfig(warps, inflight, split)
    for smem in (0, mod.cap_smem(2)):
        assert rd.checked(lambda: rd.pattern(prepared, y, cfg, split, smem, True), want)
    assert (y == 0).all()
    flat = prepared["qweight"].view(-1)
    for u in (2, 4, 8):
        for ctas in (1, 7, 132):
            assert rd.checked(lambda: rd.linear(flat, u, ctas, True), want), (u, ctas)
