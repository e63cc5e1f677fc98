"""`Runtime`: logits and text generation over an executor (prefill, then one token a step)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from optimizer.errors import InvalidInput
from optimizer.ir import Graph
from optimizer.kernels.sampling.reference import sample


class Runtime:
    def __init__(self, graph: Graph, executor: Any, manifest: dict[str, Any]) -> None:
        self.graph = graph
        self.executor = executor
        self.manifest = manifest
        self.model = dict(graph.meta.get("model", {}))
        self._tokenizer = None

    @property
    def tokenizer(self):  # tokenizers.Tokenizer
        if self._tokenizer is None:
            text = self.graph.meta.get("tokenizer")
            if not text:
                raise InvalidInput(self.manifest.get("path"), "this artifact has no tokenizer; "
                                   "text generation needs one (logits() takes token ids)")
            from tokenizers import Tokenizer
            self._tokenizer = Tokenizer.from_str(text)
        return self._tokenizer

    def logits(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Logits [len(ids), vocab] float32 (a CPU tensor) of a fresh sequence (cache reset)."""
        ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        vocab = self.model.get("vocab_size")
        if ids.numel() == 0 or (vocab and (int(ids.min()) < 0 or int(ids.max()) >= vocab)):
            raise ValueError(f"token ids must be a non-empty sequence in [0, {vocab})")
        self.executor.reset()
        return self.executor.step(ids, torch.arange(ids.numel())).cpu()

    def generate(self, prompt: str | list[str], max_new_tokens: int = 20,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 stream: Callable[[str], None] | None = None) -> str | list[str]:
        """Continue ``prompt`` (or each of a list of prompts) by up to ``max_new_tokens``
        tokens, stopping at an end-of-sequence token. Greedy when ``temperature`` is 0.
        ``stream`` receives the text as it is produced. Returns only the new text."""
        if isinstance(prompt, list):
            return [self._generate_one(p, max_new_tokens, temperature, top_p, seed, stream)
                    for p in prompt]
        return self._generate_one(prompt, max_new_tokens, temperature, top_p, seed, stream)

    def _generate_one(self, prompt: str, max_new_tokens: int, temperature: float,
                      top_p: float, seed: int,
                      stream: Callable[[str], None] | None) -> str:
        ids = self.tokenizer.encode(prompt).ids
        if not ids:
            raise ValueError("the prompt encodes to no tokens")
        eos = set(self.model.get("eos_token_ids") or [])
        gen = torch.Generator().manual_seed(seed)
        self.executor.reset()
        logits = self.executor.step(torch.tensor(ids), torch.arange(len(ids)))[-1]
        new: list[int] = []
        shown = ""
        for step in range(max_new_tokens):
            tok = sample(logits, temperature, top_p, gen)
            if tok in eos:
                break
            new.append(tok)
            text = self.tokenizer.decode(new)
            if stream and not text.endswith("\ufffd"):   # wait for whole UTF-8 characters
                stream(text[len(shown):])
                shown = text
            if step + 1 < max_new_tokens:
                pos = len(ids) + len(new) - 1
                logits = self.executor.step(torch.tensor([tok]), torch.tensor([pos]))[-1]
        text = self.tokenizer.decode(new)
        if stream and len(text) > len(shown):
            stream(text[len(shown):])
        return text
