"""W8A16 GEMM: 8-bit weights (per output channel or in groups, optional act-order),
bf16/fp16 activations.

`layout.py` prepares the GPU layout from our storage format at build time (and inverts it),
`reference.py` is the plain PyTorch definition, `triton_gemm.py` the Triton kernels (import it
only where triton is installed). Tests: tests/test_kernels_int8_gpu.py; benchmark:
bench/gemm_int8.py.
"""
