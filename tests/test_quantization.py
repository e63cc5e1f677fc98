"""Quantization: the integer math, bit packing, the qlinear reference, RTN and GPTQ.

References: float64 computations written here from the stated formulas, a plain
(unblocked, float64) GPTQ following the paper's algorithm, and the float model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import optimizer
from optimizer.errors import InvalidInput
from optimizer.ir import format_graph
from optimizer.kernels.qlinear.reference import dequantize, pack_bits, qlinear, unpack_bits
from optimizer.passes.gptq_solver import gptq, relative_output_error
from optimizer.passes.quant_math import (MAX_SCALE, MIN_SCALE, rtn, rtn_dequantized,
                                         scale_zero, search_scale_zero)
from tiny_models import add_tokenizer, save_tiny

CALIB = Path(__file__).parent / "data" / "calib_small.jsonl"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- packing and the qlinear reference ------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("k", [1, 7, 64, 576])
def test_pack_round_trip(bits: int, k: int) -> None:
    codes = torch.randint(0, 1 << bits, (5, k), generator=_gen(k + bits))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (k * bits + 7) // 8)
    assert torch.equal(unpack_bits(packed, bits, k), codes)


def test_pack_hand_worked() -> None:
    # 4 bits: byte j = code 2j | code 2j+1 << 4
    assert pack_bits(torch.tensor([[1, 2, 3, 4]]), 4).tolist() == [[0x21, 0x43]]
    # 3 bits, LSB-first stream: 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 = 0x1F58D1
    assert pack_bits(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]]), 3).tolist() == \
        [[0xD1, 0x58, 0x1F]]


def test_qlinear_reference_is_exact() -> None:
    """Dequantize + matmul equals a float64 computation from the integers within fp32
    rounding, and the dequantized weight itself is bit-exact (q - z) * s."""
    n, k, bits, gs = 24, 80, 4, 32
    g = _gen(0)
    codes = torch.randint(0, 16, (n, k), generator=g)
    scales = (torch.rand(n, 3, generator=g) * 0.1 + 0.01).half()
    zeros = torch.randint(0, 16, (n, 3), generator=g).to(torch.uint8)
    x = torch.randn(6, k, generator=g)
    col_group = torch.arange(k) // gs
    ref_w = (codes.double() - zeros.double()[:, col_group]) * scales.double()[:, col_group]
    packed = pack_bits(codes, bits)
    w = dequantize(packed, scales, zeros, None, bits, gs, k)
    assert torch.equal(w.double(), ref_w)   # exact: small ints times float16 values
    y = qlinear(x, packed, scales, zeros, None, None, bits, gs)
    assert (y.double() - x.double() @ ref_w.T).abs().max() < 1e-5


# --- the integer math ----------------------------------------------------------------

@pytest.mark.parametrize("sym", [False, True])
def test_rtn_error_bound_and_partial_group(sym: bool) -> None:
    w = torch.randn(16, 576, generator=_gen(1))
    codes, scales, zeros = rtn(w, 4, 128, sym)
    assert scales.shape == (16, 5) and codes.min() >= 0 and codes.max() <= 15
    deq = rtn_dequantized(codes, scales, zeros, 128)
    step = scales.repeat_interleave(128, 1)[:, :576]
    # round-to-nearest: within half a step (sym clamps the most negative code range)
    assert ((deq - w).abs() <= step * 0.5 + 1e-6).all()


def test_degenerate_groups_give_finite_scales_and_exact_zeros() -> None:
    w = torch.randn(4, 96, generator=_gen(2))
    w[0, :32] = 0.0            # all-zero group
    w[1, 32:64] = 1e-12        # underflows float16
    w[2, 64:] = 1e7            # beyond float16's range per step
    for sym in (False, True):
        codes, scales, zeros = rtn(w, 4, 32, sym)
        assert torch.isfinite(scales.half()).all() and (scales.half() > 0).all()
        assert (scales >= MIN_SCALE).all() and (scales <= MAX_SCALE).all()
        deq = rtn_dequantized(codes, scales, zeros, 32)
        assert (deq[0, :32] == 0).all()
        assert torch.isfinite(deq).all()


def _range_error64(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int,
                   norm: float, c: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row sum_k c_k |(q - z) s - w|^norm in float64, q = clamp(round(w / s) + z)."""
    w, s, z = w.double(), s.double(), z.double()
    q = torch.clamp(torch.round(w / s) + z, 0, (1 << bits) - 1)
    err = ((q - z) * s - w).abs().pow(norm)
    return (err if c is None else err * c.double()).sum(1)


def _reference_range_search(w: torch.Tensor, bits: int, sym: bool, grid: int,
                            max_shrink: float, norm: float,
                            c: torch.Tensor | None = None) -> torch.Tensor:
    """The least per-row error over the shrunk ranges p * [min(w, 0), max(w, 0)] (float64,
    one p at a time, scales rounded to float16 as stored)."""
    w = w.double()
    maxq = (1 << bits) - 1
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    best = torch.full((w.shape[0],), float("inf"), dtype=torch.float64)
    for i in range(int(max_shrink * grid)):
        p = 1 - i / grid
        if sym:
            s = torch.maximum(-p * lo, p * hi) / (maxq // 2)
        else:
            s = (p * hi - p * lo) / maxq
        s = s.clamp(MIN_SCALE, MAX_SCALE).half().double()
        z = (torch.full_like(s, float(1 << (bits - 1))) if sym
             else torch.clamp(torch.round(-p * lo / s), 0, maxq))
        best = torch.minimum(best, _range_error64(w, s[:, None], z[:, None], bits, norm, c))
    return best


@pytest.mark.parametrize("sym", [False, True])
def test_range_search_finds_the_least_error(sym: bool) -> None:
    """Heavy-tailed rows (where clipping pays): the searched range has the reference's least
    error over the grid, never more than the plain min/max range, and less on most rows;
    with column weights, the weighted error is the one minimised."""
    g = _gen(11)
    w = torch.randn(40, 128, generator=g) * torch.rand(40, 1, generator=g)
    w[:, :3] *= 6                                      # a few outliers per row
    s, z = search_scale_zero(w, 4, sym, grid=50, max_shrink=0.8, norm=2.4)
    assert s.shape == z.shape == (40, 1) and torch.equal(s, s.half().float())
    ours = _range_error64(w, s, z, 4, 2.4)
    assert (ours <= _reference_range_search(w, 4, sym, 50, 0.8, 2.4) * (1 + 1e-5)).all()
    plain = _range_error64(w, *scale_zero(w, 4, sym), 4, 2.4)
    assert (ours <= plain * (1 + 1e-6)).all() and (ours < 0.999 * plain).float().mean() > 0.5
    c = torch.rand(128, generator=g) ** 4 * 100 + 0.01
    s, z = search_scale_zero(w, 4, sym, norm=2.0, col_weight=c)
    ref = _reference_range_search(w, 4, sym, 100, 0.8, 2.0, c)
    assert (_range_error64(w, s, z, 4, 2.0, c) <= ref * (1 + 1e-5)).all()


def test_calibration_prose_is_not_the_evaluation_text() -> None:
    """tests/data/calib_prose.txt (what the quality bars calibrate on) shares no run of 8
    words with bench/eval.txt (what they evaluate on)."""
    def shingles(path: Path) -> set[str]:
        words = path.read_text(encoding="utf-8").lower().split()
        return {" ".join(words[i:i + 8]) for i in range(len(words) - 7)}

    root = Path(__file__).resolve().parents[1]
    calib = shingles(root / "tests" / "data" / "calib_prose.txt")
    assert len(calib) > 10000 and not calib & shingles(root / "bench" / "eval.txt")


# --- GPTQ ------------------------------------------------------------------------------

def _reference_gptq(w: torch.Tensor, h: torch.Tensor, bits: int, gs: int,
                    damp: float, mse: float = 0.0) -> torch.Tensor:
    """The paper's algorithm, column by column in float64, no blocking, no act-order:
    quantize column j, then W[:, j+1:] -= err_j * Hinv_j[j, j+1:] / Hinv_j[j, j] with the
    inverse of H restricted to the not-yet-quantized columns. With ``mse``, each group's
    range is the shrink p * [lo, hi] (p = 1 - i/100, i < 80) of least sum |Q(w) - w|^mse
    over the group's current (updated) columns."""
    w = w.double().clone()
    k = w.shape[1]
    h = h.double() + damp * torch.diag(h).double().mean() * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    codes = torch.empty(w.shape, dtype=torch.int64)
    maxq = (1 << bits) - 1
    for j in range(k):
        if j % gs == 0:
            blk = w[:, j:j + gs]
            lo, hi = blk.amin(1).clamp(max=0), blk.amax(1).clamp(min=0)
            best = torch.full((w.shape[0],), float("inf"), dtype=torch.float64)
            for p in ([1 - i / 100 for i in range(80)] if mse else [1.0]):
                sp = ((p * hi - p * lo) / maxq).clamp(MIN_SCALE, MAX_SCALE).half().double()
                zp = torch.clamp(torch.round(-p * lo / sp), 0, maxq)
                err = _range_error64(blk, sp[:, None], zp[:, None], bits, mse or 2.0)
                take = err < best
                best = torch.where(take, err, best)
                s = sp if p == 1.0 else torch.where(take, sp, s)
                z = zp if p == 1.0 else torch.where(take, zp, z)
        q = torch.clamp(torch.round(w[:, j] / s) + z, 0, maxq)
        codes[:, j] = q.long()
        err = (w[:, j] - (q - z) * s) / hinv[j, j]
        w[:, j + 1:] -= err[:, None] * hinv[j, j + 1:][None, :]
        # remove column j from the inverse (Gaussian elimination step on H^-1)
        hinv = hinv - hinv[:, j:j + 1] @ hinv[j:j + 1, :] / hinv[j, j]
    return codes


def _problem(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated inputs (rank-24 plus noise) with a few outlier channels, like real
    activations: where GPTQ's error compensation has something to work with."""
    g = _gen(seed)
    w = torch.randn(32, 96, generator=g)
    x = torch.randn(512, 24, generator=g) @ torch.randn(24, 96, generator=g)
    x = x + 0.1 * torch.randn(512, 96, generator=g)
    x[:, :4] *= 8
    return w, 2 * x.T @ x / 512


@pytest.mark.parametrize("mse", [0.0, 2.4])
def test_gptq_matches_the_reference_algorithm(mse: float) -> None:
    w, h = _problem()
    r = gptq(w, h, 4, 32, sym=False, act_order=False, damp=0.01, block=16, mse=mse)
    ref = _reference_gptq(w, h, 4, 32, 0.01, mse)
    agree = (r.codes == ref).float().mean().item()
    assert agree > 0.99, agree


def test_gptq_beats_rtn_and_reports_errors() -> None:
    w, h = _problem(4)
    codes, scales, zeros = rtn(w, 4, 32, False)
    rtn_err = relative_output_error(w, rtn_dequantized(codes, scales, zeros, 32), h)
    for act_order in (False, True):
        r = gptq(w, h, 4, 32, False, act_order=act_order)
        assert r.rel_error < 0.6 * rtn_err
        # the stored integers reproduce the reported dequantized weight exactly
        g_idx = r.g_idx if r.g_idx is not None else torch.arange(96) // 32
        assert torch.equal(r.deq, (r.codes.float() - r.zeros[:, g_idx]) * r.scales[:, g_idx])
        assert (r.g_idx is not None) == act_order


def test_gptq_static_groups_keep_natural_group_order() -> None:
    w, h = _problem(5)
    r = gptq(w, h, 4, 32, False, act_order=True, static_groups=True)
    assert r.g_idx is None
    codes, scales, zeros = rtn(w, 4, 32, False)
    assert torch.equal(r.scales, scales)   # groups' params fixed from the original weights


def test_gptq_raises_dampening_then_falls_back() -> None:
    w, _ = _problem(6)
    v = torch.randn(96, 1, generator=_gen(7))
    h = v @ v.T - 0.05 * torch.eye(96)          # indefinite, mean diagonal positive
    r = gptq(w, h, 4, 32, False, damp=0.01)
    assert r.info.get("damp_raised_to", 0) > 0.01 or "fallback" in r.info
    r = gptq(w, -torch.eye(96), 4, 32, False)   # never positive definite
    assert r.info["fallback"].startswith("rtn")
    assert torch.isfinite(r.deq).all()


# --- the passes on a model -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = save_tiny("llama", folder, intermediate_size=72)
    add_tokenizer(folder, 96, CALIB)
    return folder, model


def _logits(graph, ids, tmp: Path) -> torch.Tensor:
    out = optimizer.save(graph, tmp)
    return optimizer.runtime.load(out).logits(ids)


def test_rtn_pass_structure_and_exactness(tiny, tmp_path) -> None:
    folder, model = tiny
    g = optimizer.import_model(folder)
    q = optimizer.PassManager(["quantize-rtn:bits=4,group_size=32"]).run(g)
    text = format_graph(q)
    assert text.count("= qlinear(") == 14 and text.count("= linear(") == 1   # lm_head
    assert "%logits: float32[T,96] = linear(" in text
    ids = torch.arange(1, 17)
    ours = _logits(q, ids, tmp_path / "q")
    # independent: the float model with each weight replaced by (q - z) * s in float64
    sd = model.state_dict()
    for name, w in sd.items():
        if name.endswith("proj.weight"):
            codes, scales, zeros = rtn(w.float(), 4, 32, False)
            sd[name] = rtn_dequantized(codes, scales, zeros, 32)
    ref_model = type(model)(model.config).eval()
    ref_model.load_state_dict(sd)
    with torch.no_grad():
        ref = ref_model(ids[None]).logits[0]
    assert (ours - ref).abs().max() < 1e-4


def test_gptq_pass_on_a_model(tiny, tmp_path) -> None:
    folder, model = tiny
    g = optimizer.import_model(folder)
    spec = f"gptq:bits=4,group_size=32,calib={CALIB},calib_samples=8,calib_seq_len=16"
    q = optimizer.PassManager([spec]).run(g)
    text = format_graph(q)
    assert text.count("= qlinear(") == 14 and "g_idx=@" in text     # act-order by default
    report = q.meta["quantization"][-1]
    assert report["pass"] == "gptq" and len(report["linears"]) == 14
    assert report["calibration"]["source"] == str(CALIB)
    rtn_q = optimizer.PassManager(["quantize-rtn:bits=4,group_size=32"]).run(g)
    ids = torch.tensor(json.loads(g.meta["tokenizer"])["model"]["vocab"]["the"]).repeat(3)
    ids = torch.cat([ids, torch.arange(5, 20)])
    with torch.no_grad():
        ref = model(ids[None]).logits[0]
    err_gptq = (_logits(q, ids, tmp_path / "g") - ref).norm() / ref.norm()
    err_rtn = (_logits(rtn_q, ids, tmp_path / "r") - ref).norm() / ref.norm()
    assert err_gptq < 0.2 and err_rtn < 0.2
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["quantization"][0]["linears"].keys() == report["linears"].keys()


def test_quantized_artifact_is_smaller(tiny, tmp_path) -> None:
    folder, _ = tiny
    g = optimizer.PassManager(["cast-weights:dtype=float16"]).run(optimizer.import_model(folder))
    q = optimizer.PassManager(["quantize-rtn:bits=4,group_size=32"]).run(g)
    lin = [w for n, w in g.weights.items() if n.endswith("proj.weight")]
    qw = [w for n, w in q.weights.items() if "proj." in n]
    assert sum(w.nbytes for w in qw) < 0.35 * sum(w.nbytes for w in lin)


@pytest.mark.parametrize("spec,match", [
    ("quantize-rtn:bits=5", "bits: expected one of"),
    ("quantize-rtn:group_size=4", "group_size"),
    ("gptq:damp=0", "damp"),
    ("gptq:calib=/nonexistent.txt", "calib: file"),
])
def test_bad_options_fail_before_work(spec: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        optimizer.PassManager([spec])


def test_nan_weight_is_invalid_input(tmp_path) -> None:
    from safetensors.torch import load_file, save_file
    save_tiny("llama", tmp_path)
    t = load_file(tmp_path / "model.safetensors")
    t["model.layers.1.mlp.down_proj.weight"][0, 0] = float("inf")
    save_file(t, tmp_path / "model.safetensors", metadata={"format": "pt"})
    g = optimizer.import_model(tmp_path)
    with pytest.raises(InvalidInput, match="'model.layers.1.mlp.down_proj.weight' has 1 NaN/Inf"):
        optimizer.PassManager(["quantize-rtn"]).run(g)
