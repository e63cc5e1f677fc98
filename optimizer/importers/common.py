"""Checks every importer shares: the weights a config implies are all there, shaped right."""

from __future__ import annotations

from optimizer.errors import InvalidInput
from optimizer.ir import WeightRef
from optimizer.models.config import ModelConfig
from optimizer.models.llama import expected_weights


def check_weights(cfg: ModelConfig, refs: dict[str, WeightRef], config_file: str,
                  source_names: dict[str, str] | None = None) -> None:
    """Raise `InvalidInput` naming the file for a missing, extra or mis-shaped weight.

    ``source_names`` maps our weight names to the names used in the file (GGUF), so the
    message names what the user can find in their file.
    """
    show = (source_names or {}).get
    expected = expected_weights(cfg)
    for name, shape in expected.items():
        if name not in refs:
            raise InvalidInput(config_file if not refs else next(iter(refs.values())).file,
                               f"tensor '{show(name) or name}' is missing "
                               f"(a {cfg.family} model with this config needs it)")
        ref = refs[name]
        if ref.shape != shape:
            raise InvalidInput(ref.file, f"tensor '{ref.key}' has shape {list(ref.shape)} but "
                                         f"{config_file} implies {list(shape)}")
    for name, ref in refs.items():
        if name not in expected:
            raise InvalidInput(ref.file, f"unexpected tensor '{ref.key}' (not part of a "
                                         f"{cfg.family} model with this config)")
