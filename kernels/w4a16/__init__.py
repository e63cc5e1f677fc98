"""W4A16 GEMM: int4 group-quantized weights, bf16/fp16 activations.

`layout.py` prepares the GPU layout from our storage format (and inverts it), `reference.py`
is the plain PyTorch definition, `triton_gemm.py` the Triton kernels (import it only where
triton is installed). Tests: tests/test_kernels_gpu.py; benchmark: bench/gemm.py.
"""
