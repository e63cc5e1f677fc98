"""Tests for optimizer.formats.safetensors_io against the official `safetensors` library."""

from __future__ import annotations

import gc
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from optimizer.errors import InvalidInput
from optimizer.formats.safetensors_io import (
    TORCH_DTYPES,
    SafetensorsFile,
    TensorInfo,
    load_tensor,
    read_header,
    write_safetensors,
)


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Fresh non-trivial data of `dtype` from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def _sample() -> dict[str, torch.Tensor]:
    """Tensors covering every dtype and odd shapes (scalar, zero-size dim, 3-D, odd sizes)."""
    specs: list[tuple[str, torch.dtype, tuple[int, ...]]] = [
        ("w.bf16", torch.bfloat16, (3, 5, 7)),
        ("w.f16", torch.float16, (11,)),
        ("w.f32", torch.float32, (4, 9)),
        ("w.f64", torch.float64, (2, 3)),
        ("scalar", torch.float32, ()),
        ("empty", torch.float16, (4, 0, 3)),
        ("i8", torch.int8, (3, 3)),  # odd byte count: misaligns what follows
        ("i16", torch.int16, (5,)),
        ("i32", torch.int32, (2, 2, 2)),
        ("i64", torch.int64, (3,)),
        ("u8", torch.uint8, (13,)),
        ("mask", torch.bool, (7,)),
    ]
    return {name: _random(shape, dt, seed) for seed, (name, dt, shape) in enumerate(specs)}


def _write_ours(path: Path, tensors: dict[str, torch.Tensor],
                metadata: dict[str, str] | None = None) -> list[str]:
    """Write `tensors` with our streaming writer; return the names in produce() call order."""
    calls: list[str] = []

    def produce(name: str) -> torch.Tensor:
        calls.append(name)
        return tensors[name]

    entries = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    write_safetensors(path, entries, produce, metadata)
    return calls


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bytes(a.contiguous().reshape(-1).view(torch.uint8).numpy()) == bytes(
        b.contiguous().reshape(-1).view(torch.uint8).numpy())


# ---- round trips against the official library ------------------------------------------


def test_our_writer_then_official_reader(tmp_path: Path) -> None:
    tensors = _sample()
    path = tmp_path / "ours.safetensors"
    calls = _write_ours(path, tensors, {"format": "pt", "note": "ünïcode"})
    assert calls == sorted(tensors)
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert _bits_equal(loaded[name], t), name
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"format": "pt", "note": "ünïcode"}


def test_official_writer_then_our_reader(tmp_path: Path) -> None:
    tensors = _sample()
    path = tmp_path / "official.safetensors"
    save_file(tensors, path, metadata={"k": "v"})
    infos, meta = read_header(path)
    assert meta == {"k": "v"}
    assert set(infos) == set(tensors)
    with SafetensorsFile(path) as f:
        for name, t in tensors.items():
            info = infos[name]
            assert info.dtype in TORCH_DTYPES and info.shape == tuple(t.shape)
            assert _bits_equal(load_tensor(path, info), t), name
            assert _bits_equal(f.load(name), t), name


def test_our_round_trip_and_mmap_is_copy_on_write(tmp_path: Path) -> None:
    tensors = _sample()
    path = tmp_path / "rt.safetensors"
    _write_ours(path, tensors)
    before = path.read_bytes()
    f = SafetensorsFile(path)
    loaded = {name: f.load(name) for name in f.tensors}
    f.close()
    del f
    gc.collect()  # tensors must keep the map alive on their own
    for name, t in tensors.items():
        assert _bits_equal(loaded[name], t), name
    loaded["w.f32"].mul_(2.0)  # writable view; must not reach the file
    assert path.read_bytes() == before


def test_writer_is_deterministic(tmp_path: Path) -> None:
    tensors = _sample()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _write_ours(a, tensors, {"x": "1", "a": "2"})
    _write_ours(b, dict(reversed(list(tensors.items()))), {"a": "2", "x": "1"})
    assert a.read_bytes() == b.read_bytes()


def test_writer_rejects_mismatched_tensor(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    t = _random((2, 3), torch.float32, 0)
    with pytest.raises(ValueError, match="header says"):
        write_safetensors(path, [("x", torch.float16, (2, 3))], lambda _: t)
    with pytest.raises(ValueError, match="header says"):
        write_safetensors(path, [("x", torch.float32, (3, 2))], lambda _: t)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_empty_file_set_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "none.safetensors"
    write_safetensors(path, [], lambda _: torch.empty(0), {"only": "meta"})
    assert read_header(path) == ({}, {"only": "meta"})
    assert load_file(path) == {}


# ---- malformed files ---------------------------------------------------------------------


def _raw(path: Path, header: bytes, data: bytes = b"", n: int | None = None) -> Path:
    """Write a file by hand: u64 length (default len(header)), header bytes, data."""
    path.write_bytes(struct.pack("<Q", len(header) if n is None else n) + header + data)
    return path


def _doc(path: Path, doc: Any, data_len: int = 16) -> Path:
    """A file whose header is json.dumps(doc), followed by `data_len` random bytes."""
    data = _random((data_len,), torch.uint8, 99).numpy().tobytes()
    return _raw(path, json.dumps(doc).encode(), data)


def _entry(dtype: str = "F32", shape: list[int] | None = None,
           offsets: list[int] | None = None) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [2] if shape is None else shape,
            "data_offsets": [0, 8] if offsets is None else offsets}


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(InvalidInput, match="file is 0 bytes, too small"):
        read_header(tmp_path / "e")


def test_file_shorter_than_length_field(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"\x01\x00\x00")
    with pytest.raises(InvalidInput, match="file is 3 bytes, too small"):
        read_header(tmp_path / "s")


def test_zero_header_length(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="header length is 0"):
        read_header(_raw(tmp_path / "z", b"{}", n=0))


def test_header_length_beyond_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"header length 50 exceeds the 10 bytes"):
        read_header(_raw(tmp_path / "b", b"{}" + b" " * 8, n=50))


def test_header_length_over_cap(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"header length 18446744073709551615 exceeds the "
                                           r"limit of 100000000 bytes"):
        read_header(_raw(tmp_path / "h", b"{}", n=2**64 - 1))
    with pytest.raises(InvalidInput, match=r"header length 100000001 exceeds the limit"):
        read_header(_raw(tmp_path / "h2", b"{}", n=100_000_001))


def test_header_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"header is not valid UTF-8 \(byte 2\)"):
        read_header(_raw(tmp_path / "u", b'{"\xff":1}'))


@pytest.mark.parametrize("text", [b"{not json}", b'{"a": ', b"[" * 100_000])
def test_header_not_json(tmp_path: Path, text: bytes) -> None:
    with pytest.raises(InvalidInput, match="header is not valid JSON"):
        read_header(_raw(tmp_path / "j", text))


@pytest.mark.parametrize("doc, kind", [([1, 2], "array"), (3, "number"), ("s", "string"),
                                       (None, "null")])
def test_header_not_object(tmp_path: Path, doc: Any, kind: str) -> None:
    with pytest.raises(InvalidInput, match=rf"header is not a JSON object \(got {kind}\)"):
        read_header(_doc(tmp_path / "o", doc))


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    e = json.dumps(_entry())
    header = f'{{"w": {e}, "w": {e}}}'.encode()
    with pytest.raises(InvalidInput, match="duplicate tensor name 'w'"):
        read_header(_raw(tmp_path / "d", header, bytes(range(16))))


def test_duplicate_metadata_key(tmp_path: Path) -> None:
    header = f'{{"__metadata__": {{}}, "__metadata__": {{}}, "w": {json.dumps(_entry())}}}'
    with pytest.raises(InvalidInput, match="duplicate key '__metadata__' in the header"):
        read_header(_raw(tmp_path / "d", header.encode(), bytes(range(8))))
    header = '{"__metadata__": {"k": "a", "k": "b"}}'
    with pytest.raises(InvalidInput, match="__metadata__: duplicate key 'k'"):
        read_header(_raw(tmp_path / "d", header.encode()))


def test_duplicate_key_inside_entry(tmp_path: Path) -> None:
    header = b'{"w": {"dtype": "F32", "dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}'
    with pytest.raises(InvalidInput, match="tensor 'w': duplicate key 'dtype'"):
        read_header(_raw(tmp_path / "d", header, bytes(range(8))))


def test_entry_not_object(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="tensor 'w': entry is not a JSON object"):
        read_header(_doc(tmp_path / "n", {"w": [1, 2]}))


@pytest.mark.parametrize("key", ["dtype", "shape", "data_offsets"])
def test_entry_missing_key(tmp_path: Path, key: str) -> None:
    entry = _entry()
    del entry[key]
    with pytest.raises(InvalidInput, match=f"tensor 'w': missing '{key}'"):
        read_header(_doc(tmp_path / "m", {"w": entry}))


@pytest.mark.parametrize("field, value, problem", [
    ("dtype", 5, "dtype is not a string"),
    ("shape", "2", "shape is not a list of non-negative integers"),
    ("shape", [-2], "shape is not a list of non-negative integers"),
    ("shape", [2.0], "shape is not a list of non-negative integers"),
    ("shape", [True, 2], "shape is not a list of non-negative integers"),
    ("data_offsets", [0], "data_offsets is not a list of two integers"),
    ("data_offsets", [0, 8, 8], "data_offsets is not a list of two integers"),
    ("data_offsets", [0, "8"], "data_offsets is not a list of two integers"),
    ("data_offsets", {"a": 0}, "data_offsets is not a list of two integers"),
    ("data_offsets", [8, 0], r"data_offsets \[8, 0\) are not ordered"),
    ("data_offsets", [-8, 0], r"data_offsets \[-8, 0\) are not ordered"),
])
def test_entry_wrong_types(tmp_path: Path, field: str, value: Any, problem: str) -> None:
    entry = _entry()
    entry[field] = value
    with pytest.raises(InvalidInput, match=f"tensor 'w': {problem}"):
        read_header(_doc(tmp_path / "t", {"w": entry}))


def test_unknown_dtype(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="tensor 'w': unknown dtype 'F8_E4M3'"):
        read_header(_doc(tmp_path / "u", {"w": _entry(dtype="F8_E4M3")}))


def test_byte_length_mismatch(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"tensor 'w': shape \[3\] of dtype F32 needs 12 "
                                           r"bytes, but data_offsets \[0, 8\) hold 8"):
        read_header(_doc(tmp_path / "l", {"w": _entry(shape=[3])}))


def test_huge_shape_is_refused_quickly(tmp_path: Path) -> None:
    shape = [2**62] * 10_000
    with pytest.raises(InvalidInput, match=r"tensor 'w': shape \[4611686018427387904, .*\] "
                                           r"\(10000 dims\) of dtype F32 needs more than 16 "
                                           r"bytes"):
        read_header(_doc(tmp_path / "h", {"w": _entry(shape=shape)}))


def test_offsets_beyond_data_region(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"tensor 'w': data offsets \[8, 16\) exceed the data "
                                           r"region of 12 bytes"):
        read_header(_doc(tmp_path / "r", {"w": _entry(offsets=[8, 16])}, data_len=12))


def test_overlapping_tensors(tmp_path: Path) -> None:
    doc = {"a": _entry(offsets=[0, 8]), "b": _entry(offsets=[4, 12])}
    with pytest.raises(InvalidInput, match=r"tensors 'a' \[0, 8\) and 'b' \[4, 12\) overlap"):
        read_header(_doc(tmp_path / "v", doc))


def test_gaps_and_empty_tensors_are_allowed(tmp_path: Path) -> None:
    doc = {"a": _entry(offsets=[8, 16]), "z": _entry(shape=[0, 5], offsets=[4, 4]),
           "__metadata__": None}
    infos, meta = read_header(_doc(tmp_path / "g", doc, data_len=20))
    assert meta == {} and infos["z"].shape == (0, 5)
    assert load_tensor(tmp_path / "g", infos["z"]).shape == (0, 5)


@pytest.mark.parametrize("meta, problem", [
    ([["k", "v"]], "__metadata__ is not a JSON object"),
    ("k=v", "__metadata__ is not a JSON object"),
    ({"k": 1}, "__metadata__: value of 'k' is a JSON number, not a string"),
    ({"k": {"nested": "x"}}, "__metadata__: value of 'k' is a JSON object, not a string"),
])
def test_metadata_not_str_map(tmp_path: Path, meta: Any, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        read_header(_doc(tmp_path / "x", {"__metadata__": meta, "w": _entry()}))


def test_load_tensor_after_file_truncated(tmp_path: Path) -> None:
    path = _doc(tmp_path / "t", {"w": _entry(offsets=[8, 16])})
    infos, _ = read_header(path)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(InvalidInput, match="lie beyond the end of the"):
        load_tensor(path, infos["w"])


def test_load_tensor_rejects_inconsistent_info(tmp_path: Path) -> None:
    path = _doc(tmp_path / "i", {"w": _entry()})
    with pytest.raises(ValueError, match="do not match shape"):
        load_tensor(path, TensorInfo("w", "F32", (3,), 0, 8))
