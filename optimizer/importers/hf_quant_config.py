"""config.json's ``quantization_config`` -> `QuantConfig`, with every key we rely on checked.

Supported: ``quant_method`` "gptq" (checkpoint format "gptq", i.e. v1; 2/3/4/8 bits; int32
packing; no per-module ``dynamic`` overrides; lm_head not quantized) and "awq" (version
"gemm", 4 bits, zero points). Everything else is refused with the key and value named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizer.errors import InvalidInput

METHODS = ("gptq", "awq")
GPTQ_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class QuantConfig:
    method: str          # "gptq" | "awq"
    bits: int
    group_size: int      # 0: one group per output channel (config's -1)
    sym: bool
    desc_act: bool       # g_idx may group input channels in any order (GPTQ act-order)


class _Keys:
    def __init__(self, d: dict[str, Any], path: Path, method: str) -> None:
        self.d, self.path, self.method = d, path, method

    def fail(self, problem: str) -> InvalidInput:
        return InvalidInput(self.path, f"quantization_config ({self.method}): {problem}")

    def get(self, keys: tuple[str, ...], kind: type, default: Any = None) -> Any:
        """The first of ``keys`` present (aliases), checked to be of ``kind``."""
        for key in keys:
            if self.d.get(key) is not None:
                v = self.d[key]
                if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                    raise self.fail(f"key '{key}': expected {kind.__name__}, got {v!r}")
                return v
        if default is None:
            raise self.fail(f"missing key '{keys[0]}'")
        return default


def _group_size(r: _Keys, keys: tuple[str, ...]) -> int:
    g = r.get(keys, int)
    if g != -1 and g <= 0:
        raise r.fail(f"key '{keys[0]}': expected -1 or a positive int, got {g}")
    return max(g, 0)


def _gptq(r: _Keys) -> QuantConfig:
    bits = r.get(("bits",), int)
    if bits not in GPTQ_BITS:
        raise r.fail(f"bits {bits} is not supported (supported: {GPTQ_BITS})")
    for key in ("checkpoint_format", "format"):
        fmt = str(r.d.get(key) or "gptq").lower()
        if fmt != "gptq":
            raise r.fail(f"{key} '{r.d[key]}' is not supported (supported: gptq, the v1 "
                         "layout)")
    if str(r.d.get("pack_dtype") or "int32") != "int32":
        raise r.fail(f"pack_dtype '{r.d['pack_dtype']}' is not supported (supported: int32)")
    if r.d.get("dynamic"):
        raise r.fail("per-module 'dynamic' overrides are not supported")
    if r.d.get("lm_head"):
        raise r.fail("a quantized lm_head ('lm_head': true) is not supported")
    return QuantConfig("gptq", bits, _group_size(r, ("group_size",)),
                       r.get(("sym",), bool, True), r.get(("desc_act",), bool, False))


def _awq(r: _Keys) -> QuantConfig:
    bits = r.get(("bits", "w_bit"), int)
    if bits != 4:
        raise r.fail(f"bits {bits} is not supported (AWQ GEMM is 4-bit)")
    version = str(r.d.get("version") or "gemm").lower()
    if version != "gemm":
        raise r.fail(f"version '{r.d['version']}' is not supported (supported: gemm)")
    if not r.get(("zero_point",), bool, True):
        raise r.fail("zero_point false (symmetric AWQ) is not supported")
    group = _group_size(r, ("group_size", "q_group_size"))
    if group == 0:
        raise r.fail("group_size -1 is not supported by AWQ GEMM")
    return QuantConfig("awq", bits, group, False, False)


def quant_config_from_hf(d: dict[str, Any], path: Path) -> QuantConfig | None:
    """The checkpoint's quantization, or None when config.json has no quantization_config."""
    q = d.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise InvalidInput(path, f"key 'quantization_config': expected an object, got {q!r}")
    method = q.get("quant_method")
    if method not in METHODS:
        raise InvalidInput(path, f"quantization_config: unsupported quant_method {method!r} "
                                 f"(supported: {', '.join(METHODS)})")
    r = _Keys(q, path, method)
    return _gptq(r) if method == "gptq" else _awq(r)
