"""W4A16 GEMM: int4 group-quantized weights, bf16/fp16 activations.

`layout.py` prepares the GPU layout from our storage format (and inverts it), `reference.py`
is the plain PyTorch definition, `triton_gemm.py` the Triton kernels (import it only where
triton is installed), `mma_decode.cu` the CUDA C++ kernel for M <= 8 (built at first use by
`cuda_decode.py`; `triton_gemm.w4a16_linear` sends M <= 4 to it). Tests:
tests/test_kernels_gpu.py; benchmarks: bench/gemm.py, bench/w4a16_mma_sweep.py.
"""
