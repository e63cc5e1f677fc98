"""Rotary position embedding (rotate-half).

`reference.py` holds the frequencies (``inv_freq``, with llama3/linear scaling) and the plain
PyTorch ``rope``/``rope_qk``; `triton_rope.py` the Triton kernels (import it only where triton
is installed). Tests: tests/test_kernels_fused_gpu.py; benchmark: bench/kernels_fused.py.
"""
