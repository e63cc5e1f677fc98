"""GGUF files (llama architecture): config from metadata, tensors dequantized on load,
tokenizer from the metadata.

llama.cpp's converter permutes the rows of Q and K for its rotary kernel; we record the
inverse (`unpermute_qk`) on those weights, giving back Hugging Face's layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from optimizer.errors import InvalidInput
from optimizer.formats.gguf_reader import SUPPORTED_TYPES, load_gguf_tensor, read_gguf
from optimizer.formats.gguf_tokenizer import special_token_ids, tokenizer_from_gguf
from optimizer.importers.common import check_weights
from optimizer.ir import Graph, Transform, WeightRef
from optimizer.models.config import ModelConfig
from optimizer.models.llama import build_graph

GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}
BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _hf_name(name: str) -> str | None:
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    m = BLOCK_RE.fullmatch(name)
    if m and m.group(2) in BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def _meta(meta: dict[str, Any], path: Path, key: str, kind: type, default: Any = None) -> Any:
    v = meta.get(key, default)
    if v is None:
        raise InvalidInput(path, f"metadata key '{key}' is missing")
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool) != (kind is bool):
        raise InvalidInput(path, f"metadata key '{key}': expected {kind.__name__}, got {v!r}")
    return v


def _config(meta: dict[str, Any], path: Path, tensors: dict[str, Any]) -> ModelConfig:
    a = "llama."
    hidden = _meta(meta, path, a + "embedding_length", int)
    heads = _meta(meta, path, a + "attention.head_count", int)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get(a + "vocab_size") or (len(tokens) if tokens else None)
    if vocab is None and "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].shape[0]
    scaling = None
    kind = meta.get(a + "rope.scaling.type", "none")
    if kind == "linear":
        scaling = {"rope_type": "linear",
                   "factor": _meta(meta, path, a + "rope.scaling.factor", float)}
    elif kind not in ("none", None):
        raise InvalidInput(path, f"unsupported rope scaling type '{kind}'")
    if "rope_freqs.weight" in tensors:
        factors = load_gguf_tensor(path, tensors["rope_freqs.weight"]).tolist()
        scaling = {"rope_type": "freq_factors", "factors": tuple(factors)}
    special = special_token_ids(meta)
    eos = special.get("eos")
    try:
        return ModelConfig(
            family="llama",
            vocab_size=int(vocab) if vocab else 0,
            hidden_size=hidden,
            intermediate_size=_meta(meta, path, a + "feed_forward_length", int),
            n_layers=_meta(meta, path, a + "block_count", int),
            n_heads=heads,
            n_kv_heads=_meta(meta, path, a + "attention.head_count_kv", int, heads),
            head_dim=_meta(meta, path, a + "attention.key_length", int,
                           hidden // heads if heads else 0),
            rms_eps=_meta(meta, path, a + "attention.layer_norm_rms_epsilon", float),
            rope_theta=_meta(meta, path, a + "rope.freq_base", float, 10000.0),
            max_position_embeddings=_meta(meta, path, a + "context_length", int, 4096),
            tie_word_embeddings="output.weight" not in tensors,
            qkv_bias="blk.0.attn_q.bias" in tensors,
            rope_scaling=scaling,
            bos_token_id=special.get("bos"),
            eos_token_ids=(eos,) if eos is not None else (),
        )
    except ValueError as e:
        raise InvalidInput(path, f"metadata: {e}") from None


def import_gguf(path: Path) -> Graph:
    f = read_gguf(path)
    arch = f.metadata.get("general.architecture")
    if arch != "llama":
        raise InvalidInput(path, f"unsupported GGUF architecture {arch!r} (supported: llama)")
    cfg = _config(f.metadata, path, f.tensors)
    refs: dict[str, WeightRef] = {}
    source_names: dict[str, str] = {}
    for name, info in f.tensors.items():
        if name == "rope_freqs.weight":
            continue
        hf = _hf_name(name)
        if hf is None:
            raise InvalidInput(path, f"unexpected tensor '{name}' for a llama model")
        if info.type_name not in SUPPORTED_TYPES:
            raise InvalidInput(path, f"tensor '{name}' has type {info.type_name}; supported: "
                                     f"{', '.join(sorted(SUPPORTED_TYPES))}")
        transforms: tuple[Transform, ...] = ()
        if ".attn_q." in name:
            transforms = (Transform("unpermute_qk", (cfg.n_heads,)),)
        elif ".attn_k." in name:
            transforms = (Transform("unpermute_qk", (cfg.n_kv_heads,)),)
        refs[hf] = WeightRef(hf, "float32", info.shape, str(path), name, "gguf", transforms)
        source_names[hf] = name
    check_weights(cfg, refs, str(path), source_names)
    tokenizer = tokenizer_from_gguf(f.metadata, path).to_str() if (
        "tokenizer.ggml.model" in f.metadata) else None
    return build_graph(cfg, refs, {"sources": [str(path)], "tokenizer": tokenizer})
