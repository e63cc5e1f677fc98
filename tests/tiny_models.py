"""Tiny randomly initialised Hugging Face models, saved with `transformers` (the reference)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny(kind: str, folder: Path, seed: int = 0, **overrides) -> torch.nn.Module:
    """Build a small randomly initialised HF model of family ``kind``, save it to ``folder``
    (safetensors) and return it in eval mode, float32."""
    import transformers as tf

    base = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5)
    base.update(overrides)
    cfg_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                          "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                          "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[kind]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**base)).eval()
    with torch.no_grad():   # norms start at 1.0: make them random so they are tested too
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(folder, max_shard_size=base.get("max_shard_size", "2GB"))
    return model


def add_tokenizer(folder: Path, vocab_size: int, corpus: Path) -> None:
    """Write a word-level tokenizer.json (the ``vocab_size - 1`` most frequent words of
    ``corpus`` plus [UNK]) into ``folder``, so tiny models can take text calibration."""
    import collections
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words: collections.Counter[str] = collections.Counter()
    for line in corpus.read_text().splitlines():
        text = json.loads(line)["text"] if corpus.suffix == ".jsonl" else line
        words.update(text.lower().split())
    vocab = {"[UNK]": 0}
    for word, _ in words.most_common(vocab_size - 1):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
