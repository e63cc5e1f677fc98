"""kernels/cuda_build.py: nvcc builds at first use, cached, atomic, with one-line errors.

Runs on CPU where nvcc is installed (no GPU needed: the libraries are built and loaded, and
only host functions are called); skipped where there is no nvcc. The last tests compile the
real kernels (kernels/w4a16/mma_decode.cu, kernels/gemv/gemv.cu,
kernels/attention/decode_attn.cu) for sm_90, so a source that
does not compile fails CI, which has no GPU to run it on.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from kernel_cases import kernel

cuda_build = kernel("cuda_build")
needs_nvcc = pytest.mark.skipif(cuda_build.find_nvcc() is None, reason="no nvcc here")

HOST_SOURCE = """
extern "C" int add_scaled(int a, int b) { return a + SCALE * b; }
"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("OPTIMIZER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cuda"


@needs_nvcc
def test_builds_caches_and_loads(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "host_only.cu"
    src.write_text("#define SCALE 3\n" + HOST_SOURCE)
    lib_path = cuda_build.build(src, "sm_90")
    assert lib_path.parent.parent == cache and lib_path.name == "host_only.so"
    fn = ctypes.CDLL(str(lib_path)).add_scaled
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    assert fn(4, 5) == 19
    stamp = lib_path.stat().st_mtime_ns
    assert cuda_build.build(src, "sm_90") == lib_path               # cached: not rebuilt
    assert lib_path.stat().st_mtime_ns == stamp
    assert [p.name for p in lib_path.parent.iterdir()] == ["host_only.so"]   # no temp left
    src.write_text("#define SCALE 4\n" + HOST_SOURCE)                # new text: new key
    other = cuda_build.build(src, "sm_90")
    assert other != lib_path
    fn2 = ctypes.CDLL(str(other)).add_scaled
    fn2.restype, fn2.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    assert fn2(4, 5) == 24


@needs_nvcc
def test_included_header_is_part_of_the_key(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "inc").mkdir()
    header = tmp_path / "inc" / "scale.cuh"
    header.write_text("#define SCALE 3\n")
    src = tmp_path / "src" / "k.cu"
    src.parent.mkdir()
    src.write_text('#include "../inc/scale.cuh"\n' + HOST_SOURCE)
    first = cuda_build.build(src, "sm_90")
    assert cuda_build.build(src, "sm_90") == first                  # nothing changed: cached
    header.write_text("#define SCALE 5\n")                          # only the header changes
    second = cuda_build.build(src, "sm_90")
    assert second != first                                           # a new key: rebuilt
    fn = ctypes.CDLL(str(second)).add_scaled
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    assert fn(4, 5) == 29


def test_missing_include_is_a_clear_error(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "k.cu"
    src.write_text('#include "nowhere.cuh"\n' + HOST_SOURCE)
    with pytest.raises(cuda_build.CudaBuildError, match=r"^k.cu: cannot read .*nowhere.cuh"):
        cuda_build.source_text(src)


@needs_nvcc
def test_compile_error_is_one_line_and_leaves_nothing(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "broken.cu"
    src.write_text('extern "C" int f() { return undefined_name; }\n')
    with pytest.raises(cuda_build.CudaBuildError) as info:
        cuda_build.build(src, "sm_90")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("broken.cu: nvcc failed (sm_90):"), msg
    assert "undefined_name" in msg, msg
    assert not any(p.is_file() for p in cache.rglob("*")), list(cache.rglob("*"))


PARTS_SOURCE = """// cuda_build: parts 3
#if CUDA_BUILD_PART == 1
int part_one() { return 10; }
#elif CUDA_BUILD_PART == 2
int part_two() { return TWO; }
#else
int part_one();
int part_two();
extern "C" int total(int a) { return a + part_one() + part_two(); }
#endif
"""


@needs_nvcc
def test_parts_are_compiled_apart_and_linked(tmp_path: Path, cache: Path) -> None:
    """A source declaring ``// cuda_build: parts 3`` is compiled once per part with
    CUDA_BUILD_PART = 0, 1, 2 and linked into one library: total() in part 0 links only if
    parts 1 and 2 were built with their own definitions. A compile error in one part is the
    usual one line, and nothing is left behind."""
    src = tmp_path / "parts.cu"
    src.write_text("#define TWO 200\n" + PARTS_SOURCE)
    lib_path = cuda_build.build(src, "sm_90")
    fn = ctypes.CDLL(str(lib_path)).total
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
    assert fn(3) == 213
    assert [p.name for p in lib_path.parent.iterdir()] == ["parts.so"]   # no objects left
    src.write_text(PARTS_SOURCE)                                     # TWO undefined: part 2 fails
    with pytest.raises(cuda_build.CudaBuildError) as info:
        cuda_build.build(src, "sm_90")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("parts.cu: nvcc failed (sm_90):") and "TWO" in msg
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["parts.so"]


def test_no_compiler_is_a_clear_error(tmp_path: Path, cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(cuda_build, "find_nvcc", lambda: None)
    src = tmp_path / "k.cu"
    src.write_text(HOST_SOURCE)
    with pytest.raises(cuda_build.CudaBuildError, match=r"^k.cu: no CUDA compiler \(nvcc\)"):
        cuda_build.build(src, "sm_90")


@needs_nvcc
@pytest.mark.parametrize("package,source,prefix", [("w4a16", "mma_decode.cu", "w4a16_mma"),
                                                   ("gemv", "gemv.cu", "gemv"),
                                                   ("attention", "decode_attn.cu",
                                                    "attn_decode")])
def test_real_kernels_compile(cache: Path, package: str, source: str, prefix: str) -> None:
    src = Path(kernel(package).__file__).with_name(source)
    lib = ctypes.CDLL(str(cuda_build.build(src, "sm_90")))
    err = getattr(lib, prefix + "_error_string")
    err.restype, err.argtypes = ctypes.c_char_p, [ctypes.c_int]
    assert err(1) == b"invalid argument"                         # cudaErrorInvalidValue
    assert hasattr(lib, prefix + "_launch")
