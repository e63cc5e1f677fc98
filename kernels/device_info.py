"""What the kernels' launch heuristics need to know about a device (no triton import)."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_index(device: torch.device) -> int:
    """The CUDA device's index (the current device's where the device names none)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def sm_count(device: torch.device, off_gpu: int = 132) -> int:
    """Multiprocessors of a CUDA device; ``off_gpu`` elsewhere (e.g. Triton's interpreter on
    CPU tensors, where the grid-sizing heuristics still need a number)."""
    if device.type != "cuda":
        return off_gpu
    return _num_sms(device_index(device))
