"""The float GEMV kernel (kernels/gemv/triton_gemv.py) against its float64 reference on fresh
random inputs: TestGPU on a CUDA machine (marked gpu), TestInterpreter through Triton's CPU
interpreter (TRITON_INTERPRET=1 with triton installed; skipped elsewhere and where a GPU is
present). Tolerance: relative Frobenius error below 1e-2 for bf16 and 2e-3 for fp16 (one
rounding of the output, float32 sums: ~2^-9 and ~2^-12 expected).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from triton_interp import INTERPRETER_MARKS

from optimizer.kernels.gemv.reference import gemv as gemv_ref

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def check_gemv(n: int, k: int, dtype: torch.dtype, device: str, *, bias: bool = False,
               strided: bool = False) -> None:
    from optimizer.kernels.gemv.triton_gemv import gemv
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator(device=device).manual_seed(seed)
    what = f"seed={seed} n={n} k={k} {dtype} bias={bias} strided={strided}"
    x = (torch.randn(1, k, generator=gen, device=device) + 0.1).to(dtype)
    wide = k + 64 if strided else k                   # a row stride larger than K
    w = (torch.randn(n, wide, generator=gen, device=device) * 0.05).to(dtype)[:, :k]
    b = (torch.randn(n, generator=gen, device=device)).to(dtype) if bias else None
    y = torch.full((1, n), float("nan"), dtype=dtype, device=device)
    got = gemv(x, w, b, out=y)
    assert got.data_ptr() == y.data_ptr() and not torch.isnan(y).any(), what
    ref = gemv_ref(x, w, b).double()
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"rel err {err:.3e}: {what}"


def test_supported_rejects() -> None:
    if not HAS_TRITON:
        pytest.skip("needs triton")
    from optimizer.kernels.gemv.triton_gemv import gemv, supported
    w = torch.zeros(16, 64, dtype=torch.bfloat16)
    assert not supported(torch.zeros(2, 64, dtype=torch.bfloat16), w)       # M = 2
    assert not supported(torch.zeros(1, 64, dtype=torch.float32), w)        # dtype
    assert not supported(torch.zeros(1, 60, dtype=torch.bfloat16), w[:, :60])   # K % 8
    with pytest.raises(ValueError, match="expected x"):
        gemv(torch.zeros(1, 64), w)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
class TestGPU:
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    @pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (4096, 14336),
                                     (28672, 4096), (128256, 4096), (960, 576),
                                     (49152, 576), (1000, 72), (5, 4104)])
    def test_gemv(self, n: int, k: int, dtype: torch.dtype) -> None:
        check_gemv(n, k, dtype, "cuda")

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_bias_and_stride(self, dtype: torch.dtype) -> None:
        check_gemv(1030, 4096, dtype, "cuda", bias=True)
        check_gemv(512, 1024, dtype, "cuda", strided=True)

    def test_cuda_graph(self) -> None:
        """Captured and replayed (with PDL where the GPU has it) on new inputs."""
        from optimizer.kernels.gemv.triton_gemv import gemv
        w = torch.randn(4096, 4096, device="cuda").bfloat16()
        x = torch.randn(1, 4096, device="cuda").bfloat16()
        gemv(x, w)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = gemv(x, w)
        for _ in range(3):
            x.copy_(torch.randn(1, 4096, device="cuda"))
            g.replay()
            ref = gemv_ref(x, w).double()
            assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


class TestInterpreter:
    pytestmark = INTERPRETER_MARKS

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    @pytest.mark.parametrize("n,k", [(64, 1024), (13, 520), (9, 72)])
    def test_gemv(self, n: int, k: int, dtype: torch.dtype) -> None:
        check_gemv(n, k, dtype, "cpu")

    def test_bias_and_stride(self) -> None:
        check_gemv(20, 512, torch.float16, "cpu", bias=True, strided=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    """kernels/gemv/gemv.cu (M <= 4) against the float64 reference, at the same tolerances."""

    @staticmethod
    def run(m: int, n: int, k: int, dtype: torch.dtype, cfg=None, bias: bool = False,
            strided: bool = False) -> None:
        from optimizer.kernels.gemv import cuda_gemv
        seed = int.from_bytes(os.urandom(4), "little")
        gen = torch.Generator(device="cuda").manual_seed(seed)
        what = f"seed={seed} m={m} n={n} k={k} {dtype} cfg={cfg} bias={bias} strided={strided}"
        wide = k + 64 if strided else k
        x = (torch.randn(m, wide, generator=gen, device="cuda") + 0.1).to(dtype)[:, :k]
        w = (torch.randn(n, wide, generator=gen, device="cuda") * 0.05).to(dtype)[:, :k]
        b = torch.randn(n, generator=gen, device="cuda").to(dtype) if bias else None
        if not cuda_gemv.available(x, w):
            pytest.skip("the CUDA GEMV is not available here (no nvcc?)")
        y = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        got = cuda_gemv.gemv(x, w, b, out=y, cfg=cfg)
        assert got.data_ptr() == y.data_ptr() and not torch.isnan(y).any(), what
        ref = gemv_ref(x, w, b).double()
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert err < TOL[dtype], f"rel err {err:.3e}: {what}"

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    @pytest.mark.parametrize("m", [1, 2, 3, 4])
    @pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (28672, 4096),
                                     (960, 576), (1000, 72), (5, 4104), (37, 2056)])
    def test_shapes(self, m: int, n: int, k: int, dtype: torch.dtype) -> None:
        self.run(m, n, k, dtype)

    @pytest.mark.parametrize("rows", [4, 8, 16])
    @pytest.mark.parametrize("warps", [4, 8])
    @pytest.mark.parametrize("m", [1, 4])
    def test_configs(self, rows: int, warps: int, m: int) -> None:
        from optimizer.kernels.gemv.cuda_gemv import GemvConfig
        self.run(m, 1030, 4104, torch.bfloat16, GemvConfig(rows, warps))
        self.run(m, 77, 1032, torch.float16, GemvConfig(rows, warps), bias=True)

    @pytest.mark.parametrize("m", [1, 3])
    def test_bias_and_strides(self, m: int) -> None:
        self.run(m, 1030, 4096, torch.bfloat16, bias=True, strided=True)
        self.run(m, 512, 1024, torch.float16, bias=True, strided=True)

    def test_deterministic_and_graph(self) -> None:
        """Bit-identical on repeats; captured and replayed on new inputs."""
        from optimizer.kernels.gemv import cuda_gemv
        w = torch.randn(4096, 14336, device="cuda").bfloat16() * 0.02
        x = torch.randn(2, 14336, device="cuda").bfloat16()
        if not cuda_gemv.available(x, w):
            pytest.skip("the CUDA GEMV is not available here (no nvcc?)")
        first = cuda_gemv.gemv(x, w)
        for _ in range(3):
            assert torch.equal(cuda_gemv.gemv(x, w), first)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = cuda_gemv.gemv(x, w)
        for _ in range(3):
            x.copy_(torch.randn(2, 14336, device="cuda"))
            g.replay()
            ref = gemv_ref(x, w).double()
            assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2

    def test_rejects(self) -> None:
        from optimizer.kernels.gemv import cuda_gemv
        w = torch.randn(16, 64, device="cuda").bfloat16()
        assert not cuda_gemv.supported(torch.randn(5, 64, device="cuda").bfloat16(), w)
        assert not cuda_gemv.supported(torch.randn(1, 64, device="cuda"), w)         # dtype
        assert not cuda_gemv.supported(torch.randn(1, 60, device="cuda").bfloat16(),
                                       w[:, :60])                                    # K % 8
        with pytest.raises(ValueError, match="expected CUDA x"):
            cuda_gemv.gemv(torch.randn(1, 64, device="cuda"), w)

    @pytest.mark.parametrize("m", [1, 2, 4])
    def test_float32_out(self, m: int) -> None:
        """out_dtype float32 (the engine's logits): the float32 sums, unrounded (1e-4 of
        float64 where a bf16 rounding would give ~4e-3)."""
        from optimizer.kernels.gemv import cuda_gemv
        gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
        x = torch.randn(m, 576, generator=gen, device="cuda").bfloat16()
        w = (torch.randn(49152, 576, generator=gen, device="cuda") * 0.05).bfloat16()
        if not cuda_gemv.available(x, w):
            pytest.skip("the CUDA GEMV is not available here (no nvcc?)")
        y = cuda_gemv.gemv(x, w, out_dtype=torch.float32)
        assert y.dtype == torch.float32
        ref = gemv_ref(x.double(), w.double())
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-4
        with pytest.raises(ValueError, match="out_dtype"):
            cuda_gemv.gemv(x, w, out_dtype=torch.float16)
