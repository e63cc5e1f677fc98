"""A validating reader of the GGUF container (versions 2 and 3) and a dequantizer for its tensors.

Layout (all little-endian)::

    header   : b"GGUF", u32 version, u64 tensor_count, u64 kv_count
    kv_count : key (gguf-string), u32 value type, value
    tensors  : name (gguf-string), u32 n_dims, n_dims x u64 ne (ggml order: ne[0] varies fastest),
               u32 ggml type, u64 offset (relative to the data section)
    padding  : up to the next multiple of `general.alignment` (default 32)
    data     : tensor bytes

A gguf-string is a u64 byte length followed by that many UTF-8 bytes. Value types 0..12 are
u8, i8, u16, i16, u32, i32, f32, bool, string, array, u64, i64, f64; an array is a u32 element
type, a u64 count and the elements.

Every length and count is checked against the bytes that remain in the file *before* anything is
allocated or looped over, so a hostile file costs at most O(file size) time and memory. The file
is read through an mmap; tensors are dequantized one at a time by `load_gguf_tensor`.

A tensor of ggml type T with ne = (ne0, ne1, ...) holds prod(ne) elements stored as
prod(ne) / block_size(T) blocks of type_size(T) bytes each; ne0 must be a multiple of the block
size, so every row of ne0 elements is a whole number of blocks and the flat element order equals
row-major order of the reversed shape (ne[n-1], ..., ne0), which is the PyTorch shape reported.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from optimizer.errors import InvalidInput

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 3
"""An array may hold arrays, which may hold arrays; one level deeper is refused."""
LIST_ARRAY_MAX = 1024
"""Numeric arrays with more elements than this come back as numpy arrays instead of lists."""

_HEADER_BYTES = 4 + 4 + 8 + 8
_MIN_KV_BYTES = 8 + 4  # empty key + value type; the value itself is at least one more byte
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims, type, offset
_DEQUANT_CHUNK_BLOCKS = 1 << 16

# ggml type id -> (name, elements per block, bytes per block), as in ggml.c's type_traits.
GGML_TYPES: Mapping[int, tuple[str, int, int]] = MappingProxyType({
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
})

SUPPORTED_TYPES: frozenset[str] = frozenset(
    {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"}
)

# GGUF value type id -> (name, struct format or None for string/array, byte size).
_VALUE_TYPES: Mapping[int, tuple[str, str | None, int]] = MappingProxyType({
    0: ("u8", "<B", 1),
    1: ("i8", "<b", 1),
    2: ("u16", "<H", 2),
    3: ("i16", "<h", 2),
    4: ("u32", "<I", 4),
    5: ("i32", "<i", 4),
    6: ("f32", "<f", 4),
    7: ("bool", "<?", 1),
    8: ("string", None, 8),
    9: ("array", None, 12),
    10: ("u64", "<Q", 8),
    11: ("i64", "<q", 8),
    12: ("f64", "<d", 8),
})
_NUMPY_DTYPES: Mapping[int, str] = MappingProxyType({
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
    10: "<u8", 11: "<i8", 12: "<f8",
})
_TYPE_STRING = 8
_TYPE_ARRAY = 9
_TYPE_BOOL = 7


@dataclass(frozen=True, slots=True)
class GGUFTensorInfo:
    """One tensor's description.

    `shape` is in PyTorch (row-major) order, i.e. the file's ggml dims reversed; `start` is the
    absolute byte offset of its data in the file and `nbytes` its size:
    nbytes = prod(shape) / block_size(type) * type_size(type).
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    start: int
    nbytes: int


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file: its metadata key/values and its tensor descriptions (file order)."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensorInfo]


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure is an `InvalidInput`."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def fail(self, problem: str) -> InvalidInput:
        return InvalidInput(self.path, problem)

    def need(self, nbytes: int, what: str, at: int | None = None) -> None:
        """Refuse unless `nbytes` bytes of `what` fit in the file from `at` (default: here)."""
        at = self.pos if at is None else at
        if nbytes > self.size - at:
            raise self.fail(
                f"{what} of {nbytes} bytes at offset {at} runs past the end of the "
                f"{self.size}-byte file"
            )

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", 8, what))

    def string(self, what: str) -> str:
        at = self.pos
        length = self.u64(f"length of {what}")
        if length > self.size - self.pos:
            raise self.fail(
                f"{what} of {length} bytes at offset {at} runs past the end of the "
                f"{self.size}-byte file"
            )
        raw = self.buf[self.pos:self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(
                f"{what} at offset {at} is not valid UTF-8 (byte {exc.start} of {length})"
            ) from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype not in _VALUE_TYPES:
            raise self.fail(f"{what} has unknown value type {vtype} (known: 0..12)")
        if vtype == _TYPE_STRING:
            return self.string(what)
        if vtype == _TYPE_ARRAY:
            return self.array(what, depth + 1)
        _, fmt, size = _VALUE_TYPES[vtype]
        assert fmt is not None
        value = self.scalar(fmt, size, what)
        return bool(value) if vtype == _TYPE_BOOL else value

    def array(self, what: str, depth: int) -> Any:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"{what} nests arrays {depth} deep (at most {MAX_ARRAY_DEPTH})")
        at = self.pos
        etype = self.u32(f"element type of {what}")
        count = self.u64(f"element count of {what}")
        if etype not in _VALUE_TYPES:
            raise self.fail(f"{what} at offset {at} has unknown element type {etype}")
        min_elem = _VALUE_TYPES[etype][2]
        if count > (self.size - self.pos) // min_elem:
            raise self.fail(
                f"array {what} at offset {at} claims {count} elements of at least {min_elem} "
                f"bytes, running past the end of the {self.size}-byte file"
            )
        if etype in _NUMPY_DTYPES:
            arr = np.frombuffer(self.buf, dtype=_NUMPY_DTYPES[etype], count=count, offset=self.pos)
            self.pos += count * min_elem
            out = arr.copy()
            del arr
            return out.tolist() if count <= LIST_ARRAY_MAX else out
        if etype == _TYPE_BOOL:
            raw = self.buf[self.pos:self.pos + count]
            self.pos += count
            return [b != 0 for b in raw]
        if etype == _TYPE_STRING:
            return [self.string(f"element {i} of {what}") for i in range(count)]
        return [self.array(f"element {i} of {what}", depth + 1) for i in range(count)]


def _tensor_nbytes(name: str, ne: tuple[int, ...], ggml_type: int, cur: _Cursor) -> int:
    """Bytes of a tensor with ggml dims `ne`: prod(ne) / block_size * type_size."""
    type_name, block, type_size = GGML_TYPES[ggml_type]
    n_elems = 1
    for d in ne:
        n_elems *= d
    if n_elems >= 1 << 63:
        raise cur.fail(f"tensor {name!r} has {n_elems} elements, more than fit in an int64")
    if ne and ne[0] % block != 0:
        raise cur.fail(
            f"tensor {name!r} of type {type_name} has a row of {ne[0]} elements, "
            f"not a multiple of the block size {block}"
        )
    if not ne and block != 1:
        raise cur.fail(f"tensor {name!r} is a scalar of block type {type_name}")
    return n_elems // block * type_size


def _parse(buf: mmap.mmap | bytes, path: Path) -> GGUFFile:
    cur = _Cursor(buf, path)
    if cur.size < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        raise cur.fail(f"does not start with the GGUF magic b'GGUF' (found {bytes(buf[:4])!r})")
    if cur.size < _HEADER_BYTES:
        raise cur.fail(f"file of {cur.size} bytes is too short for the 24-byte GGUF header")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise cur.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    tensor_count = cur.u64("tensor count")
    kv_count = cur.u64("key/value count")
    remaining = cur.size - cur.pos
    if kv_count > remaining // _MIN_KV_BYTES:
        raise cur.fail(
            f"kv_count {kv_count} cannot fit in the {remaining} bytes after the header "
            f"(each key/value takes at least {_MIN_KV_BYTES})"
        )
    if tensor_count > remaining // _MIN_TENSOR_INFO_BYTES:
        raise cur.fail(
            f"tensor_count {tensor_count} cannot fit in the {remaining} bytes after the header "
            f"(each tensor info takes at least {_MIN_TENSOR_INFO_BYTES})"
        )
    if kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES > remaining:
        raise cur.fail(
            f"{kv_count} key/values and {tensor_count} tensor infos cannot fit in the "
            f"{remaining} bytes after the header"
        )

    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        at = cur.pos
        key = cur.string(f"key of key/value {i}")
        if key in metadata:
            raise cur.fail(f"duplicate metadata key {key!r} at offset {at}")
        vtype = cur.u32(f"value type of {key!r}")
        metadata[key] = cur.value(vtype, f"value of {key!r}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        isinstance(alignment, bool) or not isinstance(alignment, int)
        or alignment <= 0 or alignment & (alignment - 1)
    ):
        raise cur.fail(f"general.alignment {alignment!r} is not a positive power of two")

    raw_infos: list[tuple[str, tuple[int, ...], int, int, int]] = []
    names: set[str] = set()
    for i in range(tensor_count):
        at = cur.pos
        name = cur.string(f"name of tensor {i}")
        if name in names:
            raise cur.fail(f"duplicate tensor name {name!r} at offset {at}")
        names.add(name)
        n_dims = cur.u32(f"n_dims of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dims (at most {MAX_DIMS})")
        ne = tuple(cur.u64(f"dim {d} of tensor {name!r}") for d in range(n_dims))
        ggml_type = cur.u32(f"type of tensor {name!r}")
        if ggml_type not in GGML_TYPES:
            raise cur.fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
        offset = cur.u64(f"data offset of tensor {name!r}")
        raw_infos.append((name, ne, ggml_type, offset, _tensor_nbytes(name, ne, ggml_type, cur)))

    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, GGUFTensorInfo] = {}
    for name, ne, ggml_type, offset, nbytes in raw_infos:
        if offset % alignment:
            raise cur.fail(
                f"tensor {name!r} data offset {offset} is not a multiple of the alignment "
                f"{alignment}"
            )
        start = data_start + offset
        if nbytes and (start > cur.size or nbytes > cur.size - start):
            raise cur.fail(
                f"tensor {name!r} data of {nbytes} bytes at offset {start} runs past the end "
                f"of the {cur.size}-byte file"
            )
        tensors[name] = GGUFTensorInfo(
            name=name, shape=tuple(reversed(ne)), ggml_type=ggml_type,
            type_name=GGML_TYPES[ggml_type][0], start=start, nbytes=nbytes,
        )

    spans = sorted((t.start, t.start + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_, end_a, name_a), (start_b, _, name_b) in pairwise(spans):
        if start_b < end_a:
            raise cur.fail(
                f"tensor {name_b!r} data at offset {start_b} overlaps tensor {name_a!r}, "
                f"which ends at {end_a}"
            )
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors)


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and validate a GGUF file's header, metadata and tensor table.

    Raises `InvalidInput` for anything malformed: bad magic, a version other than 2 or 3, counts
    or lengths that cannot fit in the file, arrays nested deeper than `MAX_ARRAY_DEPTH`, unknown
    value or ggml types, duplicate keys or tensor names, more than 4 dims, invalid UTF-8, an
    alignment that is not a power of two, and tensor data that is misaligned, past the end of
    the file or overlapping another tensor's.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size == 0:
            raise InvalidInput(path, "file is empty, not a GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm, path)


# ---------------------------------------------------------------------------------------------
# Dequantization. Each function maps a (n_blocks, type_size) uint8 array to a (n_blocks,
# block_size) float32 array, computing in float32 with the operation order of ggml's reference
# dequantize_row_* functions.


def _f16(blocks: np.ndarray, lo: int) -> np.ndarray:
    """The little-endian f16 at byte `lo` of every block, as a (n, 1) float32 column."""
    return blocks[:, lo:lo + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) values: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _deq_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0, 34 bytes: f16 d, 32 x i8 q; x = d * q."""
    return _f16(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)


def _deq_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0, 18 bytes: f16 d, 16 bytes of nibbles q; x = d * (q - 8)."""
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return _f16(blocks, 0) * q.astype(np.float32)


def _deq_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_1, 20 bytes: f16 d, f16 m, 16 bytes of nibbles q; x = d * q + m."""
    return _f16(blocks, 0) * _nibbles(blocks[:, 4:]).astype(np.float32) + _f16(blocks, 2)


def _k_scales_mins(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12-byte 6-bit scales/mins of Q4_K/Q5_K into two (n, 8) float32 arrays.

    For j < 4: sc = s[j] & 63, m = s[j+4] & 63; for j >= 4:
    sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4, m = (s[j+4] >> 4) | (s[j] >> 6) << 4.
    """
    lo, mid, hi = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _deq_q4_k(blocks: np.ndarray) -> np.ndarray:
    """Q4_K, 144 bytes: f16 d, f16 dmin, 12 bytes scales, 128 bytes nibbles.

    Eight sub-blocks of 32; sub-block s uses bytes 32*(s//2).. of the nibbles, low nibbles for
    even s and high for odd s; x = (d * sc[s]) * q - dmin * m[s].
    """
    n = blocks.shape[0]
    sc, mn = _k_scales_mins(blocks[:, 4:16])
    dl = (_f16(blocks, 0) * sc)[:, :, None]
    ml = (_f16(blocks, 2) * mn)[:, :, None]
    qs = blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 0x0F).reshape(n, 8, 32).astype(np.float32)
    return (dl * q - ml).reshape(n, 256)


def _deq_q5_k(blocks: np.ndarray) -> np.ndarray:
    """Q5_K, 176 bytes: f16 d, f16 dmin, 12 bytes scales, 32 bytes qh, 128 bytes nibbles.

    As Q4_K, with a fifth bit: element l of sub-block s adds 16 * (bit s of qh[l]).
    """
    n = blocks.shape[0]
    sc, mn = _k_scales_mins(blocks[:, 4:16])
    dl = (_f16(blocks, 0) * sc)[:, :, None]
    ml = (_f16(blocks, 2) * mn)[:, :, None]
    qh = blocks[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    qs = blocks[:, 48:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    q = ((qs & 0x0F).reshape(n, 8, 32) | ((qh & 1) << 4)).astype(np.float32)
    return (dl * q - ml).reshape(n, 256)


def _deq_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Q6_K, 210 bytes: 128 bytes ql, 64 bytes qh, 16 x i8 scales, f16 d.

    Two halves of 128; in half h, element p takes the low nibble of ql[64h + p] for p < 64 and
    the high nibble of ql[64h + p - 64] otherwise, plus bits 2*(p//32)..+1 of qh[32h + p%32] as
    bits 4..5; q is that minus 32 and x = (d * scales[e // 16]) * q for element e of the block.
    """
    n = blocks.shape[0]
    ql = blocks[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    ql = (ql & 0x0F).reshape(n, 2, 128)
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(
        1, 1, 4, 1
    )
    qh = (qh & 3).reshape(n, 2, 128)
    q = (ql | (qh << 4)).astype(np.int8) - np.int8(32)
    scale = _f16(blocks, 208) * blocks[:, 192:208].view(np.int8).astype(np.float32)
    return (scale[:, :, None] * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


_DEQUANTIZERS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = MappingProxyType({
    "Q8_0": _deq_q8_0,
    "Q4_0": _deq_q4_0,
    "Q4_1": _deq_q4_1,
    "Q4_K": _deq_q4_k,
    "Q5_K": _deq_q5_k,
    "Q6_K": _deq_q6_k,
})


def dequantize_bytes(raw: np.ndarray, type_name: str) -> np.ndarray:
    """Dequantize a flat uint8 array of whole blocks of `type_name` to a flat float32 array.

    Precondition: `type_name` is in SUPPORTED_TYPES and raw.size is a multiple of its block's
    byte size. Works in chunks so the float32 temporaries stay small.
    """
    if type_name == "F32":
        return raw.view("<f4").astype(np.float32)
    if type_name == "F16":
        return raw.view("<f2").astype(np.float32)
    if type_name == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    ggml_type = next(k for k, v in GGML_TYPES.items() if v[0] == type_name)
    _, block, type_size = GGML_TYPES[ggml_type]
    blocks = raw.reshape(-1, type_size)
    out = np.empty((blocks.shape[0], block), dtype=np.float32)
    fn = _DEQUANTIZERS[type_name]
    for lo in range(0, blocks.shape[0], _DEQUANT_CHUNK_BLOCKS):
        hi = min(lo + _DEQUANT_CHUNK_BLOCKS, blocks.shape[0])
        out[lo:hi] = fn(blocks[lo:hi])
    return out.reshape(-1)


def _load(mm: mmap.mmap, info: GGUFTensorInfo) -> np.ndarray:
    raw = np.frombuffer(mm, dtype=np.uint8, count=info.nbytes, offset=info.start)
    return dequantize_bytes(raw, info.type_name)


def load_gguf_tensor(path: str | Path, info: GGUFTensorInfo) -> torch.Tensor:
    """Read one tensor and return it as a float32 torch tensor of shape `info.shape`.

    Precondition: `info` comes from `read_gguf(path)` of the same, unchanged file. Quantized
    types are dequantized block by block (see the `_deq_*` docstrings for each formula);
    F16/BF16 are widened to float32. Raises `InvalidInput` for a type outside SUPPORTED_TYPES
    or when the file no longer holds the tensor's bytes.
    """
    path = Path(path)
    if info.type_name not in SUPPORTED_TYPES:
        raise InvalidInput(
            path,
            f"tensor {info.name!r} has ggml type {info.type_name} ({info.ggml_type}), which "
            f"cannot be loaded (supported: {', '.join(sorted(SUPPORTED_TYPES))})",
        )
    name, block, type_size = GGML_TYPES[info.ggml_type]
    n_elems = 1
    for d in info.shape:
        n_elems *= d
    if name != info.type_name or n_elems % block or n_elems // block * type_size != info.nbytes:
        raise InvalidInput(
            path, f"tensor {info.name!r}: {info.nbytes} bytes do not hold shape {info.shape} "
            f"of type {info.type_name}"
        )
    if info.nbytes == 0:
        return torch.zeros(info.shape, dtype=torch.float32)
    with open(path, "rb") as f:
        size = Path(path).stat().st_size
        if info.start + info.nbytes > size:
            raise InvalidInput(
                path, f"tensor {info.name!r} data of {info.nbytes} bytes at offset {info.start} "
                f"runs past the end of the {size}-byte file"
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            values = _load(mm, info)
    return torch.from_numpy(values.reshape(info.shape))
