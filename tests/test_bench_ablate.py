"""bench/ablate_w4a16.py makes copies of the W4A16 decode kernel with parts of its arithmetic
taken out (a timing tool only). Checked on CPU: each variant differs from
kernels/w4a16/mma_decode.cu where it says (the bodies of `mma` / `unpack`; for `bare` also
the three x reads, for `skeleton` also the epilogue), the rest of the text is the
kernel's own, and the most changed variant still compiles for sm_90 (nvcc only)."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path

import pytest

from kernel_cases import kernel

ROOT = Path(__file__).resolve().parent.parent
cuda_build = kernel("cuda_build")


def _module():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("ablate_w4a16",
                                                  ROOT / "bench" / "ablate_w4a16.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _changed_lines(a: str, b: str) -> list[str]:
    return [ln for ln in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
            if ln[:1] in ("+", "-") and not ln.startswith(("+++", "---"))]


def test_variants_change_only_what_they_name() -> None:
    ab = _module()
    src = (ROOT / "kernels" / "w4a16" / "mma_decode.cu").read_text()
    assert ab.variant_text("as is") == src
    no_mma = ab.variant_text("no-mma")
    no_unpack = ab.variant_text("no-unpack")
    # the asm of the real bodies is gone exactly where replaced
    assert "mma.sync.aligned.m16n8k16" in src and "mma.sync.aligned.m16n8k16" not in no_mma
    assert "lop3.b32" in src and "lop3.b32" not in no_unpack
    assert "mma.sync.aligned.m16n8k16" in no_unpack and "lop3.b32" in no_mma
    # every removed line of no-mma lies inside the original `mma` function
    start = src.index("void mma(float (&c)[4]")
    body = src[start:src.index("\n}\n", start)]
    removed = [ln[1:] for ln in _changed_lines(src, no_mma) if ln.startswith("-")]
    assert removed and all(ln in body for ln in removed)
    # `neither` = both replacements; `bare` = neither + the three x reads switched off
    neither = ab.variant_text("neither")
    assert "mma.sync.aligned.m16n8k16" not in neither and "lop3.b32" not in neither
    bare = ab.variant_text("bare")
    diff = _changed_lines(neither, bare)
    assert sorted(ln[0] for ln in diff) == ["+"] * 3 + ["-"] * 3
    assert "const int vecs = 0;" in bare and "if (false) {" in bare
    # `skeleton` = bare without the epilogue: the warps' sum and the split-K sum are gone
    skeleton = ab.variant_text("skeleton")
    assert "atomicAdd(locks" in bare and "atomicAdd(locks" not in skeleton
    assert "mma.sync.aligned.m16n8k16" not in skeleton and "lop3.b32" not in skeleton
    assert "const int vecs = 0;" in skeleton
    assert skeleton.count("load(u);") == bare.count("load(u);") == 2   # prologue, loop


@pytest.mark.skipif(cuda_build.find_nvcc() is None, reason="no nvcc here")
def test_skeleton_variant_compiles(tmp_path, monkeypatch) -> None:
    ab = _module()
    monkeypatch.setenv("OPTIMIZER_CACHE", str(tmp_path / "cache"))
    paths = ab.write_variants(tmp_path / "src")
    lib = cuda_build.build(paths["skeleton"], "sm_90")
    assert lib.is_file() and lib.stat().st_size > 0
