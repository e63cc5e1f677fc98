"""`CudaRuntime`: logits and batched generation on the CUDA engine.

Generation with B prompts: the cache is sized for the longest prompt plus
``max_new_tokens``; each prompt is prefilled into its own cache slot; then every decode step
advances all B sequences at once, each at its own position, by one replay of the captured
step. Tokens come back to the host through a pinned buffer without stopping the GPU: the
host looks at step s while the GPU already runs step s + 1, so stopping at an end-of-sequence
token costs at most one wasted step. Sampling (temperature > 0) runs on the GPU
(kernels/sampling/torch_sampling.py).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from optimizer.ir import Graph
from optimizer.kernels.sampling.torch_sampling import sample_tokens
from optimizer.runtime.cuda_engine import CudaEngine
from optimizer.runtime.generate import Runtime


class CudaRuntime(Runtime):
    def __init__(self, graph: Graph, engine: CudaEngine, manifest: dict[str, Any]) -> None:
        super().__init__(graph, engine, manifest)
        self.engine = engine
        self.last_stats: dict[str, float] = {}

    def logits(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Logits [len(ids), vocab] float32 (a CPU tensor) of a fresh sequence."""
        ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        vocab = self.model.get("vocab_size")
        if ids.numel() == 0 or (vocab and (int(ids.min()) < 0 or int(ids.max()) >= vocab)):
            raise ValueError(f"token ids must be a non-empty sequence in [0, {vocab})")
        return self.engine.prefill(ids).float().cpu()

    def generate(self, prompt: str | list[str], max_new_tokens: int = 20,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 stream: Callable[[str], None] | None = None) -> str | list[str]:
        """As `Runtime.generate`; a list of prompts runs as one batch. ``stream`` is called
        for a single prompt only."""
        prompts = prompt if isinstance(prompt, list) else [prompt]
        ids = [self.tokenizer.encode(p).ids for p in prompts]
        if any(not i for i in ids):
            raise ValueError("a prompt encodes to no tokens")
        eos = set(self.model.get("eos_token_ids") or [])
        texts: list[str] = [""] * len(ids)
        shown = [""]

        def on_token(b: int, new: list[int]) -> None:
            if stream and not isinstance(prompt, list):
                text = self.tokenizer.decode(new)
                if not text.endswith("\ufffd"):     # wait for whole UTF-8 characters
                    stream(text[len(shown[0]):])
                    shown[0] = text

        out = self.generate_ids(ids, max_new_tokens, temperature, top_p, seed, eos, on_token)
        for b, new in enumerate(out):
            texts[b] = self.tokenizer.decode(new)
        if stream and not isinstance(prompt, list) and len(texts[0]) > len(shown[0]):
            stream(texts[0][len(shown[0]):])
        return texts if isinstance(prompt, list) else texts[0]

    @torch.inference_mode()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                     eos: set[int] | frozenset = frozenset(),
                     on_token: Callable[[int, list[int]], None] | None = None
                     ) -> list[list[int]]:
        """New token ids for each prompt (token ids), stopping a sequence at ``eos`` or
        after ``max_new_tokens``. Timings land in ``self.last_stats``."""
        eng = self.engine
        b = len(prompts)
        dev = eng.device
        eng.ensure_cache(b, max(len(p) for p in prompts) + max_new_tokens)
        cap = eng.decoder(b)             # before the prefills (its warm-up writes row 0)
        gen = torch.Generator(device=dev).manual_seed(seed)
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        last = torch.empty(b, eng.vocab, dtype=eng.dtype, device=dev)
        for i, p in enumerate(prompts):
            last[i] = eng.prefill(torch.tensor(p), slot=i)[-1]
        cap.tokens.copy_(sample_tokens(last, temperature, top_p, gen))
        cap.set_positions(torch.tensor([len(p) for p in prompts], device=dev))
        sync()
        t1 = time.perf_counter()
        pinned = dev.type == "cuda"
        host = torch.empty(max_new_tokens, b, dtype=torch.int64, pin_memory=pinned)
        events: list[Any] = []
        new: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        seen = 0

        def take(s: int) -> None:
            for i in range(b):
                if done[i]:
                    continue
                tok = int(host[s, i])
                if tok in eos:
                    done[i] = True
                    continue
                new[i].append(tok)
                if len(new[i]) >= max_new_tokens:
                    done[i] = True
                if on_token:
                    on_token(i, new[i])

        ready = (lambda s: events[s].query()) if pinned else (lambda s: True)
        enqueued = 0
        for s in range(max_new_tokens):
            host[s].copy_(cap.tokens, non_blocking=pinned)
            if pinned:
                events.append(torch.cuda.Event())
                events[-1].record()
            enqueued = s + 1
            if s + 1 < max_new_tokens:
                eng.step(cap)
                if temperature > 0:
                    cap.tokens.copy_(sample_tokens(cap.logits, temperature, top_p, gen))
            while seen < enqueued and ready(seen):
                take(seen)
                seen += 1
            if all(done):
                break
        sync()
        while seen < enqueued and not all(done):
            take(seen)
            seen += 1
        t2 = time.perf_counter()
        replays = enqueued - 1              # the first new token came from the prefill
        self.last_stats = {"prefill_s": t1 - t0, "decode_s": t2 - t1, "batch": b,
                           "decode_steps": replays,
                           "decode_tok_s": b * replays / max(t2 - t1, 1e-9)}
        return new
