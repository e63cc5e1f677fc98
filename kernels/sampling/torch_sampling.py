"""Next-token choice for a batch, on the logits' device (the GPU runtime's sampler).

Same rule as `reference.sample`, row by row: temperature 0 is the argmax; otherwise sample
from softmax(logits / temperature) restricted to the smallest set of most likely tokens whose
probability sums to at least ``top_p``. No host synchronisation (a CUDA generator draws on
the device), so the decode loop keeps the GPU busy.
"""

from __future__ import annotations

import torch


def sample_tokens(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> int64 [B] on the same device."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)              # [B, V]
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
        keep = torch.cumsum(sorted_p, -1) - sorted_p < top_p                 # keeps the first
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
