"""SiLU-gated MLP activation: ``silu(gate) * up`` on the fused gate/up projection's output.

`reference.py` is the plain PyTorch definition, `triton_silu_mul.py` the Triton kernel
(import it only where triton is installed). Tests: tests/test_kernels_fused_gpu.py;
benchmark: bench/kernels_fused.py.
"""
