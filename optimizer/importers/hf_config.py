"""config.json (Hugging Face) -> `ModelConfig`, with every key checked.

Accepts both the transformers 4 layout (``rope_theta``, ``rope_scaling``) and the 5 layout
(``rope_parameters``). ``auto_map`` or ``trust_remote_code`` are refused: a model file
never makes us execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimizer.errors import InvalidInput
from optimizer.models.config import FAMILIES, ModelConfig

MISSING = object()


class _Reader:
    def __init__(self, d: dict[str, Any], path: Path) -> None:
        self.d, self.path = d, path

    def get(self, key: str, kind: str, default: Any = MISSING) -> Any:
        v = self.d.get(key, MISSING)
        if v is MISSING or (v is None and default is not MISSING):
            if default is MISSING:
                raise InvalidInput(self.path, f"missing required key '{key}'")
            return default
        ok = {"int": isinstance(v, int) and not isinstance(v, bool) and v > 0,
              "float": isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": isinstance(v, bool),
              "str": isinstance(v, str),
              "dict": isinstance(v, dict)}[kind]
        if not ok:
            expected = "a positive int" if kind == "int" else f"a {kind}"
            raise InvalidInput(self.path, f"key '{key}': expected {expected}, got {v!r}")
        return float(v) if kind == "float" else v


def _rope(r: _Reader) -> tuple[float, dict[str, Any] | None]:
    params = r.get("rope_parameters", "dict", None)
    if params is None:
        theta = r.get("rope_theta", "float", 10000.0)
        scaling = r.get("rope_scaling", "dict", None)
    else:
        theta = float(params.get("rope_theta", r.get("rope_theta", "float", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if not scaling:
        return theta, None
    scaling = dict(scaling)
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    if kind == "default":
        return theta, None
    need = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}.get(kind)
    if need is None:
        raise InvalidInput(r.path, f"unsupported rope scaling type '{kind}' "
                                   "(supported: default, linear, llama3)")
    for key in need:
        if not isinstance(scaling.get(key), (int, float)) or isinstance(scaling[key], bool):
            raise InvalidInput(r.path, f"rope scaling '{kind}' needs a number '{key}', "
                                       f"got {scaling.get(key)!r}")
    return theta, {"rope_type": kind, **{k: float(scaling[k]) for k in need}}


def _windows(r: _Reader, family: str, n_layers: int) -> tuple[int | None, ...]:
    window = r.get("sliding_window", "int", None)
    if family == "qwen2" and not r.get("use_sliding_window", "bool", False):
        window = None
    if window is None:
        return ()
    types = r.d.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        return tuple(window if t == "sliding_attention" else None for t in types)
    if family == "qwen2":
        first = r.get("max_window_layers", "int", n_layers)
        return tuple(window if i >= first else None for i in range(n_layers))
    return (window,) * n_layers


def _eos(r: _Reader) -> tuple[int, ...]:
    v = r.d.get("eos_token_id")
    if v is None:
        return ()
    items = v if isinstance(v, list) else [v]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise InvalidInput(r.path, f"key 'eos_token_id': expected an int or list of ints, "
                                   f"got {v!r}")
    return tuple(items)


def config_from_hf(d: dict[str, Any], path: Path) -> ModelConfig:
    for key in ("auto_map", "trust_remote_code"):
        if key in d:
            raise InvalidInput(path, f"'{key}' asks to run code shipped with the model; "
                                     "refused (model files never execute code)")
    r = _Reader(d, path)
    family = r.get("model_type", "str")
    if family not in FAMILIES:
        raise InvalidInput(path, f"unsupported model_type '{family}' "
                                 f"(supported: {', '.join(FAMILIES)})")
    act = r.get("hidden_act", "str", "silu")
    if act != "silu":
        raise InvalidInput(path, f"unsupported hidden_act '{act}' (supported: silu)")
    hidden, heads = r.get("hidden_size", "int"), r.get("num_attention_heads", "int")
    n_layers = r.get("num_hidden_layers", "int")
    theta, scaling = _rope(r)
    llama_bias = family == "llama" and r.get("attention_bias", "bool", False)
    try:
        return ModelConfig(
            family=family,
            vocab_size=r.get("vocab_size", "int"),
            hidden_size=hidden,
            intermediate_size=r.get("intermediate_size", "int"),
            n_layers=n_layers,
            n_heads=heads,
            n_kv_heads=r.get("num_key_value_heads", "int", heads),
            head_dim=r.get("head_dim", "int", hidden // heads),
            rms_eps=r.get("rms_norm_eps", "float", 1e-6),
            rope_theta=theta,
            max_position_embeddings=r.get("max_position_embeddings", "int", 4096),
            tie_word_embeddings=r.get("tie_word_embeddings", "bool", False),
            qkv_bias=family == "qwen2" or llama_bias,
            o_bias=llama_bias,
            mlp_bias=family == "llama" and r.get("mlp_bias", "bool", False),
            rope_scaling=scaling,
            sliding_windows=_windows(r, family, n_layers),
            bos_token_id=d.get("bos_token_id") if isinstance(d.get("bos_token_id"), int) else None,
            eos_token_ids=_eos(r),
        )
    except ValueError as e:
        raise InvalidInput(path, str(e)) from None
