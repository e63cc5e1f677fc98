"""W8A8 GEMM (SmoothQuant): int8 weights per output channel, int8 activations per token
(dynamic), int8 tensor cores.

`reference.py` is the plain PyTorch definition (the CPU interpreter runs it), `layout.py`
passes the stored tensors through to the kernels, `triton_gemm.py` holds the per-token
quantization and GEMM kernels (import it only where triton is installed). Tests:
tests/test_kernels_int8_gpu.py; benchmark: bench/gemm_int8.py.
"""
