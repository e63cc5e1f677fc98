"""`open_runtime(source)`: an artifact directory, or a model source imported on the fly,
as a `Runtime`."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from optimizer.runtime import Runtime


@contextlib.contextmanager
def open_runtime(source: str | Path, device: str = "cpu") -> Iterator[Runtime]:
    """Yield a `Runtime` for ``source``: an artifact directory (it has manifest.json) is
    loaded as is; anything else (HF directory, .safetensors, .gguf, a built-in name) is
    imported, saved to a temporary directory (removed on exit) and loaded from there."""
    from optimizer import runtime
    from optimizer.artifact import save
    from optimizer.importers import import_model

    path = Path(source)
    if (path / "manifest.json").is_file():
        yield runtime.load(path, device=device)
        return
    graph = import_model(source)
    with tempfile.TemporaryDirectory(prefix="optimize-eval-") as tmp:
        art = Path(tmp) / "artifact"
        save(graph, art)
        yield runtime.load(art, device=device)
