"""Build a CUDA C++ source into a shared library at first use, cached, and load it.

`load(source, arch)` compiles ``source`` (a .cu beside the kernels) with nvcc into
``$OPTIMIZER_CACHE/cuda/<hash>/<name>.so`` (default ``~/.cache/optimizer``), keyed by the
source text with the text of every file it includes by a quoted path (``#include
"../cuda_common.cuh"``, followed recursively), the target architecture, the flags and nvcc's
version, and loads it with ctypes.
The library is written to a temporary name in the same folder and renamed into place, so a
concurrent or interrupted build never leaves a half-written library that a later load picks
up. The kernels' launchers are plain ``extern "C"`` functions that take raw pointers and a
stream, so nothing links against PyTorch and a build takes seconds.

A source with a line ``// cuda_build: parts N`` is compiled N times in parallel (as many at
once as there are CPUs), with ``-DCUDA_BUILD_PART=p`` for p = 0..N-1, into objects linked
into the one library: each part holds a share of the kernels (mma_decode.cu's 260
template instances take 2.5 minutes in one nvcc process).

nvcc is looked for in ``$OPTIMIZER_NVCC``, ``$CUDA_HOME/bin``, ``PATH`` and
``/usr/local/cuda/bin``; where there is none, `load` raises `CudaBuildError` with one line
saying so (callers fall back to their Triton kernel).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FLAGS = ("-O3", "-shared", "-Xcompiler", "-fPIC", "-std=c++17")
_PARTS = re.compile(rb"^//[ \t]*cuda_build:[ \t]*parts[ \t]+(\d+)[ \t]*$", re.MULTILINE)


class CudaBuildError(RuntimeError):
    """No compiler, or the source did not compile (the message names which)."""


_LOCAL_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)


def source_text(source: Path) -> bytes:
    """The text the library is built from: ``source`` and, after it, each file it includes
    by a quoted path (relative to the including file), depth first, each file once. A
    missing include raises `CudaBuildError` naming it (nvcc would fail on it anyway)."""
    seen: set[Path] = set()
    parts: list[bytes] = []

    def visit(path: Path) -> None:
        path = path.resolve()
        if path in seen:
            return
        seen.add(path)
        try:
            text = path.read_bytes()
        except OSError as e:
            raise CudaBuildError(f"{source.name}: cannot read {path}: {e.strerror}") from e
        parts.append(text)
        for rel in _LOCAL_INCLUDE.findall(text):
            visit(path.parent / rel.decode())

    visit(source)
    return b"\0\0".join(parts)


def find_nvcc() -> str | None:
    for cand in (os.environ.get("OPTIMIZER_NVCC"),
                 os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                 if os.environ.get("CUDA_HOME") else None,
                 shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


@functools.lru_cache(maxsize=None)
def _nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown"


def cache_dir() -> Path:
    root = os.environ.get("OPTIMIZER_CACHE") or os.path.join(Path.home(), ".cache",
                                                              "optimizer")
    return Path(root) / "cuda"


def build(source: Path, arch: str) -> Path:
    """The path of the compiled library of ``source`` for ``arch`` (e.g. "sm_90"),
    compiling it first if it is not in the cache."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise CudaBuildError(f"{source.name}: no CUDA compiler (nvcc) found; set CUDA_HOME "
                             f"or OPTIMIZER_NVCC")
    text = source_text(source)
    key = hashlib.sha256(b"\0".join([text, arch.encode(), " ".join(FLAGS).encode(),
                                     _nvcc_version(nvcc).encode()])).hexdigest()[:16]
    folder = cache_dir() / key
    lib = folder / (source.stem + ".so")
    if lib.is_file():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    m = _PARTS.search(source.read_bytes())
    parts = int(m.group(1)) if m else 1
    print(f"optimizer: compiling {source.name} for {arch} with nvcc"
          f"{f' in {parts} parts' if parts > 1 else ''} (first use, cached in {folder})",
          file=sys.stderr, flush=True)
    work = tempfile.mkdtemp(prefix=source.stem + ".", suffix=".tmp", dir=folder)
    tmp = os.path.join(work, lib.name)
    try:
        if parts == 1:
            _nvcc(nvcc, [*FLAGS, f"-arch={arch}", "-o", tmp, str(source)], source, arch)
        else:
            objs = [os.path.join(work, f"part{p}.o") for p in range(parts)]
            compile_flags = [f for f in FLAGS if f != "-shared"]
            jobs = [[*compile_flags, f"-arch={arch}", f"-DCUDA_BUILD_PART={p}", "-c", "-o",
                     obj, str(source)] for p, obj in enumerate(objs)]
            with ThreadPoolExecutor(max_workers=min(parts, os.cpu_count() or 1)) as pool:
                list(pool.map(lambda args: _nvcc(nvcc, args, source, arch), jobs))
            _nvcc(nvcc, ["-shared", f"-arch={arch}", "-o", tmp, *objs], source, arch)
        os.replace(tmp, lib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib


def _nvcc(nvcc: str, args: list[str], source: Path, arch: str) -> None:
    """Run nvcc; `CudaBuildError` with its first error line if it fails."""
    proc = subprocess.run([nvcc, *args], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln),
                     proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                     else f"exit {proc.returncode}")
        raise CudaBuildError(f"{source.name}: nvcc failed ({arch}): {first.strip()}")


@functools.lru_cache(maxsize=None)
def load(source: str, arch: str) -> ctypes.CDLL:
    """ctypes handle of ``source`` (a path) built for ``arch``; cached per process."""
    return ctypes.CDLL(str(build(Path(source), arch)))


def load_for_device(source: Path, index: int, what: str, fallback: str) -> ctypes.CDLL | None:
    """The library of ``source`` built for CUDA device ``index`` (compute capability >= 8.0:
    the kernels use mma.sync and 16-byte async loads), or None: below 8.0 silently, and where
    it cannot be built after one line on stderr naming ``what`` and the ``fallback`` that
    runs instead."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    if major < 8:
        return None
    try:
        return load(str(source), f"sm_{major}{minor}")
    except (CudaBuildError, OSError) as e:
        print(f"optimizer: {what} unavailable ({e}); {fallback}", file=sys.stderr)
        return None
