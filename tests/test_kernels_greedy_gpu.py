"""The greedy end-of-step kernel (kernels/sampling/triton_greedy.py) against torch.argmax and
the position arithmetic (kernels/sampling/reference.greedy_step), on fresh random logits
with planted ties across slices: exact equality. TestGPU on a CUDA machine (marked gpu),
TestInterpreter through Triton's CPU interpreter (see triton_interp.py).
"""

from __future__ import annotations

import os

import pytest
import torch

from triton_interp import INTERPRETER_MARKS

from optimizer.kernels.sampling.reference import greedy_step as reference


def check(b: int, v: int, dtype: torch.dtype, device: str, calls: int = 2) -> None:
    from optimizer.kernels.sampling.triton_greedy import BLOCK, greedy_step
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator().manual_seed(seed)
    what = f"seed={seed} b={b} v={v} {dtype}"
    counters = torch.zeros(b, dtype=torch.int32, device=device)
    positions = torch.randint(0, 1000, (b,), generator=gen).to(device)
    lengths = torch.empty(b, dtype=torch.int32, device=device)
    tokens = torch.empty(b, dtype=torch.int64, device=device)
    for _ in range(calls):                       # the counters must be left at zero
        logits = torch.randn(b, v, generator=gen).to(dtype)
        for row in range(0, b, 2):               # a tie: the same maximum twice, the later
            hi = logits[row].max() + 1           # one in another slice where there is one
            first = int(torch.randint(0, v, (1,), generator=gen))
            second = min(v - 1, first + BLOCK + 3)
            logits[row, first] = hi
            logits[row, second] = hi
        logits = logits.to(device)
        want_tok, want_pos, want_len = reference(logits, positions)
        greedy_step(logits, tokens, positions, lengths, counters)
        assert torch.equal(tokens, want_tok), what
        assert torch.equal(positions, want_pos) and torch.equal(lengths, want_len), what
        assert not counters.any(), what


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestGPU:
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
    @pytest.mark.parametrize("b,v", [(1, 128256), (3, 49152), (8, 4097), (2, 1000),
                                     (32, 128256)])
    def test_matches_argmax(self, b: int, v: int, dtype: torch.dtype) -> None:
        check(b, v, dtype, "cuda")

    def test_nan_and_inf(self) -> None:
        from optimizer.kernels.sampling.triton_greedy import greedy_step
        logits = torch.randn(3, 9000, device="cuda").bfloat16()
        logits[0, 7000] = float("nan")
        logits[1, 100] = float("inf")
        logits[1, 8000] = float("inf")
        logits[2] = float("-inf")
        tokens = torch.empty(3, dtype=torch.int64, device="cuda")
        pos = torch.zeros(3, dtype=torch.int64, device="cuda")
        lens = torch.empty(3, dtype=torch.int32, device="cuda")
        greedy_step(logits, tokens, pos, lens, torch.zeros(3, dtype=torch.int32, device="cuda"))
        assert tokens.tolist() == logits.argmax(-1).tolist() == [7000, 100, 0]

    def test_cuda_graph(self) -> None:
        from optimizer.kernels.sampling.triton_greedy import greedy_step
        logits = torch.randn(4, 128256, device="cuda").bfloat16()
        tokens = torch.empty(4, dtype=torch.int64, device="cuda")
        pos = torch.zeros(4, dtype=torch.int64, device="cuda")
        lens = torch.empty(4, dtype=torch.int32, device="cuda")
        counters = torch.zeros(4, dtype=torch.int32, device="cuda")
        greedy_step(logits, tokens, pos, lens, counters)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            greedy_step(logits, tokens, pos, lens, counters)
        for i in range(3):
            logits.copy_(torch.randn(4, 128256, device="cuda"))
            g.replay()
            assert torch.equal(tokens, logits.argmax(-1))
            assert pos.tolist() == [2 + i] * 4 and lens.tolist() == [3 + i] * 4


class TestInterpreter:
    pytestmark = INTERPRETER_MARKS

    @pytest.mark.parametrize("b,v", [(1, 9000), (3, 4097), (2, 100)])
    def test_matches_argmax(self, b: int, v: int) -> None:
        check(b, v, torch.float32, "cpu")
