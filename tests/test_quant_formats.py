"""GPTQ (v1) and AWQ (GEMM) checkpoint layouts: exact packing round trips, hand-worked int32
words, an independent dequantizer transcribed from the consumers' unpacking (and the real
AutoGPTQ / AutoAWQ code when importable), export -> import end to end, bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import optimizer
from optimizer.errors import InvalidInput
from optimizer.exporters import export_hf_quantized
from optimizer.formats import awq_layout, gptq_layout
from optimizer.formats.safetensors_io import SafetensorsFile, read_header, write_safetensors
from optimizer.ir.scratch import ScratchDir
from optimizer.kernels.qlinear.reference import dequantize, group_index, pack_bits
from tiny_models import save_tiny

IDS = [1, 5, 9, 20, 3, 77, 42, 8]


def _i32(word: int) -> int:
    """The int32 stored for an unsigned 32-bit word."""
    return word - (1 << 32) if word >= 1 << 31 else word


def _random_linear(n: int, k: int, bits: int, group: int, seed: int, act_order: bool = False,
                   zero_min: int = 1) -> tuple[torch.Tensor, ...]:
    """Random codes [N, K], float16 scales [N, G], zeros [N, G] in [zero_min, 2^b), g_idx."""
    gen = torch.Generator().manual_seed(seed)
    groups = gptq_layout.n_groups(k, group)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen)
    scales = (torch.rand(n, groups, generator=gen) * 0.05 + 0.005).half()
    zeros = torch.randint(zero_min, 1 << bits, (n, groups), generator=gen)
    g_idx = group_index(k, group)
    if act_order:   # GPTQ act-order: groups follow a permutation of the input channels
        perm = torch.randperm(k, generator=gen)
        g_idx = torch.empty(k, dtype=torch.int64)
        g_idx[perm] = torch.arange(k) // group
    assert codes.any() and zeros.any()
    return codes, scales, zeros, g_idx


def _ours(codes, scales, zeros, g_idx, bits, group) -> torch.Tensor:
    """Float32 [N, K] by kernels/qlinear/reference.py from our packed storage."""
    return dequantize(pack_bits(codes, bits), scales, zeros.to(torch.uint8), g_idx.int(), bits,
                      group, codes.shape[1])


# ---- exact round trips -------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_round_trip_k576_group128(bits: int, act_order: bool) -> None:
    n, k, group = 64, 576, 128                     # 5 groups, the last one of 64 channels
    codes, scales, zeros, g_idx = _random_linear(n, k, bits, group, bits, act_order)
    stored = gptq_layout.to_gptq(codes, scales, zeros, g_idx, bits)
    want = gptq_layout.shapes(k, n, 5, bits)
    assert {r: (t.dtype, tuple(t.shape)) for r, t in stored.items()} == want
    c, s, z, g = gptq_layout.from_gptq(**stored, bits=bits)
    assert torch.equal(c, codes) and torch.equal(s, scales)
    assert torch.equal(z, zeros) and torch.equal(g, g_idx)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_zero_point_zero_wraps_and_round_trips(bits: int) -> None:
    codes, scales, zeros, g_idx = _random_linear(32, 64, bits, 16, 7, zero_min=0)
    zeros[0, 0] = 0
    stored = gptq_layout.to_gptq(codes, scales, zeros, g_idx, bits)
    assert torch.equal(gptq_layout.from_gptq(**stored, bits=bits)[2], zeros)


@pytest.mark.parametrize("k,group", [(512, 128), (576, 64), (64, 16)])
def test_awq_round_trip(k: int, group: int) -> None:
    n = 72
    codes, scales, zeros, _ = _random_linear(n, k, 4, group, k, zero_min=0)
    stored = awq_layout.to_awq(codes, scales, zeros)
    assert {r: (t.dtype, tuple(t.shape)) for r, t in stored.items()} == \
        awq_layout.shapes(k, n, k // group)
    c, s, z = awq_layout.from_awq(**stored)
    assert torch.equal(c, codes) and torch.equal(s, scales) and torch.equal(z, zeros)


# ---- hand-worked words -------------------------------------------------------------------

def _gptq_words(codes_k: dict[int, int], k: int, n: int, bits: int) -> list[int]:
    """qweight[:, 0] for output 0 holding ``codes_k`` (other codes 0)."""
    codes = torch.zeros(n, k, dtype=torch.int64)
    for i, c in codes_k.items():
        codes[0, i] = c
    g = group_index(k, 0)
    ones = torch.ones(n, 1)
    return gptq_layout.to_gptq(codes, ones, ones, g, bits)["qweight"][:, 0].tolist()


def test_gptq_hand_worked_qweight_words() -> None:
    # 4 bits: codes 0..7 along K -> nibbles 0..7 from the lowest bits
    assert _gptq_words(dict(enumerate(range(8))), 8, 8, 4) == [0x76543210]
    assert _gptq_words(dict(enumerate(range(7, -1, -1))), 8, 8, 4) == [0x01234567]
    # 8 bits: one byte per code, lowest first
    assert _gptq_words({0: 1, 1: 2, 2: 3, 3: 250}, 4, 4, 8) == [_i32(0xFA030201)]
    # 2 bits: 3, 2, 1, 0 -> 0b00_01_10_11 = 0x1B per byte
    assert _gptq_words(dict(enumerate([3, 2, 1, 0] * 4)), 16, 16, 2) == [0x1B1B1B1B]
    # 3 bits, 32 codes in 3 words: code 10 (0b101) sits in bits 30-32, code 11 (0b110) in
    # bits 33-35, code 21 (0b011) in bits 63-65, code 31 (0b111) in bits 93-95
    assert _gptq_words({10: 5, 11: 6, 21: 3, 31: 7}, 32, 32, 3) == \
        [0x40000000, _i32(0x8000000D), _i32(0xE0000001)]


def test_gptq_hand_worked_qzeros_words() -> None:
    codes, scales = torch.zeros(8, 8, dtype=torch.int64), torch.ones(8, 1)
    g = group_index(8, 0)
    zeros = torch.arange(1, 9)[:, None]                  # z = 1..8 stored as z - 1 = 0..7
    assert gptq_layout.to_gptq(codes, scales, zeros, g, 4)["qzeros"].tolist() == [[0x76543210]]
    sym = torch.full((8, 1), 8)                           # symmetric 4-bit: 8 -> 7 everywhere
    assert gptq_layout.to_gptq(codes, scales, sym, g, 4)["qzeros"].tolist() == [[0x77777777]]
    zero = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1])[:, None]   # z = 0 wraps to 15
    assert gptq_layout.to_gptq(codes, scales, zero, g, 4)["qzeros"].tolist() == [[0xF]]


def test_awq_hand_worked_words() -> None:
    # output channels n = 0..7 holding codes 0..7: nibble i holds channel AWQ_ORDER[i]
    codes = torch.arange(8)[:, None].expand(8, 4).contiguous()     # [N=8, K=4]
    zeros = torch.tensor([[1], [2], [3], [4], [5], [6], [7], [8]])
    stored = awq_layout.to_awq(codes, torch.ones(8, 1), zeros)
    assert stored["qweight"].tolist() == [[0x75316420]] * 4
    assert stored["qzeros"].tolist() == [[_i32(0x86427531)]]      # no -1 offset in AWQ


# ---- an independent consumer -------------------------------------------------------------

def autogptq_dequantize(qweight, qzeros, scales, g_idx, bits) -> torch.Tensor:
    """AutoGPTQ 0.7 ``qlinear_cuda.QuantLinear.forward``'s torch path, transcribed: the
    weight [N, K] it multiplies by (zeros + 1: the v1 convention)."""
    if bits in (2, 4, 8):
        wf = torch.tensor(list(range(0, 32, bits)), dtype=torch.int32).unsqueeze(0)
        small = torch.int16 if bits == 8 else torch.int8
        zeros = torch.bitwise_right_shift(
            torch.unsqueeze(qzeros, 2).expand(-1, -1, 32 // bits), wf.unsqueeze(0)).to(small)
        zeros = torch.bitwise_and(zeros, (2 ** bits) - 1)
        zeros = (zeros + 1).reshape(scales.shape)
        weight = torch.bitwise_right_shift(
            torch.unsqueeze(qweight, 1).expand(-1, 32 // bits, -1), wf.unsqueeze(-1)).to(small)
        weight = torch.bitwise_and(weight, (2 ** bits) - 1)
    else:
        wf = torch.tensor([[0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0],
                           [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
                           [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0]],
                          dtype=torch.int32).reshape(1, 3, 12)
        zeros = qzeros.reshape(qzeros.shape[0], qzeros.shape[1] // 3, 3, 1).expand(-1, -1, -1, 12)
        zeros = zeros >> wf.unsqueeze(0)
        zeros[:, :, 0, 10] = (zeros[:, :, 0, 10] & 0x3) | ((zeros[:, :, 1, 0] << 2) & 0x4)
        zeros[:, :, 1, 11] = (zeros[:, :, 1, 11] & 0x1) | ((zeros[:, :, 2, 0] << 1) & 0x6)
        zeros = zeros & 0x7
        zeros = torch.cat([zeros[:, :, 0, :11], zeros[:, :, 1, 1:12], zeros[:, :, 2, 1:11]],
                          dim=2)
        zeros = (zeros + 1).reshape(scales.shape)
        weight = qweight.reshape(qweight.shape[0] // 3, 3, 1, qweight.shape[1]).expand(
            -1, -1, 12, -1)
        weight = (weight >> wf.unsqueeze(-1)) & 0x7
        weight[:, 0, 10] = (weight[:, 0, 10] & 0x3) | ((weight[:, 1, 0] << 2) & 0x4)
        weight[:, 1, 11] = (weight[:, 1, 11] & 0x1) | ((weight[:, 2, 0] << 1) & 0x6)
        weight = weight & 0x7
        weight = torch.cat([weight[:, 0, :11], weight[:, 1, 1:12], weight[:, 2, 1:11]], dim=1)
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    w = scales.float()[g_idx.long()] * (weight - zeros[g_idx.long()])     # [K, N]
    return w.t()


AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def autoawq_dequantize_gemm(qweight, qzeros, scales, bits, group_size) -> torch.Tensor:
    """AutoAWQ 0.2 ``utils/packing_utils.dequantize_gemm``, transcribed: weight [N, K]."""
    shifts = torch.arange(0, 32, bits)
    iweights = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(
        torch.int8).view(qweight.shape[0], -1)
    izeros = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(
        torch.int8).view(qzeros.shape[0], -1)
    order = torch.arange(iweights.shape[-1]).view(-1, 32 // bits)[:, AWQ_REVERSE_ORDER].view(-1)
    iweights, izeros = iweights[:, order], izeros[:, order]
    iweights = torch.bitwise_and(iweights, (2 ** bits) - 1)
    izeros = torch.bitwise_and(izeros, (2 ** bits) - 1)
    s = scales.float().repeat_interleave(group_size, dim=0)
    izeros = izeros.repeat_interleave(group_size, dim=0)
    return ((iweights - izeros) * s).t()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_autogptq_unpacking_recovers_our_weight(bits: int, act_order: bool) -> None:
    codes, scales, zeros, g_idx = _random_linear(64, 576, bits, 128, 11 * bits, act_order)
    stored = gptq_layout.to_gptq(codes, scales, zeros, g_idx, bits)
    theirs = autogptq_dequantize(stored["qweight"], stored["qzeros"], stored["scales"],
                                 stored["g_idx"], bits)
    assert torch.equal(theirs, _ours(codes, scales, zeros, g_idx, bits, 128))


def test_autoawq_unpacking_recovers_our_weight() -> None:
    codes, scales, zeros, g_idx = _random_linear(72, 512, 4, 128, 5, zero_min=0)
    stored = awq_layout.to_awq(codes, scales, zeros)
    theirs = autoawq_dequantize_gemm(stored["qweight"], stored["qzeros"], stored["scales"], 4,
                                     128)
    assert torch.equal(theirs, _ours(codes, scales, zeros, g_idx, 4, 128))


def _consumer_file(package: str, relpath: str):
    """One source file of an installed consumer package, loaded on its own (the packages'
    own __init__ needs CUDA builds or transformers 4); skip when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not importable here")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    mod_spec = importlib.util.spec_from_file_location(f"_consumer_{package}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_real_autogptq_packs_and_runs_like_us(bits: int) -> None:
    qlinear = _consumer_file("auto_gptq", "nn_modules/qlinear/qlinear_cuda.py")
    n, k, group = 64, 576, 128
    codes, scales, zeros, g_idx = _random_linear(n, k, bits, group, 3 * bits, act_order=True)
    ours = gptq_layout.to_gptq(codes, scales, zeros, g_idx, bits)
    w = _ours(codes, scales, zeros, g_idx, bits, group)
    linear = torch.nn.Linear(k, n, bias=False)
    linear.weight.data = w.clone()
    ql = qlinear.QuantLinear(bits, group, k, n, bias=False, weight_dtype=torch.float32)
    ql.pack(linear, scales.float(), zeros.int(), g_idx=g_idx.int())   # their packer
    assert torch.equal(ql.qweight, ours["qweight"]) and torch.equal(ql.qzeros, ours["qzeros"])
    x = torch.randn(3, k)                 # outputs ~1e2: float32 summation order differs
    torch.testing.assert_close(ql(x), x @ w.t(), rtol=1e-5, atol=1e-3)


def test_real_autoawq_dequantizes_like_us() -> None:
    packing = _consumer_file("awq", "utils/packing_utils.py")
    codes, scales, zeros, g_idx = _random_linear(72, 512, 4, 128, 9, zero_min=0)
    stored = awq_layout.to_awq(codes, scales, zeros)
    theirs = packing.dequantize_gemm(stored["qweight"], stored["qzeros"],
                                     stored["scales"].float(), 4, 128)
    assert torch.equal(theirs.t(), _ours(codes, scales, zeros, g_idx, 4, 128))


# ---- export -> import end to end ---------------------------------------------------------

@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[int, Path]:
    """Tiny llamas with intermediate 72 (partial group of 16) and 80 (whole groups)."""
    out = {}
    for inter in (72, 80):
        folder = tmp_path_factory.mktemp(f"llama{inter}")
        save_tiny("llama", folder, intermediate_size=inter)
        out[inter] = folder
    return out


def _quantized(src: Path, options: str = "bits=4,group_size=16") -> optimizer.ir.Graph:
    # float weights go out as float16, so the reference casts them too
    return optimizer.PassManager([f"quantize-rtn:{options}", "cast-weights:dtype=float16"]
                                 ).run(optimizer.import_model(src))


def _logits(graph, out: Path) -> torch.Tensor:
    optimizer.save(graph, out)
    return optimizer.runtime.load(out).logits(IDS)


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    return Tokenizer(WordLevel({"a": 0, "b": 1}, unk_token="a")).to_str()


@pytest.mark.parametrize("fmt,inter", [("gptq", 72), ("awq", 80)])
def test_export_import_gives_the_same_logits(sources, tmp_path, fmt: str, inter: int) -> None:
    graph = _quantized(sources[inter]).with_meta(tokenizer=_tokenizer_json())
    want = _logits(graph, tmp_path / "direct")
    out = export_hf_quantized(graph, tmp_path / fmt, fmt)
    assert sorted(p.name for p in out.iterdir()) == \
        ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float16"
    q = config["quantization_config"]
    assert q["quant_method"] == fmt and q["bits"] == 4 and q["group_size"] == 16
    tensors, _ = read_header(out / "model.safetensors")
    down = "model.layers.1.mlp.down_proj"
    roles = ["g_idx", "qweight", "qzeros", "scales"] if fmt == "gptq" else \
        ["qweight", "qzeros", "scales"]
    assert sorted(n.rsplit(".", 1)[1] for n in tensors if n.startswith(down)) == roles
    assert tensors["lm_head.weight"].dtype == "F16"
    if fmt == "gptq":   # K = 72, N = 64: 9 words along K, ceil(72 / 16) = 5 groups
        assert tensors[down + ".qweight"].shape == (9, 64)
        assert tensors[down + ".qzeros"].shape == (5, 8)
    back = optimizer.import_model(out)
    assert {n.op for n in back.nodes if n.op.endswith("linear")} == {"qlinear", "linear"}
    assert back.meta["tokenizer"] == graph.meta["tokenizer"]
    got = _logits(back, tmp_path / "back")
    assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()


def _rewrite_qlinears(graph, make) -> optimizer.ir.Graph:
    """Give every qlinear new tensors ``make(n, k, node) -> (codes, scales, zeros, g_idx)``."""
    scratch = ScratchDir()
    nodes, weights = list(graph.nodes), dict(graph.weights)
    for i, node in enumerate(nodes):
        if node.op != "qlinear":
            continue
        n, k = graph.weights[node.weight("qweight")].shape[0], node.attr("in_features")
        codes, scales, zeros, g_idx = make(n, k, node)
        prefix = node.weight("qweight").removesuffix(".qweight")
        tensors = {"qweight": pack_bits(codes, 4), "scales": scales,
                   "zeros": zeros.to(torch.uint8)}
        if g_idx is not None:
            tensors["g_idx"] = g_idx.to(torch.int32)
        refs = scratch.write({f"{prefix}.{r}": t for r, t in tensors.items()})
        weights.update(refs)
        roles = {**dict(node.weights), **{r: f"{prefix}.{r}" for r in tensors}}
        nodes[i] = dataclasses.replace(node, weights=tuple(sorted(roles.items())))
    return graph.replace(nodes=tuple(nodes), weights=weights,
                         resources=graph.resources + (scratch,))


def test_gptq_act_order_export_import(sources, tmp_path) -> None:
    def act_order(n, k, node):
        c, s, z, g = _random_linear(n, k, 4, 16, n + k, act_order=True)
        return c, s, z, g

    graph = _rewrite_qlinears(_quantized(sources[72]), act_order)
    want = _logits(graph, tmp_path / "direct")
    out = export_hf_quantized(graph, tmp_path / "gptq", "gptq")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["desc_act"]
    back = optimizer.import_model(out)
    assert all(n.weight("g_idx") for n in back.nodes if n.op == "qlinear")
    assert torch.allclose(_logits(back, tmp_path / "back"), want, rtol=0, atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["desc_act"] = False
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="g_idx.*desc_act is false"):
        optimizer.import_model(out)


def test_gptq_zero_point_zero_is_lifted_or_refused(sources, tmp_path) -> None:
    def zero_zero(n, k, node, top=14):
        c, s, z, g = _random_linear(n, k, 4, 16, n + k)
        z[:, 0], c[:, :16] = 0, c[:, :16].clamp(max=top)   # group 0 of every row: z = 0
        return c, s, z, None

    graph = _rewrite_qlinears(_quantized(sources[72]), zero_zero)
    want = _logits(graph, tmp_path / "direct")
    back = optimizer.import_model(export_hf_quantized(graph, tmp_path / "ok", "gptq"))
    assert torch.allclose(_logits(back, tmp_path / "back"), want, rtol=0, atol=1e-5)
    bad = _rewrite_qlinears(graph, lambda n, k, node: zero_zero(n, k, node, top=15))
    with pytest.raises(InvalidInput, match="zero point 0 and code 15"):
        export_hf_quantized(bad, tmp_path / "bad", "gptq")
    assert not any(p.name.startswith((".bad", "bad")) for p in tmp_path.iterdir())


# ---- bad input ---------------------------------------------------------------------------

def test_awq_export_refuses_symmetric_and_partial_groups(sources, tmp_path) -> None:
    with pytest.raises(InvalidInput, match=r"%l0\.q \(qlinear\).*awq.*symmetric"):
        export_hf_quantized(_quantized(sources[80], "bits=4,group_size=16,sym=true"),
                            tmp_path / "sym", "awq")
    with pytest.raises(InvalidInput, match=r"%l0\.mlp_out.*not a multiple of group_size 16"):
        export_hf_quantized(_quantized(sources[72]), tmp_path / "partial", "awq")
    assert sorted(p.name for p in tmp_path.iterdir()) == []     # nothing left behind


def test_export_refuses_float_linears_and_mixed_schemes(sources, tmp_path) -> None:
    with pytest.raises(InvalidInput, match=r"%l0\.q \(linear\) is not quantized"):
        export_hf_quantized(optimizer.import_model(sources[80]), tmp_path / "f", "gptq")
    g4, g8 = _quantized(sources[80]), _quantized(sources[80], "bits=8,group_size=32")
    i = next(i for i, n in enumerate(g4.nodes) if n.outputs[0] == "l1.q")
    nodes = g4.nodes[:i] + (g8.nodes[i],) + g4.nodes[i + 1:]
    spliced = {w: g8.weights[w] for _, w in g8.nodes[i].weights}
    mixed = g4.replace(nodes=nodes, weights={**g4.weights, **spliced},
                       resources=g4.resources + g8.resources)
    with pytest.raises(InvalidInput, match=r"%l1\.q.*bits=8 group_size=32.*%l0\.q.*bits=4"):
        export_hf_quantized(mixed, tmp_path / "m", "gptq")


def test_symmetric_gptq_round_trips_with_zero_2_pow_bits_minus_1(sources, tmp_path) -> None:
    graph = _quantized(sources[72], "bits=8,group_size=16,sym=true")
    out = export_hf_quantized(graph, tmp_path / "sym", "gptq")
    qz = SafetensorsFile(out / "model.safetensors").load("model.layers.0.self_attn.q_proj.qzeros")
    assert bool((qz == _i32(0x7F7F7F7F)).all())                 # z = 128 stored as 127
    back = optimizer.import_model(out)
    assert all(n.weight("zeros") is None for n in back.nodes if n.op == "qlinear")
    assert torch.allclose(_logits(back, tmp_path / "b"), _logits(graph, tmp_path / "a"),
                          rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def gptq_dir(sources, tmp_path_factory) -> Path:
    return export_hf_quantized(_quantized(sources[72]), tmp_path_factory.mktemp("g") / "gptq",
                               "gptq")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_import_refuses_a_truncated_qweight(gptq_dir, tmp_path) -> None:
    bad = _copy(gptq_dir, tmp_path / "bad")
    st = SafetensorsFile(gptq_dir / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.qweight"
    tensors = {n: st.load(n) for n in st.tensors}
    tensors[name] = tensors[name][:-1]
    write_safetensors(bad / "model.safetensors", [(n, t.dtype, tuple(t.shape)) for n, t
                                                  in tensors.items()], tensors.__getitem__)
    with pytest.raises(InvalidInput, match=r"up_proj\.qweight' is int32\[7, 72\].*"
                                           r"needs int32\[8, 72\]"):
        optimizer.import_model(bad)


@pytest.mark.parametrize("change,message", [
    ({"quant_method": "bitsandbytes"}, "unsupported quant_method 'bitsandbytes'"),
    ({"checkpoint_format": "gptq_v2"}, "checkpoint_format 'gptq_v2' is not supported"),
    ({"bits": 5}, "bits 5 is not supported"),
    ({"sym": True}, "sym is true but the zero points are not all 8"),
    ({"quant_method": "awq", "version": "gemv"}, "version 'gemv' is not supported"),
    ({"quant_method": "awq", "zero_point": False}, "zero_point false"),
])
def test_import_refuses_unsupported_quantization_configs(gptq_dir, tmp_path, change,
                                                         message) -> None:
    bad = _copy(gptq_dir, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"].update(change)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match=message) as e:
        optimizer.import_model(bad)
    assert "\n" not in str(e.value)
