"""The artifact: a directory another process (or tool) can run.

    manifest.json      written last: format/toolchain versions, model facts, sources
                       (sha256, size), the pass pipeline with options, sha256/size per file
    graph.json         the IR (weights refer to model.safetensors by name)
    model.safetensors  every weight, transforms applied
    tokenizer.json     when the model has a tokenizer

Everything is written into a temporary directory beside the target, fsynced, and renamed
into place, so an interrupted run leaves no partial artifact. The same graph always gives
byte-identical files (sorted keys, no timestamps).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from optimizer import __version__
from optimizer.atomic_dir import json_bytes, replace_dir, write_bytes
from optimizer.errors import InvalidInput
from optimizer.formats.safetensors_io import write_safetensors
from optimizer.ir import Graph, WeightRef, verify
from optimizer.ir.serialize import graph_from_json, graph_to_json
from optimizer.ir.weights import TORCH_DTYPES, WeightStore

FORMAT = "optimizer-artifact"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_target(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                               or (out / "manifest.json").is_file())):
        raise InvalidInput(out, "exists and is not an artifact directory; refusing to overwrite")


def _materialise(store: WeightStore, ref: WeightRef) -> torch.Tensor:
    t = store.load(ref)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InvalidInput(ref.file, f"tensor '{ref.key}' has {bad} NaN/Inf values")
    return t.contiguous()


def save(graph: Graph, out: str | Path,
         progress: Callable[[str], None] | None = None) -> Path:
    """Write ``graph`` as an artifact directory at ``out`` (replacing an older artifact)."""
    out = Path(out)
    verify(graph)
    _check_target(out)
    return replace_dir(out, lambda tmp: _write_into(graph, tmp, progress))


def _write_into(graph: Graph, tmp: Path, progress: Callable[[str], None] | None) -> None:
    store = WeightStore()
    names = sorted(graph.weights)
    done = [0]

    def produce(name: str) -> torch.Tensor:
        done[0] += 1
        if progress and (done[0] % 50 == 0 or done[0] == len(names)):
            progress(f"writing weights {done[0]}/{len(names)}")
        return _materialise(store, graph.weights[name])

    entries = [(n, TORCH_DTYPES[graph.weights[n].dtype], graph.weights[n].shape) for n in names]
    write_safetensors(tmp / WEIGHTS_FILE, entries, produce)
    stored = {n: WeightRef(n, w.dtype, w.shape, WEIGHTS_FILE, n, "safetensors")
              for n, w in graph.weights.items()}
    write_bytes(tmp / "graph.json", json_bytes(graph_to_json(graph.replace(weights=stored))))
    if graph.meta.get("tokenizer"):
        write_bytes(tmp / "tokenizer.json", graph.meta["tokenizer"].encode())
    files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(tmp.iterdir())}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toolchain": {"name": "optimizer", "version": __version__},
        "model": {**graph.meta.get("model", {}), "n_params": graph.n_params},
        "sources": [{"path": Path(p).name, "sha256": sha256_file(Path(p)),
                     "size": Path(p).stat().st_size} for p in graph.meta.get("sources", [])],
        "target": graph.meta.get("target", "reference"),
        "pipeline": list(graph.meta.get("pipeline", [])),
        "quantization": list(graph.meta.get("quantization", [])),
        "files": files,
    }
    write_bytes(tmp / "manifest.json", json_bytes(manifest))


def load_artifact(path: str | Path) -> tuple[Graph, dict[str, Any]]:
    """Read an artifact's graph (tokenizer JSON in ``meta['tokenizer']``) and manifest,
    checking the format and that every listed file is present with its recorded size."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise InvalidInput(path, "not an artifact directory (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(mpath, f"not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise InvalidInput(mpath, f"unsupported artifact format {manifest.get('format')!r} "
                                  f"version {manifest.get('format_version')!r}")
    for name, rec in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != rec["size"]:
            raise InvalidInput(f, f"missing or not {rec['size']} bytes as the manifest says")
    graph = graph_from_json(json.loads((path / "graph.json").read_text()), path)
    tok = path / "tokenizer.json"
    if tok.is_file():
        graph = graph.with_meta(tokenizer=tok.read_text())
    verify(graph)
    return graph, manifest
