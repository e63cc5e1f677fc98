"""RMSNorm and fused residual-add + RMSNorm.

`reference.py` is the plain PyTorch definition, `triton_rms_norm.py` the Triton kernels
(import it only where triton is installed). Tests: tests/test_kernels_fused_gpu.py;
benchmark: bench/kernels_fused.py.
"""
