"""Reading and writing the safetensors format, implemented here rather than via the library.

Layout: an 8-byte little-endian u64 ``N``, then ``N`` bytes of UTF-8 JSON mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the start of
the data region) plus an optional ``"__metadata__"`` str->str map, then the data region.

Reading validates the header completely and strictly (duplicate names, overlaps, sizes) and
raises `InvalidInput` for every malformed file; work and memory are bounded by the file size
and a 100 MB header cap. Tensor data is memory-mapped copy-on-write, so the file is never
modified. Tensor bytes are little-endian: loading and writing refuse big-endian hosts.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch

from optimizer.errors import InvalidInput

__all__ = [
    "MAX_HEADER_BYTES",
    "TORCH_DTYPES",
    "SafetensorsFile",
    "TensorInfo",
    "load_tensor",
    "read_header",
    "write_safetensors",
]

MAX_HEADER_BYTES = 100_000_000
"""Largest accepted JSON header, in bytes (the official library's limit too)."""

TORCH_DTYPES: Mapping[str, torch.dtype] = MappingProxyType({
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
})
"""Safetensors dtype code -> torch dtype (read-only)."""

_CODES: Mapping[torch.dtype, str] = MappingProxyType({v: k for k, v in TORCH_DTYPES.items()})
_ITEMSIZE: Mapping[str, int] = MappingProxyType(
    {k: torch.empty((), dtype=v).element_size() for k, v in TORCH_DTYPES.items()}
)
_METADATA_KEY = "__metadata__"
_MAX_SHOWN = 80  # longest name or shape shown in an error message


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor's header entry, with absolute byte offsets into the file."""

    name: str
    dtype: str  # safetensors dtype code, a key of TORCH_DTYPES
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int  # absolute, exclusive


class _Duplicated(dict):  # type: ignore[type-arg]
    """A JSON object that repeated a key; `key` is the first repeated one."""

    key: str = ""


def _object_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a plain dict, or a _Duplicated marking a repeated key."""
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    dup = _Duplicated(out)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            dup.key = key
            break
        seen.add(key)
    return dup


def _show(name: str) -> str:
    """A one-line, length-bounded rendering of a (possibly hostile) string."""
    return repr(name) if len(name) <= _MAX_SHOWN else repr(name[:_MAX_SHOWN]) + "..."


def _show_shape(shape: Sequence[int]) -> str:
    """A length-bounded rendering of a shape."""
    if len(shape) <= 8:
        return "[" + ", ".join(str(d) for d in shape) + "]"
    return "[" + ", ".join(str(d) for d in shape[:4]) + f", ...] ({len(shape)} dims)"


def _no_duplicates(obj: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    """Return `obj`, refusing one that repeated a key; `where` names it in the error."""
    if isinstance(obj, _Duplicated):
        raise InvalidInput(path, f"{where}: duplicate key {_show(obj.key)}")
    return obj


def _json_kind(value: Any) -> str:
    """The JSON type name of a parsed value, for error messages."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def _is_int(value: Any) -> bool:
    """True for a JSON integer (bool is not one)."""
    return type(value) is int


def _numel_at_most(shape: Sequence[int], limit: int) -> int | None:
    """prod(shape), or None when it exceeds `limit`; bounded work for any shape."""
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        n *= d
        if n > limit:
            return None
    return n


def _parse_entry(path: Path, name: str, raw: Any, data_len: int, base: int) -> TensorInfo:
    """Validate one tensor entry; `base` is the absolute offset of the data region."""
    where = f"tensor {_show(name)}"
    if not isinstance(raw, dict):
        raise InvalidInput(path, f"{where}: entry is not a JSON object")
    entry = _no_duplicates(raw, path, where)
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise InvalidInput(path, f"{where}: missing {key!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise InvalidInput(path, f"{where}: dtype is not a string")
    if dtype not in TORCH_DTYPES:
        known = ", ".join(TORCH_DTYPES)
        raise InvalidInput(path, f"{where}: unknown dtype {_show(dtype)} (supported: {known})")
    if type(shape) is not list or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidInput(path, f"{where}: shape is not a list of non-negative integers")
    if type(offsets) is not list or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise InvalidInput(path, f"{where}: data_offsets is not a list of two integers")
    begin, end = offsets
    if begin < 0 or begin > end:
        raise InvalidInput(path, f"{where}: data_offsets [{begin}, {end}) are not ordered "
                                 "0 <= begin <= end")
    if end > data_len:
        raise InvalidInput(path, f"{where}: data offsets [{begin}, {end}) exceed the data "
                                 f"region of {data_len} bytes")
    itemsize = _ITEMSIZE[dtype]
    numel = _numel_at_most(shape, data_len // itemsize)  # exact up to the region's size
    if numel is None or numel * itemsize != end - begin:
        need = f"more than {data_len}" if numel is None else str(numel * itemsize)
        raise InvalidInput(path, f"{where}: shape {_show_shape(shape)} of dtype {dtype} needs "
                                 f"{need} bytes, but data_offsets [{begin}, {end}) hold "
                                 f"{end - begin}")
    return TensorInfo(name, dtype, tuple(shape), base + begin, base + end)


def _parse_metadata(path: Path, raw: Any) -> dict[str, str]:
    """Validate the optional __metadata__ value (null counts as absent)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(path, f"{_METADATA_KEY} is not a JSON object")
    meta = _no_duplicates(raw, path, _METADATA_KEY)
    for key, value in meta.items():
        if not isinstance(value, str):
            raise InvalidInput(path, f"{_METADATA_KEY}: value of {_show(key)} is a JSON "
                                     f"{_json_kind(value)}, not a string")
    return dict(meta)


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate and return (tensors by name, __metadata__).

    Precondition: `path` names a readable regular file. Raises InvalidInput on any malformed
    header; gaps between tensors are allowed, overlaps are not.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise InvalidInput(path, f"file is {size} bytes, too small for the 8-byte "
                                     "header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n == 0:
            raise InvalidInput(path, "header length is 0")
        if n > MAX_HEADER_BYTES:
            raise InvalidInput(path, f"header length {n} exceeds the limit of "
                                     f"{MAX_HEADER_BYTES} bytes")
        if n > size - 8:
            raise InvalidInput(path, f"header length {n} exceeds the {size - 8} bytes "
                                     "after the length field")
        blob = f.read(n)
    if len(blob) != n:
        raise InvalidInput(path, f"file shrank while reading: header of {n} bytes is cut short")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(path, f"header is not valid UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_object_hook)
    except RecursionError:
        raise InvalidInput(path, "header is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer with too many digits
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidInput(path, f"header is not valid JSON: {msg}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(path, f"header is not a JSON object (got {_json_kind(doc)})")

    data_len = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    if isinstance(doc, _Duplicated):
        what = "key" if doc.key == _METADATA_KEY else "tensor name"
        raise InvalidInput(path, f"duplicate {what} {_show(doc.key)} in the header")
    for name, raw in doc.items():
        if name == _METADATA_KEY:
            metadata = _parse_metadata(path, raw)
        else:
            tensors[name] = _parse_entry(path, name, raw, data_len, 8 + n)

    spans = sorted((t for t in tensors.values() if t.end > t.start), key=lambda t: t.start)
    for prev, cur in zip(spans, spans[1:]):
        if cur.start < prev.end:
            base = 8 + n
            raise InvalidInput(
                path, f"tensors {_show(prev.name)} [{prev.start - base}, {prev.end - base}) "
                      f"and {_show(cur.name)} [{cur.start - base}, {cur.end - base}) overlap")
    return tensors, metadata


def _require_little_endian() -> None:
    """Safetensors data is little-endian; refuse to reinterpret it on a big-endian host."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors I/O is unsupported on big-endian hosts "
                           f"(sys.byteorder is {sys.byteorder!r})")


def _check_info(info: TensorInfo) -> tuple[torch.dtype, int]:
    """Return (torch dtype, element count) of a TensorInfo; ValueError if inconsistent."""
    if info.dtype not in TORCH_DTYPES:
        raise ValueError(f"tensor {_show(info.name)}: unknown dtype {info.dtype!r}")
    itemsize = _ITEMSIZE[info.dtype]
    numel = _numel_at_most(info.shape, max(info.end - info.start, 0) // itemsize)
    if info.start < 0 or numel is None or numel * itemsize != info.end - info.start:
        raise ValueError(f"tensor {_show(info.name)}: offsets [{info.start}, {info.end}) do "
                         f"not match shape {_show_shape(info.shape)} of dtype {info.dtype}")
    return TORCH_DTYPES[info.dtype], numel


def _map(path: Path) -> mmap.mmap:
    """A copy-on-write map of the whole file (writes go to private pages, never the file)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InvalidInput(path, "file is empty")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def _tensor_from_map(path: Path, mm: mmap.mmap, info: TensorInfo) -> torch.Tensor:
    """View `info`'s bytes in `mm` as a tensor (a copy only when misaligned)."""
    _require_little_endian()
    dtype, numel = _check_info(info)
    if info.end > len(mm):
        raise InvalidInput(path, f"tensor {_show(info.name)}: bytes [{info.start}, {info.end}) "
                                 f"lie beyond the end of the {len(mm)}-byte file")
    if numel == 0:
        return torch.empty(info.shape, dtype=dtype)
    if info.start % _ITEMSIZE[info.dtype]:
        # Contiguous packing of mixed dtypes can misalign a tensor; copy just this one.
        buf: Any = bytearray(mm[info.start:info.end])
        return torch.frombuffer(buf, dtype=dtype).reshape(info.shape)
    # frombuffer holds a reference to `mm`, keeping the map alive while the tensor lives.
    return torch.frombuffer(mm, dtype=dtype, count=numel, offset=info.start).reshape(info.shape)


class SafetensorsFile:
    """A validated safetensors file whose tensors share one lazily-created copy-on-write map.

    Tensors returned by `load` are views into the map (writable; writes never reach the file)
    and keep it alive on their own, so `close` only drops this object's reference.
    """

    def __init__(self, path: str | Path) -> None:
        """Read and validate the header of `path` (raises InvalidInput)."""
        self.path = Path(path)
        self.tensors, self.metadata = read_header(self.path)
        self._mmap: mmap.mmap | None = None

    def load(self, name: str) -> torch.Tensor:
        """The tensor called `name`; KeyError if the file has none by that name."""
        return self.load_info(self.tensors[name])

    def load_info(self, info: TensorInfo) -> torch.Tensor:
        """The tensor described by `info` (an entry of this file's header)."""
        if self._mmap is None:
            self._mmap = _map(self.path)
        return _tensor_from_map(self.path, self._mmap, info)

    def close(self) -> None:
        """Drop the map; it is unmapped once no tensor refers to it."""
        self._mmap = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_tensor(path: str | Path, info: TensorInfo) -> torch.Tensor:
    """Memory-mapped (copy-on-write) tensor for `info`, an entry from read_header(path).

    Maps the file per call; use SafetensorsFile to share one map across many tensors. Reads
    no more of the file than the pages the caller touches.
    """
    path = Path(path)
    return _tensor_from_map(path, _map(path), info)


def write_safetensors(
    path: str | Path,
    entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Stream a safetensors file: header first, then one tensor from produce(name) at a time.

    Preconditions: names unique and not "__metadata__", dtypes in TORCH_DTYPES, shapes of
    non-negative ints, metadata str->str (else ValueError). Tensors are laid out sorted by
    name, contiguously; the header is space-padded to a multiple of 8 bytes. produce(name)
    must return a tensor of exactly the entry's dtype and shape (else ValueError). Output is
    byte-deterministic. Writes to a temporary file in the same folder, fsyncs it and renames
    it over `path`, so a failure never leaves a partial file at `path`.
    """
    _require_little_endian()
    path = Path(path)
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name, dtype, shape in entries:
        if not isinstance(name, str) or name == _METADATA_KEY:
            raise ValueError(f"invalid tensor name {name!r}")
        if name in specs:
            raise ValueError(f"duplicate tensor name {_show(name)}")
        if dtype not in _CODES:
            raise ValueError(f"tensor {_show(name)}: unsupported dtype {dtype}")
        shape = tuple(shape)
        if not all(_is_int(d) and d >= 0 for d in shape):
            raise ValueError(f"tensor {_show(name)}: shape {shape} is not non-negative ints")
        specs[name] = (dtype, shape)
    meta = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("metadata must map str to str")

    order = sorted(specs)
    header: dict[str, Any] = {}
    if meta:
        header[_METADATA_KEY] = {k: meta[k] for k in sorted(meta)}
    offset = 0
    for name in order:
        dtype, shape = specs[name]
        code = _CODES[dtype]
        nbytes = _ITEMSIZE[code]
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": code, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name in order:
                _write_tensor(f, name, specs[name], produce(name))
            if f.tell() != 8 + len(blob) + offset:
                raise RuntimeError(f"wrote {f.tell()} bytes, expected {8 + len(blob) + offset}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_tensor(f: Any, name: str, spec: tuple[torch.dtype, tuple[int, ...]],
                  tensor: Any) -> None:
    """Check `tensor` against its entry and write its raw little-endian bytes to `f`."""
    dtype, shape = spec
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor {_show(name)}: produce returned {type(tensor).__name__}")
    if tensor.dtype != dtype or tuple(tensor.shape) != shape:
        raise ValueError(f"tensor {_show(name)}: produced {tensor.dtype} "
                         f"{tuple(tensor.shape)}, header says {dtype} {shape}")
    if tensor.numel() == 0:
        return
    flat = tensor.detach().to("cpu").resolve_neg().contiguous().reshape(-1).view(torch.uint8)
    f.write(memoryview(flat.numpy()))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
