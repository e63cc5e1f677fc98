"""Running an artifact: ``rt = load("out/", device="cpu"); rt.logits(ids); rt.generate(p)``."""

from __future__ import annotations

from pathlib import Path

import torch

from optimizer.errors import InvalidInput

from optimizer.runtime.generate import Runtime


def load(path: str | Path, device: str = "cpu", engine: str = "auto") -> Runtime:
    """Load an artifact directory for execution on ``device``.

    ``"cpu"`` is the exact reference interpreter (float32). ``"cuda"`` runs an artifact
    built with ``--target cuda`` on our GPU kernels (`CudaRuntime`: bf16, preallocated KV
    cache, CUDA-graph decode, batched generation); any other artifact, or
    ``engine="reference"``, runs the reference interpreter with its tensors on the GPU
    (correct, not fast).
    """
    from optimizer.artifact import load_artifact
    from optimizer.ir.weights import WeightStore
    from optimizer.interpreter import Interpreter

    if device not in ("cpu", "cuda"):
        raise InvalidInput(None, f"unknown device '{device}' (cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(None, "device 'cuda' was asked for but no CUDA GPU is available")
    if engine not in ("auto", "reference"):
        raise InvalidInput(None, f"unknown engine '{engine}' (auto or reference)")
    graph, manifest = load_artifact(path)
    if device == "cuda" and engine == "auto" and manifest.get("target") == "cuda":
        from optimizer.runtime.cuda_engine import CudaEngine
        from optimizer.runtime.cuda_runtime import CudaRuntime
        return CudaRuntime(graph, CudaEngine(graph), {**manifest, "path": str(path)})
    store = WeightStore()
    weights = {name: store.load(ref) for name, ref in graph.weights.items()}
    return Runtime(graph, Interpreter(graph, weights, device), {**manifest, "path": str(path)})


__all__ = ["load", "Runtime"]
