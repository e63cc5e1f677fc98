"""Running an artifact: ``rt = load("out/", device="cpu"); rt.logits(ids); rt.generate(p)``."""

from __future__ import annotations

from pathlib import Path

import torch

from optimizer.errors import InvalidInput

from optimizer.runtime.generate import Runtime


def load(path: str | Path, device: str = "cpu") -> Runtime:
    """Load an artifact directory for execution on ``device``.

    ``"cpu"`` is the exact reference. ``"cuda"`` runs the same reference interpreter with
    its tensors on the GPU (plain PyTorch ops, no fused kernels or CUDA graphs yet): correct,
    not yet fast.
    """
    from optimizer.artifact import load_artifact
    from optimizer.ir.weights import WeightStore
    from optimizer.interpreter import Interpreter

    if device not in ("cpu", "cuda"):
        raise InvalidInput(None, f"unknown device '{device}' (cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(None, "device 'cuda' was asked for but no CUDA GPU is available")
    graph, manifest = load_artifact(path)
    store = WeightStore()
    weights = {name: store.load(ref) for name, ref in graph.weights.items()}
    return Runtime(graph, Interpreter(graph, weights, device), {**manifest, "path": str(path)})


__all__ = ["load", "Runtime"]
