"""Scratch storage for tensors a pass computes (quantized weights, rescaled norms).

Weights stay lazy handles: a pass writes what it computes to safetensors files in a scratch
directory (one file per call, e.g. per decoder layer, so memory does not grow with depth)
and gets `WeightRef`s back. The directory lives as long as a graph holds the `ScratchDir`
in ``Graph.resources``; it is removed when the last such graph is garbage collected.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from optimizer.formats.safetensors_io import write_safetensors
from optimizer.ir.graph import WeightRef

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
               torch.int64: "int64", torch.int32: "int32", torch.int8: "int8",
               torch.uint8: "uint8"}


class ScratchDir:
    def __init__(self, prefix: str = "optimizer-scratch-") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.path = Path(self._tmp.name)
        self._count = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> dict[str, WeightRef]:
        """Store ``tensors`` (name -> tensor) in a new file; return their handles."""
        self._count += 1
        path = self.path / f"{self._count:05d}.safetensors"
        entries = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
        write_safetensors(path, entries, lambda n: tensors[n].contiguous())
        return {n: WeightRef(n, DTYPE_NAMES[t.dtype], tuple(t.shape), str(path), n,
                             "safetensors") for n, t in tensors.items()}
