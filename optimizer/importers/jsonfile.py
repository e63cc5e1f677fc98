"""Strict JSON reading for model files: one clear error per problem, duplicate keys refused
(Python's json keeps the last silently)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optimizer.errors import InvalidInput

MAX_JSON_BYTES = 64 << 20


def _no_duplicates(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise InvalidInput(path, f"duplicate key '{k}'")
            out[k] = v
        return out
    return hook


def read_json_object(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(path, "file not found")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise InvalidInput(path, f"{size} bytes is too large for a JSON config")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates(path))
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, InvalidInput):
            raise
        raise InvalidInput(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InvalidInput(path, f"expected a JSON object, got {type(data).__name__}")
    return data
