"""`ModelConfig` -> a Hugging Face config.json (the inverse of importers/hf_config.py).

Written in the transformers 4 layout (``rope_theta``/``rope_scaling``), which transformers
5 reads too; sliding windows as ``sliding_window`` plus per-layer ``layer_types``.
Facts the family's HF config cannot express raise ValueError naming them.
"""

from __future__ import annotations

from typing import Any

from optimizer.models.config import ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}


def _biases(cfg: ModelConfig) -> dict[str, Any]:
    """The family's bias switches; ValueError where the family has no switch for ours."""
    if cfg.family == "llama":
        if cfg.qkv_bias != cfg.o_bias:
            raise ValueError("llama's attention_bias covers q/k/v and o together; this model "
                             f"has qkv_bias={cfg.qkv_bias}, o_bias={cfg.o_bias}")
        return {"attention_bias": cfg.qkv_bias, "mlp_bias": cfg.mlp_bias}
    want = cfg.family == "qwen2"                    # qwen2: q/k/v bias always, nothing else
    if (cfg.qkv_bias, cfg.o_bias, cfg.mlp_bias) != (want, False, False):
        raise ValueError(f"a {cfg.family} config cannot express qkv_bias={cfg.qkv_bias}, "
                         f"o_bias={cfg.o_bias}, mlp_bias={cfg.mlp_bias}")
    return {}


def _windows(cfg: ModelConfig) -> dict[str, Any]:
    windows = {w for w in cfg.sliding_windows if w is not None}
    if not windows:
        return {"sliding_window": None} | (
            {"use_sliding_window": False} if cfg.family == "qwen2" else {})
    if len(windows) > 1:
        raise ValueError(f"layers use different sliding windows {sorted(windows)}")
    if cfg.family == "llama":
        raise ValueError("a llama config has no sliding window")
    types = ["sliding_attention" if w else "full_attention" for w in cfg.sliding_windows]
    out: dict[str, Any] = {"sliding_window": windows.pop(), "layer_types": types}
    if cfg.family == "qwen2":
        out["use_sliding_window"] = True
    return out


def _rope(cfg: ModelConfig) -> dict[str, Any]:
    scaling = cfg.rope_scaling
    if scaling and scaling.get("rope_type") not in ("linear", "llama3"):
        raise ValueError(f"rope scaling '{scaling.get('rope_type')}' has no HF config form")
    return {"rope_theta": cfg.rope_theta, "rope_scaling": dict(scaling) if scaling else None}


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json contents for ``cfg`` (weights declared float16)."""
    eos = list(cfg.eos_token_ids)
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float16",
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
    }
    return {**out, **_biases(cfg), **_windows(cfg), **_rope(cfg)}
