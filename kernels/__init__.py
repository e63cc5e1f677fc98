"""Kernels. Each op's folder holds `reference.py`, the plain PyTorch definition that every
faster version (Triton, CUDA) is tested against. Kernels are leaves: they import torch and
their own references, never the IR or a pass."""
