"""W8A16 and W8A8 GEMM kernels (kernels/w8a16, kernels/w8a8): the layouts against the storage
references (CPU, always runs), the Triton kernels against float64 references (GPU), and the
same kernels through Triton's interpreter on CPU tensors (only with triton installed and
TRITON_INTERPRET=1; the interpreter has no bf16 tl.dot, so W8A16's tensor-core tests use fp16
there; int8 tl.dot works. Triton 3.6's interpreter needs numpy < 2.3:
``TRITON_INTERPRET=1 PYTHONPATH=/tmp/tri:. pytest tests/test_kernels_int8_gpu.py`` with
triton and numpy 2.2 in /tmp/tri).

Every check draws fresh random inputs (codes, scales, zeros, x, bias: never zeros; the seed
is in the failure message) and poisons the output with NaN before the launch.

- W8A16: ``||y - ref|| / ||ref||`` with ref in float64 from the stored codes: below 1e-2 for
  bf16 (output rounding 2^-9 rms, 2^-8 in the interpreter, which rounds toward zero; the
  dequantizing variant also rounds weights to bf16), 1e-3 for fp16 (2^-11).
- W8A8: the quantized activations and scales equal the reference's exactly; every output
  within float rounding of the float64 reference: ``|y - ref| <= u |ref| + 2^-21 (|P| +
  |bias|)`` with ``P = acc * s_x * s_w`` (the float32 epilogue's few roundings) and u the
  output dtype's unit roundoff (2^-8 bf16, doubled in the interpreter; 2^-11 fp16; 2^-24
  fp32). float32 x makes the bound tight enough to catch one quantized value off by one.

GPU run from the repo root: ``PYTHONPATH=. pytest -q tests/test_kernels_int8_gpu.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest
import torch

from kernel_cases import fresh_seed, kernel, random_weight
from triton_interp import INTERPRETER_MARKS

try:   # the installed package; a bare source tree (no `pip install -e .`) has plain `kernels`
    from optimizer.kernels.qlinear.reference import dequantize as qlinear_dequantize
    from optimizer.kernels.w8a8 import layout as w8a8_layout
    from optimizer.kernels.w8a8 import reference as w8a8_ref
    from optimizer.kernels.w8a16 import layout, reference
except ImportError:
    from kernels.qlinear.reference import dequantize as qlinear_dequantize
    from kernels.w8a8 import layout as w8a8_layout
    from kernels.w8a8 import reference as w8a8_ref
    from kernels.w8a16 import layout, reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-3}
UNIT = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}


random_w8 = functools.partial(random_weight, 8)


def random_w8a8(n: int, k: int, seed: int, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """(int8 codes [N, K] in [-127, 127], float32 scales [N]) of a random W8A8 linear."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    s = torch.rand(n, generator=gen) * 0.01 + 0.001
    return w.to(device), s.to(device)


# ---- layouts and references (CPU, every CI run) ------------------------------------------

LAYOUT_CASES = [   # n, k, group, sym, act_order
    (48, 576, 128, False, False),   # partial last group (64 of 128)
    (40, 200, 64, True, False),     # partial, symmetric
    (16, 256, 32, False, True),     # act-order
    (24, 576, 128, True, True),     # act-order with a partial group
    (8, 100, 0, False, False),      # one group per output channel, asymmetric
    (33, 4096, 0, True, False),     # per channel, symmetric (`--int8`)
    (8, 96, 16, False, False),      # group 16: regrouped to 32 rows through a permutation
    (8, 1000, 100, True, False),    # group 100: regrouped to 128 rows
]


@pytest.mark.parametrize("n,k,group,sym,act_order", LAYOUT_CASES)
def test_w8a16_layout_dequantizes_exactly(n: int, k: int, group: int, sym: bool,
                                          act_order: bool) -> None:
    seed = fresh_seed()
    qw, s, z, g = random_w8(n, k, group, sym, act_order, seed)
    want = qlinear_dequantize(qw, s, z, g, 8, group, k)             # float32 [N, K]
    p = layout.prepare(qw, s, z, g, group, k)
    regroup = act_order or not layout.supported_group(group)
    assert ("perm" in p) == regroup, seed
    assert p["qweight"].dtype == torch.uint8 and p["qweight"].shape[0] == n
    assert p["scales"].dtype == torch.float16 and ("zeros" in p) == (not sym)
    gs = p["group_size"]
    assert layout.supported_group(gs)
    if regroup:
        assert p["qweight"].shape[1] == gs * s.shape[1] == p["perm"].numel()
        real = p["perm"][p["perm"] < k].long()
        assert torch.equal(real.sort().values, torch.arange(k))
    assert torch.equal(layout.dequantize(p, k), want), seed
    assert torch.equal(reference.dequantize(qw, s, z, g, group, k), want), seed


@pytest.mark.parametrize("group,sym", [(0, True), (128, False), (64, True)])
def test_w8a16_in_order_storage_passes_through(group: int, sym: bool) -> None:
    """Channels in order: the layout is the stored tensors themselves (no copy, no repack)."""
    qw, s, z, _ = random_w8(64, 576, group, sym, False, fresh_seed())
    views = {"qweight": qw, "scales": s} | ({} if z is None else {"zeros": z})
    p = layout.runtime_view(views, group, 576)
    for role, t in views.items():
        assert p[role].data_ptr() == t.data_ptr(), role
    assert p["group_size"] == group and "perm" not in p
    assert p["locks"].dtype == torch.int32 and int(p["locks"].abs().sum()) == 0


def test_w8a16_regrouped_padding_is_zero_weight() -> None:
    """Act-order, K=576, group 128: the fifth group has 64 members, so layout rows [576, 640)
    are padding: perm holds K there and the codes the zero point (weight exactly 0)."""
    qw, s, z, g = random_w8(16, 576, 128, False, True, fresh_seed())
    p = layout.prepare(qw, s, z, g, 128, 576)
    assert p["qweight"].shape == (16, 640) and p["perm"].dtype == torch.int32
    assert torch.equal(p["perm"][576:], torch.full((64,), 576, dtype=torch.int32))
    assert torch.equal(p["qweight"][:, 576:], z[:, 4:5].expand(-1, 64))
    again = layout.runtime_view({r: p[r] for r in ("qweight", "scales", "zeros", "perm")},
                                p["group_size"], 576)
    assert again["qweight"].data_ptr() == p["qweight"].data_ptr()
    assert torch.equal(layout.dequantize(again, 576), layout.dequantize(p, 576))


def test_w8a16_layout_rejects_bad_storage() -> None:
    qw, s, z, _ = random_w8(8, 256, 128, False, False, fresh_seed())
    with pytest.raises(ValueError, match="qweight"):
        layout.prepare(qw.to(torch.int8), s, z, None, 128, 256)
    with pytest.raises(ValueError, match="scales"):
        layout.prepare(qw, s, z, None, 64, 256)
    with pytest.raises(ValueError, match="g_idx"):
        layout.prepare(qw, s, z, torch.full((256,), 7), 128, 256)


def test_w8a16_reference_matches_float64() -> None:
    seed = fresh_seed()
    qw, s, z, g = random_w8(64, 320, 64, False, True, seed)
    x = torch.randn(5, 320, generator=torch.Generator().manual_seed(seed)).bfloat16()
    bias = torch.randn(64).bfloat16()
    y = reference.w8a16_linear(x, qw, s, z, g, bias, 64)
    ref = reference.w8a16_linear_f64(x, qw, s, z, g, bias, 64)
    assert y.dtype == torch.bfloat16
    assert ((y.double() - ref).norm() / ref.norm()).item() < TOL[torch.bfloat16], seed


def test_w8a8_layout_passes_through() -> None:
    w, s = random_w8a8(40, 576, fresh_seed())
    p = w8a8_layout.runtime_view({"qweight": w, "scales": s})
    assert p["qweight"].data_ptr() == w.data_ptr() and p["scales"].data_ptr() == s.data_ptr()
    assert torch.equal(w8a8_layout.dequantize(p, 576), w.float() * s[:, None])
    with pytest.raises(ValueError, match="qweight"):
        w8a8_layout.prepare(w.to(torch.uint8), s)
    with pytest.raises(ValueError, match="scales"):
        w8a8_layout.prepare(w, s[:-1])


def test_w8a8_reference_f64_agrees() -> None:
    seed = fresh_seed()
    w, s = random_w8a8(64, 576, seed)
    x = torch.randn(7, 576, generator=torch.Generator().manual_seed(seed))
    b = torch.randn(64)
    y, ref = w8a8_ref.w8a8_linear(x, w, s, b), w8a8_ref.w8a8_linear_f64(x, w, s, b)
    assert ((y.double() - ref).abs() <= 2.0 ** -22 * (ref.abs() + b.double().abs())).all()


# ---- shared checks -----------------------------------------------------------------------

def check_w8a16(m: int, n: int, k: int, group: int, *, sym: bool = False,
                act_order: bool = False, bias: bool = False,
                dtype: torch.dtype = torch.bfloat16, device: str = "cuda", config=None,
                path: str = "auto") -> torch.Tensor:
    """One w8a16_linear call on fresh random inputs, checked against float64."""
    tg = kernel("w8a16.triton_gemm")
    seed = fresh_seed()
    qw, s, z, g = random_w8(n, k, group, sym, act_order, seed, device)
    p = layout.prepare(qw, s, z, g, group, k)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, generator=gen, device=device).to(dtype)
    b = torch.randn(n, generator=gen, device=device).to(dtype) if bias else None
    out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
    y = tg.w8a16_linear(x, p, b, out, config=config, path=path)
    ref = reference.w8a16_linear_f64(x, qw, s, z, g, b, group)
    what = (f"seed={seed} m={m} n={n} k={k} group={group} sym={sym} act={act_order} "
            f"bias={bias} {dtype} {config} {path}")
    assert y.data_ptr() == out.data_ptr(), what
    assert not torch.isnan(y).any(), f"unwritten (NaN) outputs: {what}"
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"rel err {err:.3e}: {what}"
    return y


def check_w8a8(m: int, n: int, k: int, *, bias: bool = False,
               dtype: torch.dtype = torch.bfloat16, device: str = "cuda", config=None,
               path: str = "auto", zero_row: bool = False) -> torch.Tensor:
    """One w8a8_linear call on fresh random inputs: exact quantized activations, outputs
    within float rounding of float64 (see the module docstring)."""
    tg = kernel("w8a8.triton_gemm")
    seed = fresh_seed()
    w, s = random_w8a8(n, k, seed, device)
    p = w8a8_layout.prepare(w, s)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(m, k, generator=gen, device=device) * 4).to(dtype)
    if zero_row:
        x[m // 2] = 0
    b = torch.randn(n, generator=gen, device=device).to(dtype) if bias else None
    what = f"seed={seed} m={m} n={n} k={k} bias={bias} {dtype} {config} {path}"

    xq, sx = tg.quantize_per_token(x)
    # the reference quantization on the CPU as well as on the device must agree with the
    # kernel bit for bit (the reference divides correctly rounded on every device)
    rq, rs = w8a8_ref.quantize_per_token(x)
    cq, cs = w8a8_ref.quantize_per_token(x.cpu())
    assert torch.equal(rq.cpu(), cq) and torch.equal(rs.cpu(), cs), f"reference: {what}"
    assert torch.equal(xq, rq), f"quantized activations differ: {what}"
    assert sx.dtype == torch.float32 and torch.equal(sx, rs[:, 0]), f"scales differ: {what}"

    out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
    y = tg.w8a8_linear(x, p, b, out, config=config, path=path)
    assert y.data_ptr() == out.data_ptr() and y.dtype == dtype, what
    assert not torch.isnan(y).any(), f"unwritten (NaN) outputs: {what}"
    ref = w8a8_ref.w8a8_linear_f64(x, w, s, b)
    prod = (rq.double() @ w.double().T) * rs.double() * s.double()[None, :]
    unit = UNIT[dtype] * (2 if INTERPRET and dtype == torch.bfloat16 else 1)
    bound = unit * ref.abs() + 2.0 ** -21 * (prod.abs() + (b.double().abs() if bias else 0))
    bad = (y.double() - ref).abs() > bound
    assert not bad.any(), (f"{int(bad.sum())} outputs beyond float rounding, worst "
                           f"{((y.double() - ref).abs() / bound).max():.2f}x: {what}")
    return y


# ---- GPU ---------------------------------------------------------------------------------

MS = [1, 3, 16, 33, 128]


class TestGPU:
    pytestmark = [pytest.mark.gpu,
                  pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
                  pytest.mark.skipif(not HAS_TRITON, reason="needs triton")]

    @pytest.mark.parametrize("m", MS + [512])
    @pytest.mark.parametrize("k,n,group,sym", [
        (4096, 4096, 0, True),      # `--int8`: per channel, symmetric
        (576, 1536, 0, True), (1000, 520, 0, True),       # K = 1000: masked K tail
        (576, 1536, 128, False),    # groups, partial last group (64 of 128)
        (1000, 520, 128, False)])   # partial last group (104 of 128), masked K tail
    def test_w8a16(self, m: int, k: int, n: int, group: int, sym: bool) -> None:
        check_w8a16(m, n, k, group, sym=sym)

    @pytest.mark.parametrize("m", MS)
    @pytest.mark.parametrize("group", [32, 128])
    def test_w8a16_act_order_bias(self, m: int, group: int) -> None:
        check_w8a16(m, 1536, 576, group, act_order=True, bias=True)

    @pytest.mark.parametrize("m", [1, 16, 33])
    @pytest.mark.parametrize("group", [0, 128])
    def test_w8a16_fp16(self, m: int, group: int) -> None:
        check_w8a16(m, 1536, 576, group, sym=True, bias=True, dtype=torch.float16)

    @pytest.mark.parametrize("m", [1, 5, 130])
    @pytest.mark.parametrize("variant,dtype,group", [
        ("fac", torch.bfloat16, 0), ("fac", torch.float16, 64), ("fac-split3", torch.bfloat16, 64),
        ("deq", torch.bfloat16, 64), ("deq", torch.float16, 64),
        ("deq-split2", torch.bfloat16, 64), ("gemv", torch.bfloat16, 0),
        ("gemv", torch.float16, 64), ("gemv-split4", torch.bfloat16, 64),
        ("cvt", torch.bfloat16, 0), ("cvt", torch.float16, 64), ("magic32", torch.float16, 0),
        ("nohoist", torch.bfloat16, 0), ("big", torch.bfloat16, 0), ("big", torch.float16, 64),
        ("cublas", torch.bfloat16, 0), ("cublas", torch.float16, 64)])
    def test_w8a16_every_path(self, m: int, variant: str, dtype: torch.dtype,
                              group: int) -> None:
        """Each kernel variant on ragged sizes (N, M not tile multiples; group 0 with K = 1000,
        not a multiple of 32: masked K tails), bias, act-order for group 64."""
        tg = kernel("w8a16.triton_gemm")
        C = tg.GemmConfig
        cfgs = {"fac": C(16, 64, 128), "fac-split3": C(32, 128, 128, split_k=3),
                "deq": C(64, 64, 64, factored=False),
                "deq-split2": C(128, 128, 128, 2, factored=False, num_warps=8, num_stages=3),
                "gemv": C(16, 64, 128, kernel="gemv"),
                "gemv-split4": C(16, 32, 256, 4, kernel="gemv"),
                "cvt": C(16, 64, 128, convert="cvt"),
                "magic32": C(16, 64, 128, 2, convert="magic32"),
                "nohoist": C(16, 64, 128, 3, hoist=False),
                "big": C(128, 256, 64, num_warps=8, num_stages=3)}
        k = 1000 if group == 0 else 576
        check_w8a16(m, 1000, k, group, act_order=group > 0, bias=True, dtype=dtype,
                    config=cfgs.get(variant), path="cublas" if variant == "cublas" else "fused")

    def test_w8a16_split_k_deterministic(self) -> None:
        tg = kernel("w8a16.triton_gemm")
        qw, s, z, g = random_w8(4096, 4096, 128, False, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 128, 4096)
        x = torch.randn(4, 4096, device="cuda").bfloat16()
        for cfg in (tg.GemmConfig(16, 64, 128, 8), tg.GemmConfig(16, 64, 128, 8, kernel="gemv")):
            ys = [tg.w8a16_linear(x, p, config=cfg) for _ in range(3)]
            assert all(torch.equal(ys[0], y) for y in ys[1:]), cfg
            assert int(p["locks"].abs().sum()) == 0                 # counters left at zero

    def test_w8a16_3d_input(self) -> None:
        tg = kernel("w8a16.triton_gemm")
        qw, s, z, g = random_w8(256, 512, 0, True, False, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 0, 512)
        x = torch.randn(2, 3, 512, device="cuda").bfloat16()
        y = tg.w8a16_linear(x, p)
        ref = reference.w8a16_linear_f64(x.reshape(6, 512), qw, s, z, g, None, 0)
        assert y.shape == (2, 3, 256)
        assert ((y.reshape(6, 256).double() - ref).norm() / ref.norm()).item() < 1e-2

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_w8a16_dequantize_w_exact(self, dtype: torch.dtype) -> None:
        """The cuBLAS path's W: (q - z) * s in float32, rounded once to nearest."""
        tg = kernel("w8a16.triton_gemm")
        qw, s, z, g = random_w8(1000, 576, 64, False, True, fresh_seed(), "cuda")
        p = layout.prepare(qw, s, z, g, 64, 576)
        want = reference.dequantize(qw, s, z, g, 64, 576)
        assert torch.equal(tg.dequantize_w(p, 576, dtype), want.to(dtype))

    @pytest.mark.parametrize("m", MS + [512])
    @pytest.mark.parametrize("k,n", [(576, 1536), (4096, 4096), (1000, 520)])
    def test_w8a8(self, m: int, k: int, n: int) -> None:
        check_w8a8(m, n, k, bias=True)

    @pytest.mark.parametrize("m", [1, 3, 16, 33])
    @pytest.mark.parametrize("variant,dtype", [
        ("swap", torch.bfloat16), ("swap", torch.float16), ("swap-split3", torch.bfloat16),
        ("quant", torch.float32), ("quant", torch.bfloat16), ("quant-split2", torch.float32),
        ("mk", torch.bfloat16), ("mk", torch.float32), ("mk-split2", torch.bfloat16),
        ("int_mm", torch.bfloat16), ("int_mm", torch.float32)])
    def test_w8a8_every_path(self, m: int, dtype: torch.dtype, variant: str) -> None:
        """Each kernel variant on ragged sizes (K = N = 1000: masked K tails), bias, a zero
        row; float32 x makes the bound tight enough to catch one x_q off by one."""
        tg = kernel("w8a8.triton_gemm")
        C = tg.GemmConfig
        cfgs = {"swap": C(16, 64, 128), "swap-split3": C(32, 128, 128, 3),
                "quant": C(16, 64, 128, quant=True), "quant-split2": C(16, 128, 64, 2,
                                                                        quant=True),
                "mk": C(64, 128, 128, swap=False), "mk-split2": C(128, 128, 128, 2, swap=False,
                                                                 num_warps=8)}
        check_w8a8(m, 1000, 1000, bias=True, dtype=dtype, config=cfgs.get(variant),
                   path="int_mm" if variant == "int_mm" else "fused", zero_row=m > 1)

    def test_w8a8_split_k_deterministic(self) -> None:
        tg = kernel("w8a8.triton_gemm")
        w, s = random_w8a8(4096, 4096, fresh_seed(), "cuda")
        p = w8a8_layout.prepare(w, s)
        x = torch.randn(4, 4096, device="cuda").bfloat16()
        cfg = tg.GemmConfig(16, 64, 128, 8)
        ys = [tg.w8a8_linear(x, p, config=cfg) for _ in range(3)]
        assert all(torch.equal(ys[0], y) for y in ys[1:])
        assert int(p["locks"].abs().sum()) == 0

    def test_w8a8_quantize_large_rows(self) -> None:
        """K beyond one quantization block (4096): the two-pass loop over K."""
        tg = kernel("w8a8.triton_gemm")
        x = torch.randn(3, 14336, device="cuda").bfloat16() * 7
        xq, sx = tg.quantize_per_token(x)
        rq, rs = w8a8_ref.quantize_per_token(x)
        assert torch.equal(xq, rq) and torch.equal(sx, rs[:, 0])


# ---- Triton interpreter (CPU) ------------------------------------------------------------

W8A16_INTERP = [   # m, n, k, group, sym, act_order, bias, dtype, config kwargs
    (3, 48, 576, 128, False, False, True, torch.float16, dict(block_n=32, split_k=2)),
    (1, 48, 576, 0, True, False, True, torch.float16, dict(block_n=32)),
    (16, 40, 1000, 0, False, False, False, torch.float16, dict(block_n=32, split_k=3)),
    (33, 40, 576, 128, True, True, True, torch.float16,
     dict(block_m=32, block_n=32, block_k=64, split_k=3, factored=False)),
    (3, 40, 576, 64, False, True, False, torch.float16, dict(block_n=32, convert="magic32")),
    (3, 40, 1000, 100, True, False, True, torch.float16, dict(block_n=32, convert="cvt")),
    (3, 40, 1000, 256, False, False, True, torch.float16,
     dict(block_n=32, block_k=256, split_k=2)),
    (1, 40, 576, 128, False, True, True, torch.bfloat16, dict(block_n=32, split_k=2,
                                                              kernel="gemv")),
    (3, 40, 1000, 0, True, False, True, torch.bfloat16, dict(block_n=16, split_k=3,
                                                             kernel="gemv")),
    (1, 40, 1000, 0, False, False, False, torch.float16, dict(block_n=64, kernel="gemv")),
    (5, 40, 576, 0, True, False, True, torch.float16, dict(block_n=32, split_k=2, hoist=False)),
]

W8A8_INTERP = [   # m, n, k, bias, dtype, config kwargs
    (1, 48, 576, True, torch.bfloat16, dict(block_n=32, split_k=2)),
    (3, 48, 1000, True, torch.float16, dict(block_n=32)),
    (16, 40, 576, False, torch.float32, dict(block_n=32, quant=True)),
    (3, 40, 1000, True, torch.float32, dict(block_n=32, split_k=3, quant=True)),
    (33, 40, 576, True, torch.bfloat16, dict(block_m=32, block_n=16, block_k=64, swap=False)),
    (33, 24, 1000, False, torch.float32, dict(block_m=16, block_n=16, split_k=2, swap=False)),
]


class TestInterpreter:
    pytestmark = INTERPRETER_MARKS

    @pytest.mark.parametrize("m,n,k,group,sym,act_order,bias,dtype,c", W8A16_INTERP)
    def test_w8a16_fused(self, m, n, k, group, sym, act_order, bias, dtype, c) -> None:
        cfg = kernel("w8a16.triton_gemm").GemmConfig(**c)
        check_w8a16(m, n, k, group, sym=sym, act_order=act_order, bias=bias, dtype=dtype,
                    device="cpu", config=cfg, path="fused")

    @pytest.mark.parametrize("group,act_order", [(0, False), (64, True), (128, False)])
    def test_w8a16_cublas_path(self, group: int, act_order: bool) -> None:
        check_w8a16(5, 40, 1000 if group != 64 else 576, group, act_order=act_order,
                    bias=True, device="cpu", path="cublas")

    def test_w8a16_auto_dispatch(self) -> None:
        """Default configs (pick_config) at a decode and a prefill M, and the cuBLAS bucket."""
        tg = kernel("w8a16.triton_gemm")
        for m in (2, 40, tg.CUBLAS_MIN_M):
            check_w8a16(m, 64, 256, 128, dtype=torch.float16, device="cpu")

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_w8a16_dequantize_w(self, dtype: torch.dtype) -> None:
        tg = kernel("w8a16.triton_gemm")
        qw, s, z, g = random_w8(40, 576, 64, False, True, fresh_seed())
        p = layout.prepare(qw, s, z, g, 64, 576)
        want = reference.dequantize(qw, s, z, g, 64, 576)
        got = tg.dequantize_w(p, 576, dtype)
        if dtype == torch.float16:
            assert torch.equal(got, want.half())
        else:   # the interpreter rounds float32 -> bf16 toward zero, the GPU to nearest
            assert ((got.float() - want).abs() <= want.abs() * 2.0 ** -7).all()

    @pytest.mark.parametrize("m,n,k,bias,dtype,c", W8A8_INTERP)
    def test_w8a8(self, m, n, k, bias, dtype, c) -> None:
        cfg = kernel("w8a8.triton_gemm").GemmConfig(**c)
        check_w8a8(m, n, k, bias=bias, dtype=dtype, device="cpu", config=cfg, path="fused",
                   zero_row=m > 2)

    def test_w8a8_auto_dispatch(self) -> None:
        for m in (1, 20):
            check_w8a8(m, 64, 256, bias=True, dtype=torch.float16, device="cpu")

    def test_w8a8_quantize_ties_and_long_rows(self) -> None:
        """Exact halves (x / s = j + 0.5 round to even) and K over one block (4096)."""
        tg = kernel("w8a8.triton_gemm")
        x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(fresh_seed()))
        x[:, 0] = 127.0                                   # s = 1: x / s = x exactly
        x[:, 1:9] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5])
        xq, sx = tg.quantize_per_token(x)
        rq, rs = w8a8_ref.quantize_per_token(x)
        assert torch.equal(xq, rq) and torch.equal(sx, rs[:, 0])
