"""Materialising lazy `WeightRef` handles into tensors.

A `WeightStore` keeps each source file's parsed header (and its memory map) open, so
loading a weight reads only that tensor's bytes, then applies the recorded transforms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from optimizer.ir.graph import Transform, WeightRef

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
                "int8": torch.int8, "uint8": torch.uint8}


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's conversion permutation of Q/K rows.

    llama.cpp stores each head's rows interleaved (pairs for its rotary kernel):
    ``w.reshape(n, 2, r // n // 2, c).swapaxes(1, 2)``; this is the inverse, giving back the
    rotate-half layout of Hugging Face checkpoints. Shape [r, c] (or [r] for a bias).
    """
    r = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, r // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def apply_transform(t: torch.Tensor, tr: Transform) -> torch.Tensor:
    if tr.op == "unpermute_qk":
        return unpermute_qk(t, int(tr.args[0]))
    if tr.op == "cast":
        return t.to(TORCH_DTYPES[tr.args[0]])
    raise ValueError(f"unknown weight transform '{tr.op}'")


class WeightStore:
    """Opens each source file once and loads tensors from it on demand."""

    def __init__(self) -> None:
        self._headers: dict[tuple[str, str], Any] = {}

    def _header(self, fmt: str, file: str) -> Any:
        key = (fmt, file)
        if key not in self._headers:
            if fmt == "safetensors":
                from optimizer.formats.safetensors_io import SafetensorsFile
                self._headers[key] = SafetensorsFile(Path(file))
            elif fmt == "gguf":
                from optimizer.formats.gguf_reader import read_gguf
                self._headers[key] = read_gguf(Path(file))
            else:
                raise ValueError(f"unknown weight format '{fmt}'")
        return self._headers[key]

    def raw(self, ref: WeightRef) -> torch.Tensor:
        """The stored tensor before transforms (memory-mapped where the format allows)."""
        header = self._header(ref.fmt, ref.file)
        if ref.fmt == "gguf":
            from optimizer.formats.gguf_reader import load_gguf_tensor
            return load_gguf_tensor(ref.file, header.tensors[ref.key])
        return header.load(ref.key)

    def load(self, ref: WeightRef) -> torch.Tensor:
        t = self.raw(ref)
        for tr in ref.transforms:
            t = apply_transform(t, tr)
        if tuple(t.shape) != ref.shape or t.dtype != TORCH_DTYPES[ref.dtype]:
            raise ValueError(f"weight '{ref.name}' loaded as {t.dtype}{list(t.shape)}, "
                             f"expected {ref.dtype}{list(ref.shape)}")
        return t
