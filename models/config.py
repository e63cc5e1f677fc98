"""`ModelConfig`: the architecture facts of a Llama-family decoder, validated on creation.

Llama 1/2/3, Mistral, Qwen2 and their look-alikes (SmolLM2, TinyLlama) are all this one
architecture with a few switches: GQA (``n_kv_heads``), q/k/v bias (Qwen2), tied
embeddings, RoPE scaling, per-layer sliding windows (Mistral, Qwen2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FAMILIES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3", "freq_factors")


@dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    rope_scaling: dict[str, Any] | None = None
    sliding_windows: tuple[int | None, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"{key}: expected {expected}, got {getattr(self, key)!r}")

        need(self.family in FAMILIES, "family", f"one of {FAMILIES}")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "n_layers", "n_heads",
                    "n_kv_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, key,
                 "a positive int")
        need(self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
             f"a divisor of n_heads={self.n_heads}")
        need(self.head_dim % 2 == 0, "head_dim", "an even number")
        need(isinstance(self.rms_eps, float) and 0 < self.rms_eps < 1, "rms_eps",
             "a float in (0, 1)")
        need(isinstance(self.rope_theta, float) and self.rope_theta > 0, "rope_theta",
             "a positive float")
        if self.rope_scaling is not None:
            need(self.rope_scaling.get("rope_type") in ROPE_TYPES, "rope_scaling",
                 f"a rope_type in {ROPE_TYPES}")
        if self.sliding_windows:
            need(len(self.sliding_windows) == self.n_layers, "sliding_windows",
                 f"{self.n_layers} entries")

    def window(self, layer: int) -> int | None:
        return self.sliding_windows[layer] if self.sliding_windows else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sliding_windows"] = list(self.sliding_windows)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        d["sliding_windows"] = tuple(d.get("sliding_windows", ()))
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return ModelConfig(**d)
