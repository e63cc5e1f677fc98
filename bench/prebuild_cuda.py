"""Build the CUDA kernels' libraries here, for a GPU machine that would otherwise build them
at first use (kernels/cuda_build.py), and say how to carry them there.

    python3 bench/prebuild_cuda.py [--arch sm_90] [--out .carry-cuda]

Builds kernels/w4a16/mma_decode.cu, kernels/gemv/gemv.cu, kernels/attention/decode_attn.cu
(where the tree has it) and bench/read_floor.cu into
``OUT/optcache`` (the layout of ``$OPTIMIZER_CACHE``). The cache key covers the source and
the headers it includes, the arch, the flags and nvcc's version, so a library built with
the same nvcc as the GPU machine's (13.0 on the lent H100/H200, 13.0 here) is found
there instead of built: on a fresh device machine that saves the 90-115 s first-use build
(bench/RESULTS.md, fifth session). Carry ``OUT`` with the device call; bench/device_suite.sh
copies ``.carry-cuda/optcache`` into its cache.
A different nvcc there only means a different key: the kernels are then built as usual.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("kernels/w4a16/mma_decode.cu", "kernels/gemv/gemv.cu",
           "kernels/attention/decode_attn.cu",
           "bench/read_floor.cu")                    # the last: bench/read_floor.py


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", type=Path, default=ROOT / ".carry-cuda")
    a = ap.parse_args(argv)
    os.environ["OPTIMIZER_CACHE"] = str((a.out / "optcache").resolve())
    sys.path.insert(0, str(ROOT))
    try:
        from optimizer.kernels import cuda_build
    except ImportError:                          # not installed: the source tree itself
        from kernels import cuda_build
    for src in SOURCES:
        if not (ROOT / src).exists():           # an older tree (an A/B's tree B)
            continue
        t0 = time.time()
        try:
            lib = cuda_build.build(ROOT / src, a.arch)
        except cuda_build.CudaBuildError as e:
            print(f"prebuild_cuda: {e}", file=sys.stderr)
            return 1
        print(f"{src}: {lib.relative_to(a.out.resolve())} ({time.time() - t0:.0f} s)")
    print(f"carry {a.out.name} with the device call (run(..., carry=[\"{a.out.name}\"]))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
