"""W4A16 GEMM kernels (kernels/w4a16): the layout against kernels/qlinear/reference.py (CPU,
always runs), the Triton kernels against the float64 reference (GPU), and the same kernels
through Triton's interpreter on CPU tensors (only with triton installed and
TRITON_INTERPRET=1; the interpreter has no bf16 tl.dot, so those tests use fp16, and Triton
3.6's interpreter fails on runtime loop bounds with numpy >= 2.3, so they skip there: run them
with numpy 2.2, e.g. ``pip install --target /tmp/np22 numpy==2.2.6`` and
``TRITON_INTERPRET=1 PYTHONPATH=/tmp/np22:. pytest tests/test_kernels_gpu.py``).

Every check draws fresh random inputs (codes, scales, zeros, x, bias: never zeros; the seed
is in the failure message), poisons the output with NaN before the launch, and bounds
``||y - ref|| / ||ref||`` with ref in float64: 1e-2 for bf16 (weights rounded to bf16 at
2^-9, output at 2^-9), 2e-3 for fp16 (2^-11).

GPU run from the repo root: ``PYTHONPATH=. pytest -q tests/test_kernels_gpu.py``.
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch

from kernel_cases import fresh_seed, kernel, random_weight
from triton_interp import INTERPRETER_MARKS

try:   # the installed package; a bare source tree (no `pip install -e .`) has plain `kernels`
    from optimizer.kernels.qlinear.reference import dequantize as qlinear_dequantize
    from optimizer.kernels.w4a16 import layout, reference
except ImportError:
    from kernels.qlinear.reference import dequantize as qlinear_dequantize
    from kernels.w4a16 import layout, reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


random_w4 = functools.partial(random_weight, 4)


def rope_reference():
    """kernels/rope/reference.py (inv_freq, rope_qk_cache: the float64 RoPE of the qkv
    epilogue's tests)."""
    return kernel("rope.reference")


# ---- layout (CPU, every CI run) ----------------------------------------------------------

LAYOUT_CASES = [   # n, k, group, sym, act_order
    (48, 576, 128, False, False),   # partial last group (64 of 128)
    (40, 200, 64, True, False),     # partial, symmetric
    (16, 256, 32, False, True),     # act-order
    (24, 576, 128, True, True),     # act-order with a partial group
    (8, 100, 0, False, False),      # one group per output channel
    (8, 96, 16, False, False),      # group 16: padded to 32 rows through a permutation
    (33, 4096, 128, False, False),
]


@pytest.mark.parametrize("n,k,group,sym,act_order", LAYOUT_CASES)
def test_layout_dequantizes_exactly(n: int, k: int, group: int, sym: bool,
                                    act_order: bool) -> None:
    seed = fresh_seed()
    qw, s, z, g = random_w4(n, k, group, sym, act_order, seed)
    want = qlinear_dequantize(qw, s, z, g, 4, group, k)             # float32 [N, K]
    p = layout.prepare(qw, s, z, g, group, k)
    kp = p["qweight"].shape[0] * 8
    assert p["qweight"].dtype == torch.int32 and p["qweight"].shape[1] == n
    gs = kp // p["sz"].shape[0]                                      # layout group size
    assert p["sz"].dtype == torch.int32 and p["sz"].shape[1] == n
    assert p["sz"].shape[0] >= s.shape[1]                            # padding groups past G
    assert kp % layout.BLOCK == 0 and kp % gs == 0 and (gs in (32, 64) or gs % 128 == 0)
    assert ("perm" in p) == (act_order or group % 32 != 0), seed
    assert torch.equal(layout.dequantize(p, k), want), seed
    assert torch.equal(reference.dequantize(qw, s, z, g, group, k), want), seed


def test_pick_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPTIMIZER_W4A16_PICK replaces pick_config's choice for the widths it names only; a
    malformed entry is a ValueError naming the variable. (cuda_decode imports triton
    through kernels/pdl.py: skipped where triton is missing.)"""
    pytest.importorskip("triton")
    mma = kernel("w4a16.cuda_decode")
    default = mma.pick_config(1, 4096, 4096)
    monkeypatch.setenv("OPTIMIZER_W4A16_PICK", "6144:16/2/3/1+28672:4/4/0/0")
    assert mma.pick_config(1, 6144, 4096) == mma.MmaConfig(16, 2, 3, True)
    assert mma.pick_config(4, 28672, 4096) == mma.MmaConfig(4, 4, 0, False)
    assert mma.pick_config(1, 4096, 4096) == default
    monkeypatch.setenv("OPTIMIZER_W4A16_PICK", "6144:8/2")
    with pytest.raises(ValueError, match="OPTIMIZER_W4A16_PICK"):
        mma.pick_config(1, 6144, 4096)
    monkeypatch.setenv("OPTIMIZER_W4A16_PICK", "6144:16/4/1/0")
    with pytest.raises(ValueError, match="16 warps"):
        mma.pick_config(1, 6144, 4096)


def test_pick_config_llama3_8b() -> None:
    """pick_config's decode picks on 132 SMs for Llama-3-8B's projections are the configs
    measured in the decode step (bench/RESULTS.md): gate-up at 2 warps without split-K (the
    eleventh session's OPTIMIZER_W4A16_PICK=28672:2/2/1/0; split-K 2 there was slower), o
    and down at 16 warps unsplit, qkv at 8; x staged at M = 1 except for gate-up."""
    pytest.importorskip("triton")
    mma = kernel("w4a16.cuda_decode")
    for m in (1, 2, 4):
        stage = m == 1
        assert mma.pick_config(m, 28672, 4096, 132) == mma.MmaConfig(2, 2, 1, False)
        assert mma.pick_config(m, 4096, 4096, 132) == mma.MmaConfig(16, 2, 1, stage)
        assert mma.pick_config(m, 4096, 14336, 132) == mma.MmaConfig(16, 2, 1, stage)
        assert mma.pick_config(m, 6144, 4096, 132) == mma.MmaConfig(8, 2, 1, stage)


def test_layout_padding_rows_are_zero_weights() -> None:
    """Act-order, K=576, group 128: groups 0-3 fill their 128 rows, group 4 has 64 members,
    so layout rows [576, 640) are padding and must hold the zero point (weight exactly 0)."""
    qw, s, z, g = random_w4(16, 576, 128, False, True, fresh_seed())
    p = layout.prepare(qw, s, z, g, 128, 576)
    q = layout.layout_codes(p)                                       # [KP, N]
    _, zeros = layout.scales_zeros(p)
    assert q.shape[0] == 640 and p["perm"].shape == (640,)
    assert torch.equal(q[576:], zeros[4].expand(64, -1))
    assert torch.equal(p["perm"][:576].sort().values, torch.arange(576))


def test_layout_word_order_hand_worked() -> None:
    """Word r = 4t + c, nibble i = 2s + h + 4e holds block row 32c + 16s + 8h + 2t + e: the
    pairs (i, i + 4) of a word are rows (kk, kk + 1), as a tensor-core A register wants."""
    rows = layout.row_of_nibble()                                    # [16, 8]
    assert sorted(rows.reshape(-1).tolist()) == list(range(128))
    assert rows[0].tolist() == [0, 8, 16, 24, 1, 9, 17, 25]          # t = 0, c = 0
    assert rows[4, 0] == 2 and rows[1, 0] == 32 and rows[15, 7] == 127   # t = 1; c = 1; last
    codes = torch.zeros(3, 256, dtype=torch.int32)                   # N = 3, two blocks
    codes[1, 128 + 9] = 5                                            # block 1, row 9: r 0, i 5
    codes[2, 34] = 7                                                 # block 0, row 34: r 5, i 0
    w = layout.pack_words(codes).reshape(2, 3, 16)                   # memory [B, N, 16]
    assert w[1, 1, 0] == 5 << 20 and w[0, 2, 5] == 7
    assert int(w.count_nonzero()) == 2
    p = {"qweight": layout.pack_words(codes)}
    assert torch.equal(layout.layout_codes(p), codes.T)


def test_reference_linear_matches_float64() -> None:
    seed = fresh_seed()
    qw, s, z, g = random_w4(64, 320, 64, False, True, seed)
    x = torch.randn(5, 320, generator=torch.Generator().manual_seed(seed)).bfloat16()
    bias = torch.randn(64).bfloat16()
    y = reference.w4a16_linear(x, qw, s, z, g, bias, 64)
    ref = reference.w4a16_linear_f64(x, qw, s, z, g, bias, 64)
    assert y.dtype == torch.bfloat16
    assert ((y.double() - ref).norm() / ref.norm()).item() < TOL[torch.bfloat16], seed


# ---- shared check ------------------------------------------------------------------------

def run_check(m: int, n: int, k: int, group: int, *, sym: bool = False,
              act_order: bool = False, bias: bool = False, dtype: torch.dtype = torch.bfloat16,
              device: str = "cuda", config=None, path: str = "auto",
              x_scale: float = 1.0) -> torch.Tensor:
    """One launch of w4a16_linear on fresh random inputs, checked against float64."""
    tg = kernel("w4a16.triton_gemm")
    seed = fresh_seed()
    qw, s, z, g = random_w4(n, k, group, sym, act_order, seed, device)
    p = layout.prepare(qw, s, z, g, group, k)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(m, k, generator=gen, device=device) * x_scale).to(dtype)
    b = torch.randn(n, generator=gen, device=device).to(dtype) if bias else None
    out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
    y = tg.w4a16_linear(x, p, b, out=out, config=config, path=path)
    ref = reference.w4a16_linear_f64(x, qw, s, z, g, b, group)
    what = (f"seed={seed} m={m} n={n} k={k} group={group} sym={sym} act={act_order} "
            f"bias={bias} {dtype} {config} {path}")
    assert y.data_ptr() == out.data_ptr(), what
    assert not torch.isnan(y).any(), f"unwritten (NaN) outputs: {what}"
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"rel err {err:.3e}: {what}"
    return y


# ---- GPU ---------------------------------------------------------------------------------

MS = [1, 3, 16, 33, 128, 512]


class TestGPU:
    pytestmark = [pytest.mark.gpu,
                  pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
                  pytest.mark.skipif(not HAS_TRITON, reason="needs triton")]

    @pytest.mark.parametrize("m", MS)
    @pytest.mark.parametrize("k,n", [(576, 1536), (4096, 4096)])
    def test_g128_asym(self, m: int, k: int, n: int) -> None:
        run_check(m, n, k, 128)

    @pytest.mark.parametrize("m", [1, 33, 512])
    @pytest.mark.parametrize("group", [32, 64])
    @pytest.mark.parametrize("sym", [False, True])
    def test_groups(self, m: int, group: int, sym: bool) -> None:
        run_check(m, 4096, 4096, group, sym=sym)

    @pytest.mark.parametrize("m", [1, 16, 128, 512])
    @pytest.mark.parametrize("k,n", [(576, 1536), (4096, 4096)])
    def test_act_order_bias(self, m: int, k: int, n: int) -> None:
        run_check(m, n, k, 128, act_order=True, bias=True)

    @pytest.mark.parametrize("m", [1, 33, 512])
    def test_fp16_sym_bias(self, m: int) -> None:
        run_check(m, 1536, 576, 128, sym=True, bias=True, dtype=torch.float16)

    @pytest.mark.parametrize("m", [5, 130, 512])
    @pytest.mark.parametrize("variant", ["factored", "factored-split3", "dequant",
                                         "dequant-split2", "wide", "in-kernel-gather",
                                         "decode-deq", "decode-deq-w8", "decode-k32",
                                         "decode-v2", "cublas", "cublas-chunk"])
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_every_path(self, m: int, variant: str, dtype: torch.dtype) -> None:
        """Each kernel variant on ragged sizes (N, M not tile multiples), act-order, bias."""
        tg = kernel("w4a16.triton_gemm")
        cfgs = {"factored": tg.GemmConfig(16, 64, 1, factored=True),
                "factored-split3": tg.GemmConfig(32, 128, 3, factored=True),
                "dequant": tg.GemmConfig(64, 64, 1, factored=False),
                "dequant-split2": tg.GemmConfig(128, 128, 2, factored=False, num_warps=8,
                                                num_stages=3),
                "wide": tg.GemmConfig(128, 256, 1, factored=False, num_warps=8,
                                      num_stages=3),
                "in-kernel-gather": tg.GemmConfig(16, 128, 2, gather=True),
                "decode-deq": tg.GemmConfig(16, 128, 3, factored=False),
                "decode-deq-w8": tg.GemmConfig(16, 256, 2, factored=False, num_warps=8),
                "decode-k32": tg.GemmConfig(16, 128, 2, block_k=32),
                "decode-v2": tg.GemmConfig(16, 64, 2, factored=False, num_warps=2),
                "cublas": tg.CublasConfig(),
                "cublas-chunk": tg.CublasConfig(256)}
        run_check(m, 1000, 576, 64, act_order=True, bias=True, dtype=dtype,
                  config=cfgs[variant])

    @pytest.mark.parametrize("group", [32, 64, 256])
    @pytest.mark.parametrize("factored", [False, True])
    def test_group_sizes_per_tile(self, group: int, factored: bool) -> None:
        """Groups smaller than a 128-row block (several per block) and larger (one group
        over two blocks), K not a multiple of the group (padding groups)."""
        tg = kernel("w4a16.triton_gemm")
        run_check(7, 320, 1000, group, config=tg.GemmConfig(16, 64, 2, factored=factored))
        run_check(40, 320, 1000, group, dtype=torch.float16,
                  config=tg.GemmConfig(64, 128, 1, factored=factored))

    def test_split_k_deterministic(self) -> None:
        """The split-K reduction runs in a fixed order: equal inputs give equal bits."""
        tg = kernel("w4a16.triton_gemm")
        qw, s, z, g = random_w4(4096, 4096, 128, False, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 4096)
        x = torch.randn(4, 4096, device="cuda").bfloat16()
        cfg = tg.GemmConfig(16, 64, 8, factored=True)
        ys = [tg.w4a16_linear(x, p, config=cfg) for _ in range(3)]
        assert all(torch.equal(ys[0], y) for y in ys[1:])
        assert int(p["locks"].abs().sum()) == 0                     # counters left at zero

    @pytest.mark.parametrize("m", [1, 8, 64, 300, 2048])
    def test_auto_dispatch(self, m: int) -> None:
        """pick_config's choice at each M (fused or cuBLAS), Llama-like widths."""
        run_check(m, 6144, 4096, 128, act_order=m % 2 == 0, bias=True)

    def test_cuda_graph_capture(self) -> None:
        """Capturable: replaying a captured call on new x gives the new product."""
        tg = kernel("w4a16.triton_gemm")
        qw, s, z, g = random_w4(4096, 4096, 128, False, True, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 4096)
        for m in (1, 16, 128, 512):
            x = torch.randn(m, 4096, device="cuda").bfloat16()
            y = torch.empty(m, 4096, device="cuda", dtype=torch.bfloat16)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                tg.w4a16_linear(x, p, out=y)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                tg.w4a16_linear(x, p, out=y)
            x.copy_(torch.randn(m, 4096, device="cuda").bfloat16())
            y.fill_(float("nan"))
            graph.replay()
            ref = reference.w4a16_linear_f64(x, qw, s, z, g, None, 128)
            assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2, m

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_dequantize_t_exact(self, dtype: torch.dtype) -> None:
        """The cuBLAS path's W^T: (q - z) * s in float32, rounded once to nearest."""
        tg = kernel("w4a16.triton_gemm")
        qw, s, z, g = random_w4(1000, 576, 64, False, True, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 64, 576)
        wt = tg.dequantize_t(p, dtype)                               # [KP, N]
        q = layout.layout_codes(p).float()
        sc, zz = layout.scales_zeros(p)
        rg = torch.arange(q.shape[0], device="cuda") // 64
        assert torch.equal(wt, ((q - zz.float()[rg]) * sc.float()[rg]).to(dtype))

    def test_3d_input(self) -> None:
        tg = kernel("w4a16.triton_gemm")
        qw, s, z, g = random_w4(256, 512, 128, False, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 512)
        x = torch.randn(2, 3, 512, device="cuda").bfloat16()
        y = tg.w4a16_linear(x, p)
        ref = reference.w4a16_linear_f64(x.reshape(6, 512), qw, s, z, g, None, 128)
        assert y.shape == (2, 3, 256)
        assert ((y.reshape(6, 256).double() - ref).norm() / ref.norm()).item() < 1e-2


# ---- the CUDA C++ decode kernel (kernels/w4a16/mma_decode.cu), M <= 8 --------------------

@pytest.fixture
def mma():
    """cuda_decode, skipping where the kernel cannot be built (no nvcc) or run."""
    cd = kernel("w4a16.cuda_decode")
    if not cd.available(torch.zeros(1, 2, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("the CUDA decode kernel is unavailable here (no nvcc, or sm < 80)")
    return cd


def _add_norm_case(m: int, h: int, k_a: int, n_b: int, group_a: int, group_b: int,
                   act_order: bool, seed: int, device: str = "cuda"):
    """Random inputs of a residual add + RMSNorm between two W4A16 projections, [h, k_a]
    (act-order as asked) and [n_b, h]: their storage tensors, their layouts, bf16 x [m, k_a],
    residual [m, h] (spread 4) and norm weight [h] (in [1, 1.5)), and the generator."""
    wa = random_w4(h, k_a, group_a, False, act_order, seed, device)
    wb = random_w4(n_b, h, group_b, False, False, seed + 1, device)
    pa, pb = layout.prepare(*wa, group_a, k_a), layout.prepare(*wb, group_b, h)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k_a, generator=gen, device=device).bfloat16()
    res = (4 * torch.randn(m, h, generator=gen, device=device)).bfloat16()
    gamma = (1 + 0.5 * torch.rand(h, generator=gen, device=device)).bfloat16()
    return wa, wb, pa, pb, x, res, gamma, gen


class TestMma:
    pytestmark = [pytest.mark.gpu,
                  pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
                  pytest.mark.skipif(not HAS_TRITON, reason="needs triton")]

    @pytest.mark.parametrize("m", [1, 2, 5, 8])
    @pytest.mark.parametrize("warps,inflight,split", [(4, 2, 1), (4, 4, 3), (8, 2, 7),
                                                      (8, 4, 2), (4, 2, 0), (16, 2, 1),
                                                      (16, 2, 3), (2, 2, 1), (2, 2, 3)])
    @pytest.mark.parametrize("stage_x", [False, True])
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_configs(self, mma, m: int, warps: int, inflight: int, split: int, stage_x: bool,
                     dtype: torch.dtype) -> None:
        """Ragged N (not a multiple of 32), K not a multiple of 128 (padding rows and a
        partial group), act-order, bias; the warps x in-flight x split-K x staging
        variants."""
        cfg = mma.MmaConfig(warps, inflight, split, stage_x)
        run_check(m, 1000, 1000, 128, act_order=True, bias=True, dtype=dtype, config=cfg)

    @pytest.mark.parametrize("m", [1, 3, 8])
    @pytest.mark.parametrize("warps,split,stage_x", [(4, 1, False), (4, 0, False),
                                                     (8, 3, True), (16, 1, True),
                                                     (16, 2, False), (2, 1, False),
                                                     (2, 2, True)])
    @pytest.mark.parametrize("group", [32, 128])
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_gate_up_silu(self, mma, m: int, warps: int, split: int, stage_x: bool,
                          group: int, dtype: torch.dtype) -> None:
        """The gate-up SiLU-mul epilogue (gate_up_silu=True) against silu(gate) * up of the
        float64 reference, F = 500 (not a multiple of 16: a partial last tile), K = 1000,
        act-order, bias; the warps x split-K x staging variants."""
        tg = kernel("w4a16.triton_gemm")
        f, k = 500, 1000
        seed = fresh_seed()
        qw, s, z, g = random_w4(2 * f, k, group, False, True, seed, "cuda")
        p = layout.prepare(qw, s, z, g, group, k)
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
        b = torch.randn(2 * f, generator=gen, device="cuda").to(dtype)
        gu = reference.w4a16_linear_f64(x, qw, s, z, g, b, group)
        ref = gu[:, :f] * torch.sigmoid(gu[:, :f]) * gu[:, f:]
        y = torch.full((m, f), float("nan"), dtype=dtype, device="cuda")
        cfg = mma.MmaConfig(warps, 2, split, stage_x)
        mma.w4a16_mma(tg.gather_columns(x, p["perm"]), p, b, y, tg._group_rows(p), cfg,
                      gate_up_silu=True)
        what = f"seed={seed} m={m} group={group} {dtype} {cfg}"
        assert not torch.isnan(y).any(), f"unwritten (NaN) outputs: {what}"
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert err < TOL[dtype], f"rel err {err:.3e}: {what}"

    @pytest.mark.parametrize("m", [1, 4, 6])
    def test_gate_up_silu_entry(self, mma, m: int) -> None:
        """triton_gemm.w4a16_gate_up_silu: the fused kernel for M <= AUTO_MAX_M, the two
        kernels above it (M = 6), the same result either way as the float64 reference."""
        tg = kernel("w4a16.triton_gemm")
        f, k = 1536, 576
        seed = fresh_seed()
        qw, s, z, g = random_w4(2 * f, k, 128, True, False, seed, "cuda")
        p = layout.prepare(qw, s, z, g, 128, k)
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(m, k, generator=gen, device="cuda").bfloat16()
        gu = reference.w4a16_linear_f64(x, qw, s, z, g, None, 128)
        ref = gu[:, :f] * torch.sigmoid(gu[:, :f]) * gu[:, f:]
        y = tg.w4a16_gate_up_silu(x, p)
        assert y.shape == (m, f) and y.dtype == torch.bfloat16
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert err < TOL[torch.bfloat16], f"rel err {err:.3e}: seed={seed} m={m}"

    @pytest.mark.parametrize("m", [1, 3, 8])
    @pytest.mark.parametrize("warps,split,stage_x", [(8, 1, True), (8, 0, False),
                                                     (4, 1, False), (16, 1, True),
                                                     (16, 3, False), (4, 2, True)])
    @pytest.mark.parametrize("heads", [(4, 2, 128), (9, 3, 64)])
    @pytest.mark.parametrize("group", [32, 128])
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_qkv_rope(self, mma, m: int, warps: int, split: int, stage_x: bool,
                      heads: tuple[int, int, int], group: int, dtype: torch.dtype) -> None:
        """The qkv RoPE + cache-write epilogue (rope=QkvRope) against the float64 reference
        (the linear, then kernels/rope/reference.rope_qk_cache): q and the written k rows
        within the dtype's tolerance, the v rows likewise, every other cache row untouched;
        one row's position past the cache (not written). K = 1000 (padding rows, a partial
        group), act-order, bias; the warps x split-K x staging variants."""
        tg = kernel("w4a16.triton_gemm")
        hq, hk, d = heads
        n, k, s_max = (hq + 2 * hk) * d, 1000, 40
        seed = fresh_seed()
        what = f"seed={seed} m={m} heads={heads} group={group} {dtype} {warps}/{split}/{stage_x}"
        qw, s, z, g = random_w4(n, k, group, False, True, seed, "cuda")
        p = layout.prepare(qw, s, z, g, group, k)
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
        b = torch.randn(n, generator=gen, device="cuda").to(dtype)
        pos = torch.randperm(s_max, generator=gen, device="cuda")[:m]
        if m > 1:
            pos[-1] = s_max + 5                              # past the cache: not written
        freqs = rope_reference().inv_freq(d, 500000.0, None).cuda()
        kc = torch.randn(m + 1, s_max, hk, d, generator=gen, device="cuda").to(dtype)
        vc = torch.randn(m + 1, s_max, hk, d, generator=gen, device="cuda").to(dtype)
        # the reference writes into caches 8 rows longer (it refuses positions past them),
        # of which the first s_max are compared
        spare = torch.zeros(m + 1, 8, hk, d, dtype=torch.float64, device="cuda")
        kc_ref, vc_ref = (torch.cat([c.double(), spare], 1) for c in (kc, vc))
        qkv = reference.w4a16_linear_f64(x, qw, s, z, g, b, group)
        q_ref = rope_reference().rope_qk_cache(qkv, pos, freqs, hq, hk, d, kc_ref, vc_ref)
        kc_ref, vc_ref = kc_ref[:, :s_max], vc_ref[:, :s_max]
        q = torch.full((m, hq * d), float("nan"), dtype=dtype, device="cuda")
        rope = mma.QkvRope(pos, freqs, q, kc, vc, hq, hk, d)
        mma.w4a16_mma(tg.gather_columns(x, p["perm"]), p, b, None, tg._group_rows(p),
                      mma.MmaConfig(warps, 2, split, stage_x), rope=rope)
        assert not torch.isnan(q).any(), f"unwritten (NaN) q: {what}"
        err = ((q.double() - q_ref).norm() / q_ref.norm()).item()
        assert err < TOL[dtype], f"q: rel err {err:.3e}: {what}"
        rows = torch.arange(m, device="cuda")
        inside = pos < s_max
        written = torch.zeros(m + 1, s_max, dtype=torch.bool, device="cuda")
        written[rows[inside], pos[inside]] = True
        for name, c, ref in (("k", kc, kc_ref), ("v", vc, vc_ref)):
            got, want = c[written].double(), ref[written]
            err = ((got - want).norm() / want.norm()).item()
            assert err < TOL[dtype], f"{name}: rel err {err:.3e}: {what}"
            assert torch.equal(c[~written].double(), ref[~written]), \
                f"{name}: other cache rows changed: {what}"

    @pytest.mark.parametrize("m", [1, 4, 6])
    def test_qkv_rope_entry(self, mma, m: int, monkeypatch: pytest.MonkeyPatch) -> None:
        """triton_gemm.w4a16_qkv_rope: the fused kernel for M <= AUTO_MAX_M, the two kernels
        above it (M = 6) and with OPTIMIZER_FUSE_QKV_ROPE=0; q and the caches agree with
        rope_qk_cache of w4a16_linear either way (Llama-3-8B heads, D = 128)."""
        tg = kernel("w4a16.triton_gemm")
        rk = kernel("rope.triton_rope")
        hq, hk, d, k, s_max = 32, 8, 128, 4096, 64
        n = (hq + 2 * hk) * d
        seed = fresh_seed()
        qw, s, z, g = random_w4(n, k, 128, False, False, seed, "cuda")
        p = layout.prepare(qw, s, z, g, 128, k)
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(m, k, generator=gen, device="cuda").bfloat16()
        pos = torch.randperm(s_max, generator=gen, device="cuda")[:m]
        freqs = rope_reference().inv_freq(d, 500000.0, None).cuda()
        caches = [torch.randn(m, s_max, hk, d, generator=gen, device="cuda").bfloat16()
                  for _ in range(2)]
        kc2, vc2 = (c.clone() for c in caches)
        q2 = rk.rope_qk_cache(tg.w4a16_linear(x, p), pos, freqs, hq, hk, d, kc2, vc2)
        for switch in ("1", "0"):
            monkeypatch.setenv("OPTIMIZER_FUSE_QKV_ROPE", switch)
            kc, vc = (c.clone() for c in caches)
            q = tg.w4a16_qkv_rope(x, p, None, pos, freqs, hq, hk, d, kc, vc)
            what = f"seed={seed} m={m} fused={switch}"
            for name, a, b in (("q", q, q2), ("k", kc, kc2), ("v", vc, vc2)):
                err = ((a.double() - b.double()).norm() / b.double().norm()).item()
                assert err < TOL[torch.bfloat16], f"{name}: rel err {err:.3e}: {what}"

    @pytest.mark.parametrize("m", [1, 3, 4])
    @pytest.mark.parametrize("prod,cons", [((16, True), ("plain", 16, True)),
                                           ((16, False), ("plain", 8, False)),
                                           ((8, True), ("plain", 8, True)),
                                           ((8, False), ("gate_up", 2, False)),
                                           ((16, True), ("gate_up", 4, False)),
                                           ((16, False), ("gate_up", 8, False)),
                                           ((8, True), ("gate_up", 16, True))])
    def test_add_norm(self, mma, m: int, prod: tuple, cons: tuple) -> None:
        """The residual add + RMSNorm split over two kernels (AddNormOut, NormIn) against
        float64: y = x @ Wa^T + ba rounded to bf16, s = round(y + residual) (checked, as is
        s * weight and the per-tile sums of s^2 beside them), then z = rms_norm(s) @ Wb^T +
        bb (or its gate-up SiLU-mul) with the norm in float64. Act-order on the producer, a
        partial group (K = 1000), a partial 32-column tile (N = 1000) and both biases; each
        producer / consumer config the kernel has."""
        tg = kernel("w4a16.triton_gemm")
        role, warps_b, stage_b = cons
        k_a, h, eps = 1000, 1000, 1e-5
        n_b = 2 * 528 if role == "gate_up" else 768
        seed = fresh_seed()
        what = f"seed={seed} m={m} producer={prod} consumer={cons}"
        (qa, sa, za, ga), (qb, sb, zb, gb), pa, pb, x, res, gamma, gen = _add_norm_case(
            m, h, k_a, n_b, 128, 64, True, seed)
        ba = torch.randn(h, generator=gen, device="cuda").bfloat16()
        bb = torch.randn(n_b, generator=gen, device="cuda").bfloat16()
        y64 = reference.w4a16_linear_f64(x, qa, sa, za, ga, ba, 128)
        s_ref = (y64.bfloat16().double() + res.double()).bfloat16().double()
        n64 = s_ref * torch.rsqrt(s_ref.pow(2).mean(-1, keepdim=True) + eps) * gamma.double()
        z64 = reference.w4a16_linear_f64(n64, qb, sb, zb, gb, bb, 64)
        if role == "gate_up":
            z64 = torch.nn.functional.silu(z64[:, :n_b // 2]) * z64[:, n_b // 2:]
        s_out, g_out = (torch.full((m, h), float("nan"), device="cuda").bfloat16()
                        for _ in range(2))
        tiles = -(-h // 32)
        ss = torch.full((m, tiles), float("nan"), device="cuda")
        mma.w4a16_mma(tg.gather_columns(x, pa["perm"]), pa, ba, None, 128,
                      mma.MmaConfig(prod[0], 2, 1, prod[1]),
                      add_norm=mma.AddNormOut(res, gamma, s_out, g_out, ss))
        err = ((s_out.double() - s_ref).norm() / s_ref.norm()).item()
        assert err < TOL[torch.bfloat16], f"s: rel err {err:.3e}: {what}"
        sf = s_out.float()
        assert torch.equal(g_out, (sf * gamma.float()).bfloat16()), f"g != round(s w): {what}"
        pad = torch.nn.functional.pad(sf.pow(2), (0, tiles * 32 - h))
        torch.testing.assert_close(ss, pad.reshape(m, tiles, 32).sum(-1), rtol=1e-5, atol=1e-3,
                                   msg=lambda e: f"ss: {e}: {what}")
        z = torch.full((m, n_b // 2 if role == "gate_up" else n_b), float("nan"),
                       device="cuda").bfloat16()
        mma.w4a16_mma(g_out, pb, bb, z, 64, mma.MmaConfig(warps_b, 2, 1, stage_b),
                      gate_up_silu=role == "gate_up", norm_in=mma.NormIn(ss, eps))
        assert not torch.isnan(z).any(), f"unwritten (NaN) z: {what}"
        err = ((z.double() - z64).norm() / z64.norm()).item()
        assert err < TOL[torch.bfloat16], f"z: rel err {err:.3e}: {what}"

    @pytest.mark.parametrize("m", [1, 4, 6])
    @pytest.mark.parametrize("gate_up", [False, True])
    def test_add_norm_entry(self, mma, m: int, gate_up: bool,
                            monkeypatch: pytest.MonkeyPatch) -> None:
        """triton_gemm.w4a16_add_norm_linear on Llama-3-8B's o -> gate-up and down -> qkv
        shapes: the two-kernel path for M <= AUTO_MAX_M, the three kernels above it (M = 6)
        and with OPTIMIZER_FUSE_ADD_NORM=0; s and z agree with add_rms_norm between two
        w4a16_linear calls either way."""
        tg = kernel("w4a16.triton_gemm")
        rn = kernel("rms_norm.triton_rms_norm")
        h, k_a, n_b = (4096, 4096, 28672) if gate_up else (4096, 14336, 6144)
        seed = fresh_seed()
        _, _, pa, pb, x, res, gamma, _ = _add_norm_case(m, h, k_a, n_b, 128, 128, False, seed)
        s2, n2 = rn.add_rms_norm(tg.w4a16_linear(x, pa), res, gamma, 1e-5)
        z2 = tg.w4a16_gate_up_silu(n2, pb) if gate_up else tg.w4a16_linear(n2, pb)
        for switch in ("1", "0"):
            monkeypatch.setenv("OPTIMIZER_FUSE_ADD_NORM", switch)
            s, z = tg.w4a16_add_norm_linear(x, pa, None, res, gamma, 1e-5, pb, None, gate_up)
            what = f"seed={seed} m={m} gate_up={gate_up} fused={switch}"
            for name, a, b in (("s", s, s2), ("z", z, z2)):
                err = ((a.double() - b.double()).norm() / b.double().norm()).item()
                assert err < TOL[torch.bfloat16], f"{name}: rel err {err:.3e}: {what}"

    def test_add_norm_rejects(self, mma) -> None:
        """A float16 x, or a config without an add-norm kernel (4 blocks in flight): one
        clear ValueError before any launch."""
        qw, s, z, g = random_w4(64, 256, 128, False, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 256)
        ss = torch.zeros(1, 2, device="cuda")
        for dtype, cfg in ((torch.float16, mma.MmaConfig(8, 2, 1)),
                           (torch.bfloat16, mma.MmaConfig(8, 4, 1))):
            x = torch.randn(1, 256, device="cuda").to(dtype)
            y = torch.empty(1, 64, device="cuda").to(dtype)
            with pytest.raises(ValueError, match="residual add"):
                mma.w4a16_mma(x, p, None, y, 128, cfg, norm_in=mma.NormIn(ss, 1e-5))

    def test_qkv_rope_rejects(self, mma) -> None:
        """QkvRope.check: a head_dim that is not a multiple of 32, and heads that do not
        make the weight's rows, each one clear ValueError before any launch."""
        qw, s, z, g = random_w4(3 * 48, 256, 128, False, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 256)
        x = torch.randn(1, 256, device="cuda").bfloat16()
        pos = torch.zeros(1, dtype=torch.int64, device="cuda")
        for hq, hk, d in ((1, 1, 48), (2, 1, 32)):
            c = torch.zeros(1, 8, hk, d, device="cuda").bfloat16()
            rope = mma.QkvRope(pos, torch.ones(d // 2, device="cuda"),
                               torch.empty(1, hq * d, device="cuda").bfloat16(), c, c.clone(),
                               hq, hk, d)
            with pytest.raises(ValueError, match="multiple of 32"):
                mma.w4a16_mma(x, p, None, None, 128, rope=rope)

    @pytest.mark.parametrize("group", [32, 64, 128, 256, 0])
    @pytest.mark.parametrize("sym", [False, True])
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_groups(self, mma, group: int, sym: bool, dtype: torch.dtype) -> None:
        """Groups of 32 / 64 rows (several per 128-row block), 128, 256 (one group over two
        blocks) and one group per output channel (0)."""
        run_check(3, 320, 1000, group, sym=sym, dtype=dtype,
                  config=mma.MmaConfig(4, 2, 2))
        run_check(8, 96, 576, group, sym=sym, dtype=dtype, config=mma.MmaConfig(8, 4, 0))
        run_check(1, 96, 1000, group, sym=sym, dtype=dtype,
                  config=mma.MmaConfig(4, 2, 3, stage_x=True))

    @pytest.mark.parametrize("k,n", [(4096, 6144), (4096, 28672), (14336, 4096)])
    def test_llama_shapes_auto(self, mma, k: int, n: int) -> None:
        """The default pick on Llama-3-8B shapes, through path="auto" and path="mma"."""
        for m in (1, 8):
            run_check(m, n, k, 128)
            run_check(m, n, k, 128, path="mma")

    def test_split_deterministic_and_graph(self, mma) -> None:
        """Split-K sums in a fixed order (equal bits over calls, counters left at zero), and
        a captured launch replays on new x."""
        qw, s, z, g = random_w4(4096, 4096, 128, False, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 4096)
        tg = kernel("w4a16.triton_gemm")
        cfg = mma.MmaConfig(4, 2, 8)
        x = torch.randn(4, 4096, device="cuda").bfloat16()
        ys = [tg.w4a16_linear(x, p, config=cfg) for _ in range(3)]
        assert all(torch.equal(ys[0], y) for y in ys[1:])
        assert int(p["locks"].abs().sum()) == 0
        y = torch.empty(1, 4096, device="cuda", dtype=torch.bfloat16)
        x1 = torch.randn(1, 4096, device="cuda").bfloat16()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            tg.w4a16_linear(x1, p, out=y, config=cfg)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            tg.w4a16_linear(x1, p, out=y, config=cfg)
        x1.copy_(torch.randn(1, 4096, device="cuda").bfloat16())
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref = reference.w4a16_linear_f64(x1, qw, s, z, g, None, 128)
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2

    def test_matches_triton_kernel(self, mma) -> None:
        """Same layout, same sums: the CUDA and Triton decode kernels agree to float32
        summation order (both well inside the float64 bound)."""
        tg = kernel("w4a16.triton_gemm")
        qw, s, z, g = random_w4(6144, 4096, 128, False, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 4096)
        x = torch.randn(1, 4096, device="cuda").bfloat16()
        a = tg.w4a16_linear(x, p, path="mma").float()
        b = tg.w4a16_linear(x, p, path="fused").float()
        assert ((a - b).norm() / b.norm()).item() < 4e-3

    def test_rejects_too_many_rows(self, mma) -> None:
        tg = kernel("w4a16.triton_gemm")
        qw, s, z, g = random_w4(64, 256, 128, False, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 256)
        with pytest.raises(ValueError, match="path='mma'"):
            tg.w4a16_linear(torch.randn(9, 256, device="cuda").bfloat16(), p, path="mma")


# ---- Triton interpreter (CPU) ------------------------------------------------------------

INTERP_CASES = [   # m, n, k, group, act_order, bias, (block_m, block_n, split, factored, gather)
    (3, 48, 256, 128, False, False, (16, 32, 1, True, True)),
    (3, 48, 576, 128, True, True, (16, 64, 2, True, False)),
    (20, 40, 576, 64, True, True, (32, 64, 1, False, False)),
    (3, 48, 576, 128, False, True, (16, 32, 2, True)),
    (20, 40, 576, 128, True, True, (16, 32, 3, False)),
    (20, 40, 576, 32, True, False, (16, 32, 2, True)),
    (17, 64, 256, 32, False, True, (16, 32, 2, False)),
    (33, 72, 320, 64, False, True, (32, 64, 1, False)),
    (5, 40, 1000, 256, False, True, (16, 32, 4, True)),
    (33, 72, 320, 64, False, False, (64, 64, 1, True)),
]


class TestInterpreter:
    pytestmark = INTERPRETER_MARKS

    @pytest.mark.parametrize("m,n,k,group,act_order,bias,c", INTERP_CASES)
    def test_fused_fp16(self, m, n, k, group, act_order, bias, c) -> None:
        tg = kernel("w4a16.triton_gemm")
        cfg = tg.GemmConfig(c[0], c[1], c[2], factored=c[3],
                            gather=c[4] if len(c) > 4 else True)
        run_check(m, n, k, group, act_order=act_order, bias=bias, dtype=torch.float16,
                  device="cpu", config=cfg, path="fused")

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_dequantize_t(self, dtype: torch.dtype) -> None:
        tg = kernel("w4a16.triton_gemm")
        qw, s, z, g = random_w4(40, 576, 128, False, True, fresh_seed())
        p = layout.prepare(qw, s, z, g, 128, 576)
        wt = tg.dequantize_t(p, dtype)                               # [KP, N], layout rows
        q = layout.layout_codes(p).float()
        sc, zz = layout.scales_zeros(p)
        rg = torch.arange(q.shape[0]) // 128
        want = (q - zz.float()[rg]) * sc.float()[rg]
        if dtype == torch.float16:
            assert torch.equal(wt, want.half())
        else:   # the interpreter rounds float32 -> bf16 toward zero, the GPU to nearest
            assert ((wt.float() - want).abs() <= want.abs() * 2.0 ** -7).all()

    def test_cublas_path_bf16(self) -> None:
        run_check(5, 64, 192, 64, act_order=True, bias=True, device="cpu", path="cublas")

    @pytest.mark.parametrize("m", [1, 16, 32, 64, 128, 512, 4096])
    @pytest.mark.parametrize("k,n", [(4096, 6144), (4096, 4096), (4096, 28672),
                                     (14336, 4096)])
    def test_picked_configs(self, m: int, k: int, n: int) -> None:
        """Every configuration pick_config chooses for the Llama-3-8B shapes, run on a small
        ragged problem (act-order, bias) so the interpreter stays quick."""
        tg = kernel("w4a16.triton_gemm")
        cfg = tg.pick_config(m, n, k)
        run_check(min(m, 20), 200, 320, 64, act_order=True, bias=True, dtype=torch.float16,
                  device="cpu", config=cfg)

    def test_cublas_chunks(self) -> None:
        tg = kernel("w4a16.triton_gemm")
        run_check(5, 300, 192, 32, act_order=False, bias=True, device="cpu",
                  config=tg.CublasConfig(128))

    def test_bf16_magic_codes(self) -> None:
        """The bf16 code trick (0x4300 | q == 128 + q) that the factored kernel feeds tl.dot."""
        import triton
        import triton.language as tl

        @triton.jit
        def _codes(o_ptr, IS_BF16: tl.constexpr):
            i = tl.arange(0, 16)
            if IS_BF16:
                q = ((i & 15) | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
            else:
                q = ((i & 15) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
            tl.store(o_ptr + i, q.to(tl.float32))

        for is_bf16, off in ((True, 128.0), (False, 1024.0)):
            o = torch.empty(16)
            _codes[(1,)](o, is_bf16)
            assert torch.equal(o, torch.arange(16.0) + off)
