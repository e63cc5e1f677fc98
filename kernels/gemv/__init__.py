"""Float GEMV for decode (one to four tokens): ``y [M, N] = x [M, K] @ W^T + bias``, W [N, K]
bf16/fp16.

`reference.py` is the plain float64 definition; `gemv.cu` with `cuda_gemv.py` the CUDA C++
kernel (M <= 4, built with nvcc at first use; the engine uses it at M <= 2, and for the
model's logits with float32 output); `triton_gemv.py` the Triton kernel (M = 1; the
engine's fallback where the CUDA one cannot be built; import it only where triton is
installed). Tests: tests/test_kernels_gemv_gpu.py; benchmark: bench/gemv_sweep.py.
"""
