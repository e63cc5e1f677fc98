"""Float GEMV for decode (one token): ``y [1, N] = x [1, K] @ W^T + bias``, W [N, K] bf16/fp16.

`reference.py` is the plain float64 definition, `triton_gemv.py` the Triton kernel (import it
only where triton is installed). Tests: tests/test_kernels_gemv_gpu.py; benchmark:
bench/gemm.py (the bf16 rows at M = 1).
"""
