"""Runtime logits vs `transformers` (CPU, float32) on tiny random models of every family
we claim. Tolerance: 1e-4 max abs on logits."""

from __future__ import annotations

import pytest
import torch

import optimizer
from tiny_models import save_tiny

TOL = 1e-4

CASES = {
    "llama-mha": ("llama", dict(num_key_value_heads=4)),
    "llama-gqa": ("llama", {}),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "llama-bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama3-rope": ("llama", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama-linear-rope": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama-head-dim": ("llama", dict(head_dim=32)),
    "mistral-window": ("mistral", dict(sliding_window=5)),
    "qwen2-bias-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-window": ("qwen2", dict(use_sliding_window=True, sliding_window=4,
                                   max_window_layers=1)),
}


def _reference(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids[None]).logits[0].float()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case: str, tmp_path) -> None:
    kind, overrides = CASES[case]
    model = save_tiny(kind, tmp_path / "src", **overrides)
    graph = optimizer.PassManager(["dce"]).run(optimizer.import_model(tmp_path / "src"))
    optimizer.save(graph, tmp_path / "art")
    rt = optimizer.runtime.load(tmp_path / "art")
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(1))
    ref = _reference(model, ids)
    ours = rt.logits(ids.tolist())
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() < TOL


def test_kv_cache_decode_matches_full_sequence(tmp_path) -> None:
    """Prefill 5 tokens, then decode one at a time: each step's logits equal the
    transformers logits of the whole sequence at that position."""
    model = save_tiny("mistral", tmp_path / "src", sliding_window=4)
    optimizer.save(optimizer.import_model(tmp_path / "src"), tmp_path / "art")
    rt = optimizer.runtime.load(tmp_path / "art")
    ids = torch.randint(0, 96, (11,), generator=torch.Generator().manual_seed(2))
    ref = _reference(model, ids)
    ex = rt.executor
    ex.reset()
    got = [ex.step(ids[:5], torch.arange(5))]
    for i in range(5, 11):
        got.append(ex.step(ids[i:i + 1], torch.tensor([i])))
    assert (torch.cat(got) - ref).abs().max().item() < TOL


def test_sharded_checkpoint(tmp_path) -> None:
    model = save_tiny("llama", tmp_path / "src", max_shard_size="40KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    graph = optimizer.import_model(tmp_path / "src")
    assert len({w.file for w in graph.weights.values()}) > 1
    optimizer.save(graph, tmp_path / "art")
    ids = torch.arange(1, 9)
    diff = optimizer.runtime.load(tmp_path / "art").logits(ids) - _reference(model, ids)
    assert diff.abs().max().item() < TOL


def test_bare_safetensors_with_config_option(tmp_path) -> None:
    model = save_tiny("qwen2", tmp_path / "src")
    bare = tmp_path / "elsewhere" / "weights.safetensors"
    bare.parent.mkdir()
    (tmp_path / "src" / "model.safetensors").rename(bare)
    graph = optimizer.import_model(bare, config=tmp_path / "src" / "config.json")
    optimizer.save(graph, tmp_path / "art")
    ids = torch.arange(3, 10)
    diff = optimizer.runtime.load(tmp_path / "art").logits(ids) - _reference(model, ids)
    assert diff.abs().max().item() < TOL


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.05), ("float16", 5e-3)])
def test_half_precision_artifact(tmp_path, dtype: str, tol: float) -> None:
    """Weights stored in half precision: compare with transformers running the same
    rounded weights (float32 activations)."""
    model = save_tiny("llama", tmp_path / "src")
    graph = optimizer.PassManager([f"cast-weights:dtype={dtype}"]).run(
        optimizer.import_model(tmp_path / "src"))
    optimizer.save(graph, tmp_path / "art")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(getattr(torch, dtype)).float())
    ids = torch.arange(2, 12)
    diff = optimizer.runtime.load(tmp_path / "art").logits(ids) - _reference(model, ids)
    assert diff.abs().max().item() < TOL
