"""Fused Triton kernels (issue 4): RMSNorm / add + RMSNorm, SiLU-mul, RoPE, decode attention,
each against its plain PyTorch reference (kernels/<op>/reference.py).

Every check draws fresh random inputs (never zeros; the seed is in the failure message),
poisons the outputs with NaN before the launch (decode attention also its split-K workspace
and the cache rows it must not read) and bounds ``||y - ref|| / ||ref||``, with ref the
reference evaluated on float64 copies of the inputs (the references do some steps in
float32: RMSNorm's statistics, RoPE's angles and attention's scores, so "ref" is float32-
accurate): TOL = 1e-2 for bf16 (a few roundings at 2^-9), 2e-3 for fp16 (2^-11), 1e-5 for
float32. Shapes: SmolLM2 (H = 576, 9 q / 3 kv heads, D = 64) and Llama-3-8B (H = 4096, 32 / 8,
D = 128), ragged T, ragged sequence lengths, GQA ratios 1/3/4, sliding windows.

Three classes: TestReferences (CPU, every CI run: the plain PyTorch helpers), TestGPU
(marked gpu; needs CUDA and triton; ``PYTHONPATH=. pytest -q tests/test_kernels_fused_gpu.py``
from the repo root) and TestInterpreter (the same kernels through Triton's CPU interpreter:
needs triton and TRITON_INTERPRET=1, skipped where a GPU is present; the interpreter has no
bf16 ``tl.dot``, so decode attention runs in fp16 / float32 there, and it rounds float32 to
bf16 toward zero, which the bf16 tolerance covers).
"""

from __future__ import annotations

import contextlib
import importlib.util
from unittest import mock

import pytest
import torch

from kernel_cases import fresh_seed, kernel
from triton_interp import INTERPRETER_MARKS

try:   # the installed package; a bare source tree (no `pip install -e .`) has plain `kernels`
    from optimizer.kernels.activation import reference as act_ref
    from optimizer.kernels.attention import reference as attn_ref
    from optimizer.kernels.attention.kv_cache import cache_write
    from optimizer.kernels.rms_norm import reference as norm_ref
    from optimizer.kernels.rope import reference as rope_ref
except ImportError:
    from kernels.activation import reference as act_ref
    from kernels.attention import reference as attn_ref
    from kernels.attention.kv_cache import cache_write
    from kernels.rms_norm import reference as norm_ref
    from kernels.rope import reference as rope_ref

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
NAN = float("nan")


def _gen(seed: int, device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _randn(shape, gen, device, dtype=torch.float32, scale=1.0, shift=0.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, device=device) * scale + shift).to(dtype)


def _check(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert not torch.isnan(y).any(), f"unwritten (NaN) outputs: {what}"
    err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < TOL[dtype], f"rel err {err:.3e} >= {TOL[dtype]}: {what}"


# ---- shared checks (device "cuda", or "cpu" under the interpreter) -----------------------

def check_rms_norm(t: int, h: int, dtype: torch.dtype, device: str, *, residual: bool,
                   w_dtype: torch.dtype | None = None, in_place: bool = False) -> None:
    k = kernel("rms_norm.triton_rms_norm")
    seed = fresh_seed()
    gen = _gen(seed, device)
    what = f"seed={seed} t={t} h={h} {dtype} w={w_dtype} residual={residual} inplace={in_place}"
    x = _randn((t, h), gen, device, dtype, 2.0, 0.3)
    w = _randn((h,), gen, device, w_dtype or dtype, 0.5, 1.0)
    eps = 1e-5
    y_dtype = torch.promote_types(dtype, w.dtype)
    y = torch.full((t, h), NAN, dtype=y_dtype, device=device)
    if not residual:
        k.rms_norm(x, w, eps, out=y)
        _check(y, norm_ref.rms_norm(x.double(), w.double(), eps), dtype, what)
        return
    r = _randn((t, h), gen, device, dtype, 3.0)
    s_ref, y_ref = norm_ref.add_rms_norm(x.double(), r.double(), w.double(), eps)
    s = r if in_place else torch.full((t, h), NAN, dtype=dtype, device=device)
    s_got, y_got = k.add_rms_norm(x, r, w, eps, s_out=s, y_out=y)
    assert s_got.data_ptr() == s.data_ptr() and y_got.data_ptr() == y.data_ptr(), what
    assert s.dtype == dtype and y.dtype == y_dtype, what
    _check(s, s_ref, dtype, "s: " + what)
    _check(y, y_ref, dtype, "y: " + what)


def check_silu_mul(t: int, f: int, dtype: torch.dtype, device: str) -> None:
    k = kernel("activation.triton_silu_mul")
    seed = fresh_seed()
    x = _randn((t, 2 * f), _gen(seed, device), device, dtype, 3.0, 0.1)
    y = torch.full((t, f), NAN, dtype=dtype, device=device)
    k.silu_mul(x, out=y)
    _check(y, act_ref.silu_mul(x.double()), dtype, f"seed={seed} t={t} f={f} {dtype}")


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def check_rope(t: int, hq: int, hk: int, d: int, dtype: torch.dtype, device: str, *,
               qk: bool = True, max_pos: int = 8192, pos_dtype=torch.int64,
               scaling=None, theta: float = 500000.0, in_place: bool = False) -> None:
    k = kernel("rope.triton_rope")
    seed = fresh_seed()
    gen = _gen(seed, device)
    what = (f"seed={seed} t={t} hq={hq} hk={hk} d={d} {dtype} qk={qk} max_pos={max_pos} "
            f"{pos_dtype} scaling={scaling} inplace={in_place}")
    n = hq + 2 * hk if qk else hq
    x = _randn((t, n * d), gen, device, dtype, 1.0, 0.2)
    pos = torch.randint(0, max_pos, (t,), generator=gen, device=device).to(pos_dtype)
    freqs = rope_ref.inv_freq(d, theta, scaling).to(device)
    if qk:
        ref = rope_ref.rope_qk(x.double(), pos.long(), freqs, hq, hk, d)
    else:
        ref = rope_ref.rope(x.double(), pos.long(), freqs)
    y = x if in_place else torch.full_like(x, NAN)
    x_copy = x.clone()
    if qk:
        got = k.rope_qk(x, pos, freqs, hq, hk, d, out=y)
        v = slice((hq + hk) * d, None)
        assert torch.equal(got[:, v], x_copy[:, v]), "v heads changed: " + what
    else:
        got = k.rope(x, pos, freqs, hq, d, out=y)
    assert got.data_ptr() == y.data_ptr(), what
    _check(got, ref, dtype, what)


def check_rope_cache(b: int, hq: int, hk: int, d: int, s_max: int, dtype: torch.dtype,
                     device: str) -> None:
    """rope_qk_cache against the float64 reference: q within the dtype's tolerance, the
    written k rows likewise, the v rows copied exactly, every other cache row untouched."""
    k = kernel("rope.triton_rope")
    seed = fresh_seed()
    gen = _gen(seed, device)
    what = f"seed={seed} b={b} hq={hq} hk={hk} d={d} s_max={s_max} {dtype}"
    x = _randn((b, (hq + 2 * hk) * d), gen, device, dtype, 1.0, 0.2)
    pos = torch.randperm(s_max, generator=gen, device=device)[:b]
    freqs = rope_ref.inv_freq(d, 500000.0, LLAMA3).to(device)
    kc = _randn((b + 1, s_max, hk, d), gen, device, dtype)     # one spare slot: untouched
    vc = _randn((b + 1, s_max, hk, d), gen, device, dtype)
    kc_ref, vc_ref = kc.double(), vc.double()
    q_ref = rope_ref.rope_qk_cache(x.double(), pos, freqs, hq, hk, d, kc_ref, vc_ref)
    q = k.rope_qk_cache(x, pos, freqs, hq, hk, d, kc, vc)
    _check(q, q_ref, dtype, "q: " + what)
    rows = torch.arange(b, device=device)
    _check(kc[rows, pos], kc_ref[rows, pos], dtype, "k: " + what)
    assert torch.equal(vc.double(), vc_ref), "v rows differ or others changed: " + what
    written = torch.zeros(b + 1, s_max, dtype=torch.bool, device=device)
    written[rows, pos] = True
    assert torch.equal(kc[~written].double(), kc_ref[~written]), "k: other rows changed: " + what


def _capture(step) -> torch.cuda.CUDAGraph:
    """``step()`` run once on a side stream (warm-up, as CUDA graph capture wants), then
    captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


@contextlib.contextmanager
def _nan_workspace():
    """torch.empty returns NaN-filled float tensors inside the block (the split-K workspace:
    a chunk the combine kernel reads without the split kernel having written it shows)."""
    empty = torch.empty

    def poisoned(*a, **kw):
        t = empty(*a, **kw)
        return t.fill_(NAN) if t.is_floating_point() else t

    with mock.patch.object(torch, "empty", poisoned):
        yield


def check_decode(b: int, hq: int, hk: int, d: int, s_max: int, dtype: torch.dtype,
                 device: str, *, window: int | None = None, scale: float | None = None,
                 lengths: list[int] | None = None, module: str = "attention.triton_decode",
                 **kw) -> None:
    """Ragged random lengths (forced ones, if given, first); the cache rows the kernel must
    not read (past the length, before the window) are NaN in its copy of the cache. module:
    the kernel's (triton_decode or cuda_decode)."""
    k = kernel(module)
    seed = fresh_seed()
    gen = _gen(seed, device)
    lens = list(lengths or [])
    lens += torch.randint(1, s_max + 1, (b - len(lens),), generator=gen,
                          device=device).tolist()
    what = (f"seed={seed} b={b} hq={hq} hk={hk} d={d} s_max={s_max} {dtype} window={window} "
            f"scale={scale} lengths={lens} {kw}")
    q = _randn((b, hq * d), gen, device, dtype)
    kc = _randn((b, s_max, hk, d), gen, device, dtype, 1.5)
    vc = _randn((b, s_max, hk, d), gen, device, dtype, 1.0, 0.1)
    lengths_t = torch.tensor(lens, dtype=torch.int32, device=device)
    ref = attn_ref.decode_attention(q.double(), kc.double(), vc.double(), lengths_t, hq, hk,
                                    window, scale)
    p = torch.arange(s_max, device=device)[None, :]
    lo = (lengths_t[:, None] - (window or s_max)).clamp(min=0)
    unread = (p >= lengths_t[:, None]) | (p < lo)                              # [B, S]
    kc[unread], vc[unread] = NAN, NAN
    out = torch.full_like(q, NAN)
    with _nan_workspace():
        got = k.decode_attention(q, kc, vc, lengths_t, hq, hk, window, scale, out=out, **kw)
    assert got.data_ptr() == out.data_ptr(), what
    zero = lengths_t == 0
    assert torch.equal(got[zero], torch.zeros_like(got[zero])), what
    _check(got[~zero], ref[~zero], dtype, what)


# ---- CPU, every CI run: the plain PyTorch pieces -----------------------------------------

class TestReferences:
    def test_add_rms_norm_reference(self) -> None:
        x, r, w = torch.randn(5, 64).bfloat16(), torch.randn(5, 64).bfloat16(), torch.rand(64)
        s, y = norm_ref.add_rms_norm(x, r, w.bfloat16(), 1e-6)
        assert torch.equal(s, x + r)
        assert torch.equal(y, norm_ref.rms_norm(x + r, w.bfloat16(), 1e-6))

    def test_rope_qk_reference(self) -> None:
        x, pos = torch.randn(3, (4 + 2 * 2) * 16), torch.tensor([0, 5, 99])
        f = rope_ref.inv_freq(16, 10000.0, None)
        y = rope_ref.rope_qk(x, pos, f, 4, 2, 16)
        assert torch.equal(y[:, :96], rope_ref.rope(x[:, :96].contiguous(), pos, f))
        assert torch.equal(y[:, 96:], x[:, 96:])

    def test_cache_write(self) -> None:
        b, s, hk, d = 3, 10, 2, 8
        kc, vc = torch.randn(b, s, hk, d), torch.randn(b, s, hk, d)
        want_k, want_v = kc.clone(), vc.clone()
        k, v = torch.randn(b, hk * d), torch.randn(b, hk * d)
        pos = torch.tensor([0, 9, 4], dtype=torch.int32)
        cache_write(kc, vc, k, v, pos)
        for i, p in enumerate(pos.tolist()):
            want_k[i, p], want_v[i, p] = k[i].view(hk, d), v[i].view(hk, d)
        assert torch.equal(kc, want_k) and torch.equal(vc, want_v)

    def test_decode_reference_matches_attention(self) -> None:
        """decode_attention (per-sequence loop) agrees with attention's last row of a full
        causal prefill; a zero length gives zeros; scale = D^-0.5 changes nothing."""
        b, s, hq, hk, d = 2, 12, 6, 2, 16
        q, kc, vc = torch.randn(b, hq * d), torch.randn(b, s, hk, d), torch.randn(b, s, hk, d)
        lengths = torch.tensor([7, 0], dtype=torch.int32)
        out = attn_ref.decode_attention(q, kc, vc, lengths, hq, hk, window=4)
        want = attn_ref.attention(q[:1], kc[0, :7].reshape(7, -1), vc[0, :7].reshape(7, -1),
                                  torch.tensor([6]), hq, hk, window=4)
        assert torch.equal(out[0], want[0]) and torch.equal(out[1], torch.zeros(hq * d))
        scaled = attn_ref.decode_attention(q, kc, vc, lengths, hq, hk, 4, scale=d ** -0.5)
        torch.testing.assert_close(scaled, out)


# ---- GPU ---------------------------------------------------------------------------------

DTYPES = [torch.bfloat16, torch.float16]


class TestGPU:
    pytestmark = [pytest.mark.gpu,
                  pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
                  pytest.mark.skipif(not HAS_TRITON, reason="needs triton")]

    @pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
    @pytest.mark.parametrize("t,h", [(1, 576), (7, 576), (1, 4096), (33, 4096), (300, 1000)])
    @pytest.mark.parametrize("residual", [False, True])
    def test_rms_norm(self, t: int, h: int, dtype: torch.dtype, residual: bool) -> None:
        check_rms_norm(t, h, dtype, "cuda", residual=residual)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_rms_norm_f32_weight_in_place(self, dtype: torch.dtype) -> None:
        check_rms_norm(5, 4096, dtype, "cuda", residual=False, w_dtype=torch.float32)
        check_rms_norm(5, 4096, dtype, "cuda", residual=True, w_dtype=torch.float32,
                       in_place=True)

    @pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
    @pytest.mark.parametrize("t,f", [(1, 1536), (3, 14336), (32, 14336), (257, 1000)])
    def test_silu_mul(self, t: int, f: int, dtype: torch.dtype) -> None:
        check_silu_mul(t, f, dtype, "cuda")

    @pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
    @pytest.mark.parametrize("t", [1, 8, 77])
    @pytest.mark.parametrize("hq,hk,d", [(9, 3, 64), (32, 8, 128), (8, 8, 128)])
    def test_rope_qk(self, t: int, hq: int, hk: int, d: int, dtype: torch.dtype) -> None:
        check_rope(t, hq, hk, d, dtype, "cuda", scaling=LLAMA3)

    @pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
    @pytest.mark.parametrize("b,s_max", [(1, 256), (8, 4096), (32, 512)])
    @pytest.mark.parametrize("hq,hk,d", [(9, 3, 64), (32, 8, 128)])
    def test_rope_qk_cache(self, b: int, s_max: int, hq: int, hk: int, d: int,
                           dtype: torch.dtype) -> None:
        check_rope_cache(b, hq, hk, d, s_max, dtype, "cuda")

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_rope_variants(self, dtype: torch.dtype) -> None:
        check_rope(33, 9, 3, 64, dtype, "cuda", qk=False, theta=100000.0)
        check_rope(5, 32, 8, 128, dtype, "cuda", pos_dtype=torch.int32, max_pos=131072,
                   scaling={"rope_type": "linear", "factor": 4.0}, in_place=True)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("b,s_max", [(1, 512), (1, 8192), (8, 4096), (32, 512), (5, 300),
                                        (4, 200), (32, 200)])
    @pytest.mark.parametrize("hq,hk,d", [(32, 8, 128), (9, 3, 64), (8, 8, 64)])
    def test_decode(self, b: int, s_max: int, hq: int, hk: int, d: int,
                    dtype: torch.dtype) -> None:
        check_decode(b, hq, hk, d, s_max, dtype, "cuda", lengths=[s_max, 1][:b])

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("window", [1, 100, 1000])
    @pytest.mark.parametrize("b,s_max", [(1, 4096), (8, 2000)])
    def test_decode_window(self, b: int, s_max: int, window: int, dtype: torch.dtype) -> None:
        check_decode(b, 32, 8, 128, s_max, dtype, "cuda", window=window,
                     lengths=[s_max, window, 3][:b])

    @pytest.mark.parametrize("fused", [True, False])
    @pytest.mark.parametrize("chunk,block_n", [(64, 64), (128, 32), (256, 64), (4096, 64)])
    def test_decode_configs(self, chunk: int, block_n: int, fused: bool) -> None:
        """Forced chunk sizes (many chunks; one chunk: the split kernel writes out itself),
        a zero length, a custom scale, fp32 (IEEE dots); the combine fused into the split
        kernel (the last arrival) or a kernel of its own."""
        check_decode(4, 12, 3, 128, 1000, torch.bfloat16, "cuda", window=300,
                     lengths=[1000, 0, 301], chunk=chunk, block_n=block_n, fused=fused)
        check_decode(3, 8, 2, 64, 700, torch.float32, "cuda", scale=0.3, chunk=chunk,
                     block_n=block_n, fused=fused)

    def test_decode_locks_reused(self) -> None:
        """One counter buffer across calls and shapes (as the engine passes it): left zero."""
        locks = torch.zeros(64, dtype=torch.int32, device="cuda")
        for _ in range(3):
            check_decode(8, 32, 8, 128, 600, torch.bfloat16, "cuda", chunk=64, locks=locks)
            check_decode(2, 9, 3, 64, 300, torch.float16, "cuda", chunk=64, locks=locks)
        assert not locks.any()

    def test_decode_odd_shapes(self) -> None:
        """D = 96 and 256, MQA (32 q heads on one kv head: BLOCK_R = 32)."""
        check_decode(3, 16, 2, 96, 1000, torch.bfloat16, "cuda", lengths=[1000])
        check_decode(2, 8, 4, 256, 600, torch.float16, "cuda", window=200)
        check_decode(4, 32, 1, 128, 3000, torch.bfloat16, "cuda", lengths=[3000])

    def test_decode_cuda_graph(self) -> None:
        """cache_write + decode_attention captured once, replayed with new lengths and k/v
        (the grid depends only on shapes; no host syncs inside)."""
        td = kernel("attention.triton_decode")
        b, s_max, hq, hk, d = 4, 2048, 32, 8, 128
        seed = fresh_seed()
        gen = _gen(seed, "cuda")
        q = _randn((b, hq * d), gen, "cuda", torch.bfloat16)
        kc = _randn((b, s_max, hk, d), gen, "cuda", torch.bfloat16)
        vc = _randn((b, s_max, hk, d), gen, "cuda", torch.bfloat16)
        k_new = _randn((b, hk * d), gen, "cuda", torch.bfloat16)
        v_new = _randn((b, hk * d), gen, "cuda", torch.bfloat16)
        lengths = torch.tensor([5, 100, 2048, 1], dtype=torch.int32, device="cuda")
        out = torch.empty_like(q)

        def step():
            td.cache_write(kc, vc, k_new, v_new, lengths - 1)
            td.decode_attention(q, kc, vc, lengths, hq, hk, window=1024, out=out)

        graph = _capture(step)
        for lens in ([7, 1500, 3, 2000], [2048, 1, 1024, 1025]):
            lengths.copy_(torch.tensor(lens, dtype=torch.int32))
            k_new.normal_()
            out.fill_(NAN)
            graph.replay()
            torch.cuda.synchronize()
            ref = attn_ref.decode_attention(q.double(), kc.double(), vc.double(), lengths,
                                            hq, hk, 1024)
            _check(out, ref, torch.bfloat16, f"seed={seed} graph replay lengths={lens}")


def _cuda_attention_runs() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


class TestCudaDecode:
    """kernels/attention/cuda_decode.py (decode_attn.cu: clusters, sm_90) against the float64
    reference, as TestGPU's Triton kernel: TOL, NaN in the rows it must not read."""
    pytestmark = [pytest.mark.gpu,
                  pytest.mark.skipif(not _cuda_attention_runs(), reason="needs an sm_90 GPU")]

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("b,s_max", [(1, 200), (1, 17), (1, 4096), (4, 200), (32, 512),
                                        (5, 300), (2, 1)])
    @pytest.mark.parametrize("hq,hk,d", [(32, 8, 128), (9, 3, 64), (8, 8, 64), (16, 2, 128)])
    def test_decode(self, b: int, s_max: int, hq: int, hk: int, d: int,
                    dtype: torch.dtype) -> None:
        check_decode(b, hq, hk, d, s_max, dtype, "cuda", lengths=[s_max, 1][:b],
                     module="attention.cuda_decode")

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("window", [1, 100, 1000])
    def test_decode_window(self, window: int, dtype: torch.dtype) -> None:
        check_decode(4, 32, 8, 128, 2000, dtype, "cuda", window=window,
                     lengths=[2000, window, 3, 0], module="attention.cuda_decode")

    def test_decode_scale_and_zero_length(self) -> None:
        check_decode(3, 12, 3, 128, 700, torch.bfloat16, "cuda", scale=0.3,
                     lengths=[0, 700, 1], module="attention.cuda_decode")

    def test_agrees_with_triton(self) -> None:
        """Both decode kernels on one random input: the same result within TOL."""
        cd, td = kernel("attention.cuda_decode"), kernel("attention.triton_decode")
        seed = fresh_seed()
        gen = _gen(seed, "cuda")
        q = _randn((4, 32 * 128), gen, "cuda", torch.bfloat16)
        kc = _randn((4, 300, 8, 128), gen, "cuda", torch.bfloat16)
        vc = _randn((4, 300, 8, 128), gen, "cuda", torch.bfloat16)
        lengths = torch.tensor([300, 1, 150, 77], dtype=torch.int32, device="cuda")
        a = cd.decode_attention(q, kc, vc, lengths, 32, 8)
        ref = td.decode_attention(q, kc, vc, lengths, 32, 8)
        _check(a, ref.double(), torch.bfloat16, f"seed={seed}")

    def test_after_rope_cache_under_pdl(self) -> None:
        """rope_qk_cache then the attention, captured in a CUDA graph and replayed: under PDL
        the attention may start while the rope kernel writes q and each sequence's newest
        cache row, which are NaN before each replay (read early, they would show); the other
        rows it prefetches before its wait."""
        cd, tr = kernel("attention.cuda_decode"), kernel("rope.triton_rope")
        b, s_max, hq, hk, d = 3, 200, 32, 8, 128
        seed = fresh_seed()
        gen = _gen(seed, "cuda")
        x = _randn((b, (hq + 2 * hk) * d), gen, "cuda", torch.bfloat16)
        kc = _randn((b, s_max, hk, d), gen, "cuda", torch.bfloat16)
        vc = _randn((b, s_max, hk, d), gen, "cuda", torch.bfloat16)
        freqs = rope_ref.inv_freq(d, 500000.0, None).cuda()
        lengths = torch.ones(b, dtype=torch.int32, device="cuda")
        pos = torch.zeros(b, dtype=torch.int64, device="cuda")
        q = torch.empty((b, hq * d), dtype=torch.bfloat16, device="cuda")
        out = torch.empty_like(q)

        def step():
            tr.rope_qk_cache(x, pos, freqs, hq, hk, d, kc, vc, q_out=q)
            cd.decode_attention(q, kc, vc, lengths, hq, hk, out=out)

        graph = _capture(step)
        rows = torch.arange(b, device="cuda")
        for lens in ([7, 200, 1], [150, 2, 199]):
            lengths.copy_(torch.tensor(lens, dtype=torch.int32))
            pos.copy_(lengths - 1)
            x.normal_()
            q.fill_(NAN)
            kc[rows, pos], vc[rows, pos] = NAN, NAN
            out.fill_(NAN)
            graph.replay()
            torch.cuda.synchronize()
            ref = attn_ref.decode_attention(q.double(), kc.double(), vc.double(), lengths,
                                            hq, hk)
            _check(out, ref, torch.bfloat16, f"seed={seed} lengths={lens}")

    def test_rejects(self) -> None:
        """Operands it does not take: one ValueError naming what, before any launch."""
        cd = kernel("attention.cuda_decode")
        q = torch.zeros(1, 4 * 96, dtype=torch.bfloat16, device="cuda")
        c = torch.zeros(1, 8, 2, 96, dtype=torch.bfloat16, device="cuda")
        lengths = torch.ones(1, dtype=torch.int32, device="cuda")
        with pytest.raises(ValueError, match="head size 96"):
            cd.decode_attention(q, c, c, lengths, 4, 2)
        assert not cd.available(q, c, c, lengths, 4, 2)


class TestCudaDecodePlan:
    """CPU: the cluster plan and the operand checks of kernels/attention/cuda_decode.py."""

    @pytest.mark.parametrize("s_max,want", [(1, (1, 1)), (32, (1, 32)), (33, (2, 17)),
                                            (200, (8, 25)), (100, (4, 25)),
                                            (4096, (8, 512))])
    def test_plan(self, s_max: int, want: tuple[int, int]) -> None:
        c, p = kernel("attention.cuda_decode").plan(s_max)
        assert (c, p) == want and c * p >= s_max and c in (1, 2, 4, 8)

    def test_plan_override(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cd = kernel("attention.cuda_decode")
        monkeypatch.setenv("OPTIMIZER_ATTN_CUDA_CLUSTER", "2")
        assert cd.plan(200) == (2, 100) and cd.plan(1) == (2, 1)
        monkeypatch.setenv("OPTIMIZER_ATTN_CUDA_CLUSTER", "3")
        with pytest.raises(ValueError, match="expected 1, 2, 4 or 8"):
            cd.plan(200)

    def test_cpu_tensors_rejected(self) -> None:
        cd = kernel("attention.cuda_decode")
        q = torch.zeros(1, 4 * 64, dtype=torch.bfloat16)
        c = torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16)
        lengths = torch.ones(1, dtype=torch.int32)
        assert not cd.supported(q, c, c, lengths, 4, 2)
        with pytest.raises(ValueError, match="one CUDA device"):
            cd.decode_attention(q, c, c, lengths, 4, 2)
        with pytest.raises(ValueError, match=r"expected \[B, 4 \* D\]"):
            cd.decode_attention(q[:, :128], c, c, lengths, 4, 2)


# ---- Triton interpreter (CPU) ------------------------------------------------------------

class TestInterpreter:
    pytestmark = INTERPRETER_MARKS

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
    @pytest.mark.parametrize("t,h", [(3, 576), (2, 4096), (5, 1000)])
    def test_rms_norm(self, t: int, h: int, dtype: torch.dtype) -> None:
        check_rms_norm(t, h, dtype, "cpu", residual=False)
        check_rms_norm(t, h, dtype, "cpu", residual=True)

    def test_rms_norm_f32_weight_in_place(self) -> None:
        check_rms_norm(3, 576, torch.bfloat16, "cpu", residual=True, w_dtype=torch.float32,
                       in_place=True)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
    @pytest.mark.parametrize("t,f", [(1, 1536), (3, 1000), (2, 14336)])
    def test_silu_mul(self, t: int, f: int, dtype: torch.dtype) -> None:
        check_silu_mul(t, f, dtype, "cpu")

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
    @pytest.mark.parametrize("hq,hk,d", [(9, 3, 64), (32, 8, 128)])
    def test_rope_qk(self, hq: int, hk: int, d: int, dtype: torch.dtype) -> None:
        check_rope(5, hq, hk, d, dtype, "cpu", scaling=LLAMA3)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
    @pytest.mark.parametrize("hq,hk,d", [(9, 3, 64), (4, 4, 32)])
    def test_rope_qk_cache(self, hq: int, hk: int, d: int, dtype: torch.dtype) -> None:
        check_rope_cache(3, hq, hk, d, 40, dtype, "cpu")

    def test_rope_variants(self) -> None:
        check_rope(7, 9, 3, 64, torch.float16, "cpu", qk=False, theta=100000.0)
        check_rope(3, 4, 2, 32, torch.bfloat16, "cpu", pos_dtype=torch.int32,
                   max_pos=131072, scaling={"rope_type": "linear", "factor": 4.0},
                   in_place=True)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
    @pytest.mark.parametrize("hq,hk,d", [(4, 4, 64), (9, 3, 64), (8, 2, 128)])
    @pytest.mark.parametrize("fused", [True, False])
    def test_decode_split(self, hq: int, hk: int, d: int, dtype: torch.dtype,
                          fused: bool) -> None:
        """Several chunks per sequence, ragged lengths (one of 1, one of S_max); the combine
        in the split kernel or its own."""
        check_decode(3, hq, hk, d, 200, dtype, "cpu", lengths=[1, 200], chunk=64,
                     block_n=32, fused=fused)

    def test_decode_odd_head_dim_mqa(self) -> None:
        """D = 96 (masked to a 128 tile), 8 q heads per kv head, 24 per kv head (BLOCK_R 32)."""
        check_decode(2, 16, 2, 96, 100, torch.float16, "cpu", lengths=[100], chunk=32,
                     block_n=16)
        check_decode(2, 24, 1, 32, 70, torch.float32, "cpu", window=40, chunk=32, block_n=16)

    @pytest.mark.parametrize("window", [1, 50])
    def test_decode_window(self, window: int) -> None:
        check_decode(3, 8, 2, 64, 160, torch.float16, "cpu", window=window,
                     lengths=[160, 0], chunk=32, block_n=16)

    def test_decode_single_chunk(self) -> None:
        """Shape-based choice (one chunk at this size: the split kernel writes out), scale."""
        check_decode(2, 6, 2, 64, 48, torch.float16, "cpu", scale=0.2, lengths=[48, 0])
