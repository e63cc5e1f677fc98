"""Next-token choice: greedy, or temperature with nucleus (top-p) sampling."""

from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> int:
    """logits: [V]. temperature 0 is greedy argmax. Otherwise sample from
    softmax(logits / temperature) restricted to the smallest set of most likely tokens whose
    probability sums to at least ``top_p``."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p   # always keeps the first
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_batch(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator) -> torch.Tensor:
    """One token per row of logits [B, V] (the batched form of `sample`)."""
    return torch.tensor([sample(row, temperature, top_p, generator) for row in logits])


def greedy_step(logits: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The end of a greedy decode step (what triton_greedy.greedy_step leaves): the argmax
    tokens of logits [B, V] (int64), positions + 1, and the next lengths (positions + 2,
    int32)."""
    new = positions + 1
    return logits.argmax(-1), new, (new + 1).to(torch.int32)
