"""Perplexity of a causal language model over a token sequence, by sliding windows.

    rt = optimizer.runtime.load("out/")
    result = perplexity(rt, tokenize_text(rt, text), context=512, stride=256)

With ids x_0..x_{N-1}, windows of at most ``context`` tokens start every ``stride`` tokens
(at 0, stride, 2*stride, ...) until one reaches x_{N-1}. Each window is a fresh sequence and
scores only the tokens no earlier window scored and that it can predict (not its own first
token), so each x_t is scored at most once, with up to ``context - 1`` tokens before it:

    nll = -(1/n) * sum_t log softmax(logits(window)[t - begin - 1])[x_t]      (nats)
    ppl = exp(nll)

For stride < context every x_1..x_{N-1} is scored exactly once (n = N - 1); for stride ==
context (disjoint windows) each window's first token has no context and is not scored
(n = N - n_windows). This is the evaluation of the Hugging Face guide "Perplexity of
fixed-length models".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from optimizer.errors import InvalidInput


@dataclass(frozen=True)
class PerplexityResult:
    """``ppl = exp(nll)``; ``nll`` is the mean negative log-likelihood in nats over the
    ``n_tokens`` scored tokens, evaluated in ``n_windows`` windows."""

    ppl: float
    nll: float
    n_tokens: int
    n_windows: int


class Window(NamedTuple):
    """ids[begin:end] are run; targets ids[score_from:end] are scored (score_from > begin)."""

    begin: int
    end: int
    score_from: int


def sliding_windows(n_ids: int, context: int, stride: int) -> list[Window]:
    """The windows over ``n_ids`` tokens: begin = k * stride, end = min(begin + context,
    n_ids), score_from = max(previous end, begin + 1); the last window ends at n_ids."""
    _check(n_ids, context, stride)
    windows: list[Window] = []
    prev_end = 0
    for begin in range(0, n_ids, stride):
        end = min(begin + context, n_ids)
        windows.append(Window(begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_ids:
            break
    return windows


def perplexity(rt: Any, ids: list[int], context: int = 512, stride: int = 256,
               progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
    """Sliding-window perplexity of ``ids`` under ``rt`` (anything with ``logits(ids) ->
    [T, vocab]`` starting a fresh sequence each call); see the module docstring.

    ``progress(i, n)`` is called after each of the ``n`` windows (i = 1..n). Raises
    ValueError unless context >= 2, 0 < stride <= context and len(ids) >= 2.
    """
    windows = sliding_windows(len(ids), context, stride)
    total = 0.0
    n_tokens = 0
    for i, (begin, end, score_from) in enumerate(windows, 1):
        logits = rt.logits(ids[begin:end])                              # [T, vocab] float32
        rows = logits[score_from - begin - 1:end - begin - 1].to(torch.float64)  # [n, vocab]
        targets = torch.as_tensor(ids[score_from:end], dtype=torch.int64)        # [n]
        logp = torch.log_softmax(rows, dim=-1).gather(1, targets[:, None])       # [n, 1]
        total -= float(logp.sum())
        n_tokens += end - score_from
        if progress:
            progress(i, len(windows))
    nll = total / n_tokens
    ppl = math.exp(nll) if nll < 709.0 else math.inf     # exp overflows float64 past ~709.78
    return PerplexityResult(ppl=ppl, nll=nll, n_tokens=n_tokens,
                            n_windows=len(windows))


def tokenize_text(rt: Any, text: str) -> list[int]:
    """``text`` as token ids with ``rt.tokenizer`` (a `tokenizers.Tokenizer`), without
    special tokens (no BOS): the ids ``perplexity`` scores."""
    return list(rt.tokenizer.encode(text, add_special_tokens=False).ids)


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``; InvalidInput if it is missing, unreadable or blank."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(p, "no such file" if not p.exists() else "not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(p, f"not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise InvalidInput(p, "the text file is empty")
    return text


def _check(n_ids: int, context: int, stride: int) -> None:
    if context < 2:
        raise ValueError(f"context must be >= 2 tokens, got {context}")
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context ({context}), got {stride}")
    if n_ids < 2:
        raise ValueError(f"ids must hold at least 2 tokens to score one, got {n_ids}")
