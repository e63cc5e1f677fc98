"""Where the CUDA W4A16 decode kernel's time goes beyond its reads: the kernel timed as it
is and with parts of its arithmetic taken out, on the 8B shapes (the timing of gemm.py:
CUDA-graph replay over rotating weight copies).

    python3 bench/ablate_w4a16.py [--shapes "qkv 8B,o 7B,gateup 8B,down 8B"] [--ms 1]
    python3 bench/ablate_w4a16.py --build-only        # compile the variants (cache them)

Variants, each a copy of kernels/w4a16/mma_decode.cu with one function body replaced (the
results are wrong on purpose; only their time is read):
- ``no-mma``: `mma` XORs its operands into the accumulator (2 integer ops, no tensor core);
- ``no-unpack``: `unpack` gives each of its 4 outputs the word, shifted, XOR the zero pair
  (2 ops each, none of them dependent on another);
- ``neither``: both; what is left is the loads, the x staging, the scale folds and the
  epilogue;
- ``bare``: neither, and no x read at all (no staging; the B operands are zeros): what is
  left is the loads, the scale folds and the epilogue (the warps' sum, split-K);
- ``skeleton``: bare without the epilogue (each warp stores its own accumulator over
  row 0 of y: no sum in shared memory, no split-K sum): the loads and the folds.
Each row also prints `bench/read_floor.py`'s pattern read of the same weights at the
kernel's occupancy, the floor these approach. A measurement tool only: nothing outside
bench/ uses the variants.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

SOURCE = ROOT / "kernels" / "w4a16" / "mma_decode.cu"
COMMON = ROOT / "kernels" / "cuda_common.cuh"

NO_MMA = """{
  c[0] = __uint_as_float(__float_as_uint(c[0]) ^ a0 ^ a1 ^ a2);
  c[1] = __uint_as_float(__float_as_uint(c[1]) ^ a3 ^ b0 ^ b1);
}
"""
NO_UNPACK = """{
#pragma unroll
  for (int j = 0; j < 4; ++j) o[j] = (w << j) ^ zz;
}
"""

EPILOGUE = "  // sum the WK warps' tiles in warp order"
NO_EPILOGUE = """  // (ablation) no epilogue: every warp stores its accumulator over row 0 of y
#pragma unroll
  for (int h = 0; h < 2; ++h)
    if (t == 0 && ok[2 * h])
      y[col[2 * h]] = float_to_act(acc[h][0] + acc[h][1] + acc[h][2] + acc[h][3], BF16);
"""


def _replace_body(text: str, signature: str, body: str) -> str:
    """``text`` with the body of the function whose header contains ``signature`` (up to
    the first line that is just "}") replaced by ``body``."""
    start = text.index(signature)
    open_ = text.index("{", start)
    close = text.index("\n}\n", open_) + 3
    return text[:open_] + body + text[close:]


# what each variant takes out, each a superset of the one before from "neither" on
REMOVED = {"as is": (), "no-mma": ("mma",), "no-unpack": ("unpack",),
           "neither": ("mma", "unpack"), "bare": ("mma", "unpack", "x"),
           "skeleton": ("mma", "unpack", "x", "epilogue")}
VARIANTS = tuple(REMOVED)


def variant_text(name: str) -> str:
    text = SOURCE.read_text()
    removed = REMOVED[name]
    if "mma" in removed:
        text = _replace_body(text, "void mma(float (&c)[4]", NO_MMA)
    if "unpack" in removed:
        text = _replace_body(text, "void unpack(uint32_t w", NO_UNPACK)
    if "x" in removed:
        for old, new in (("const int vecs = XS ? M * nblk * 16 : 0;", "const int vecs = 0;"),
                         ("if (g < M && XS) {", "if (false) {"),
                         ("} else if (g < M) {", "} else if (false) {")):
            if text.count(old) != 1:
                raise SystemExit(f"ablate_w4a16: {SOURCE.name} no longer has {old!r} once")
            text = text.replace(old, new)
    if "epilogue" in removed:
        start = text.index(EPILOGUE)
        end = text.index("\n}\n", start) + 1
        text = text[:start] + NO_EPILOGUE + text[end:]
    return text


def write_variants(where: Path) -> dict[str, Path]:
    """The variant sources under ``where`` (w4a16/<name>.cu beside a copy of
    cuda_common.cuh, as the include expects)."""
    (where / "w4a16").mkdir(parents=True, exist_ok=True)
    (where / "cuda_common.cuh").write_text(COMMON.read_text())
    paths = {}
    for name in VARIANTS[1:]:
        p = where / "w4a16" / (re.sub(r"\W", "_", name) + ".cu")
        p.write_text(variant_text(name))
        paths[name] = p
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="qkv 8B,o 7B,gateup 8B,down 8B")
    ap.add_argument("--ms", default="1")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--arch", default="sm_90", help="with --build-only")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ablate_w4a16_"))
    paths = write_variants(tmp)
    from optimizer.kernels import cuda_build
    if a.build_only:
        for name, p in paths.items():
            print(f"{name}: {cuda_build.build(p, a.arch)}", flush=True)
        return

    import torch

    import gemm                                      # bench/gemm.py
    import read_floor
    from optimizer.kernels.device_info import sm_count
    from optimizer.kernels.w4a16 import cuda_decode as cd
    from optimizer.kernels.w4a16 import triton_gemm as tg

    torch.manual_seed(0)
    bw = gemm.copy_bandwidth()
    sms = sm_count(torch.device("cuda"))
    index = torch.cuda.current_device()
    libs = {"as is": cd._library(index)}
    real_source = cd.SOURCE
    for name, p in paths.items():                    # the loader of cuda_decode, per source
        cd.SOURCE = p
        libs[name] = cd._library.__wrapped__(index)
    cd.SOURCE = real_source
    real_library = cd._library
    rd = read_floor.Reader()
    print(f"{torch.cuda.get_device_name()}; copy bandwidth {bw / 1e12:.2f} TB/s")
    print("| shape | M | config | " + " | ".join(f"{v} µs (%)" for v in VARIANTS)
          + " | pattern read µs (%) |")
    print("|---|---:|---|" + "---:|" * (len(VARIANTS) + 1))
    try:
        for shape in [s.strip() for s in a.shapes.split(",")]:
            k, n = gemm.SHAPES[shape]
            layer = gemm.Layer(k, n)
            nbytes = layer.bytes["ours"]
            pct = lambda us: f"{us:.2f} ({100 * nbytes / (us * 1e-6) / bw:.0f}%)"  # noqa: E731
            for m in [int(v) for v in a.ms.split(",")]:
                x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
                y = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
                cfg = cd.pick_config(m, n, k, sms)
                split = cfg.split_k or cd.choose_split(m, k, cfg)
                cells = []
                for name in VARIANTS:
                    cd._library = lambda i, lib=libs[name]: lib
                    cells.append(pct(gemm.graph_timed(
                        lambda p: tg.w4a16_linear(x, p, config=cfg), layer.ours, 10.0)))
                cd._library = real_library
                capped = read_floor.cap_smem(read_floor.WARPS_PER_SM // cfg.warps)
                floor = gemm.graph_timed(lambda p: rd.pattern(p, y, cfg, split, capped),
                                         layer.ours, 10.0)
                tag = f"w{cfg.warps} u{cfg.inflight} s{split}" + (" xs" if cfg.stage_x else "")
                print(f"| {shape} | {m} | {tag} | " + " | ".join(cells) + f" | {pct(floor)} |",
                      flush=True)
            del layer
    finally:
        cd._library = real_library


if __name__ == "__main__":
    main()
