"""Running an artifact: ``rt = load("out/", device="cpu"); rt.logits(ids); rt.generate(p)``."""

from __future__ import annotations

from pathlib import Path

from optimizer.runtime.generate import Runtime


def load(path: str | Path, device: str = "cpu") -> Runtime:
    """Load an artifact directory for execution on ``device``.

    Only ``"cpu"`` (the exact reference executor) exists so far; other devices raise.
    """
    from optimizer.artifact import load_artifact
    from optimizer.ir.weights import WeightStore
    from optimizer.interpreter import Interpreter

    if device != "cpu":
        raise NotImplementedError(f"device '{device}': only the CPU reference runtime exists "
                                  "so far (the CUDA backend is tracked separately)")
    graph, manifest = load_artifact(path)
    store = WeightStore()
    weights = {name: store.load(ref) for name, ref in graph.weights.items()}
    return Runtime(graph, Interpreter(graph, weights), {**manifest, "path": str(path)})


__all__ = ["load", "Runtime"]
