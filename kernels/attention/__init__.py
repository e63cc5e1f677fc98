"""Grouped-query attention over a KV cache.

`reference.py` is the plain PyTorch definition (``attention``; ``decode_attention`` over a
batched cache), `kv_cache.py` writes a step's k/v into the cache (plain PyTorch,
graph-capturable), `triton_decode.py` the split-K decode kernel (import it only where triton
is installed), `cuda_decode.py` + `decode_attn.cu` a CUDA C++ decode kernel for sm_90
(thread-block clusters; off by default: slower as measured). Tests:
tests/test_kernels_fused_gpu.py; benchmark: bench/kernels_fused.py.
"""
