"""The CUDA float GEMV (kernels/gemv/gemv.cu) against cuBLAS and the Triton GEMV, as decode
calls them: each call is an RMSNorm producing x, then the projection (so a PDL launch
overlaps a small kernel, not a copy of itself). Every config is checked against the float64
reference first; times are CUDA-graph replays over rotating weight copies (bench/gemm.py's
`graph_timed`), µs per norm + projection, and "% BW" counts the weight bytes over the time.

    python bench/gemv_sweep.py                          # Llama-3-8B bf16 shapes, M = 1, 2, 4
    python bench/gemv_sweep.py --shapes "o,qkv" --ms 1
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemm  # noqa: E402  (bench/gemm.py: graph_timed, copy_bandwidth)
from kernels.gemv import cuda_gemv, triton_gemv  # noqa: E402
from kernels.gemv.reference import gemv as gemv_ref  # noqa: E402
from kernels.rms_norm.triton_rms_norm import rms_norm  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gateup": (28672, 4096),
          "down": (4096, 14336), "lm_head": (128256, 4096)}      # (N, K) of Llama-3-8B
CONFIGS = [cuda_gemv.GemvConfig(r, w) for r in (4, 8, 16) for w in (4, 8)]


def sweep(name: str, ms: list[int], bw: float) -> list[dict]:
    n, k = SHAPES[name]
    w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
    copies = [w] + [w.clone() for _ in range(max(1, min(15, math.ceil((256 << 20)
                                                                       / w.nbytes)) - 1))]
    norm_w = torch.rand(k, dtype=torch.bfloat16, device="cuda") + 0.5
    rows = []
    for m in ms:
        x0 = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        ref = gemv_ref(rms_norm(x0, norm_w, 1e-5), w).double()
        methods = {"cublas": lambda x, c: F.linear(x, c)}
        if m == 1:
            methods["triton"] = lambda x, c: triton_gemv.gemv(x, c)
        for cfg in CONFIGS:
            methods[f"r{cfg.rows} w{cfg.warps}"] = lambda x, c, cfg=cfg: cuda_gemv.gemv(
                x, c, cfg=cfg)
        res, bad = [], []
        for label, fn in methods.items():
            y = fn(rms_norm(x0, norm_w, 1e-5), w).double()
            err = ((y - ref).norm() / ref.norm()).item()
            if not err < 1e-2:
                bad.append({"cfg": label, "err": err})
                continue
            us = gemm.graph_timed(lambda c, fn=fn: fn(rms_norm(x0, norm_w, 1e-5), c), copies,
                                  w.nbytes / bw * 1e6)
            res.append({"cfg": label, "us": us, "err": err,
                        "bw_pct": 100 * w.nbytes / (us * 1e-6) / bw})
        norm_us = gemm.graph_timed(lambda c: rms_norm(x0, norm_w, 1e-5), copies, 2.0)
        res.sort(key=lambda r: r["us"])
        pick = cuda_gemv.pick_config(m, n, k)
        picked = next((r for r in res if r["cfg"] == f"r{pick.rows} w{pick.warps}"), None)
        cub = next(r for r in res if r["cfg"] == "cublas")
        rows.append({"shape": name, "M": m, "norm_us": norm_us, "results": res,
                     "picked": picked, "failures": bad})
        print(f"{name:8s} M={m}: norm alone {norm_us:5.1f} | cublas {cub['us']:6.1f} "
              f"({cub['bw_pct']:.0f}%) | picked {picked['cfg'] if picked else '-'} "
              f"{picked['us'] if picked else 0:6.1f} | best "
              + ", ".join(f"{r['cfg']} {r['us']:.1f} ({r['bw_pct']:.0f}%)" for r in res[:4])
              + (f" | {len(bad)} FAILED: {bad}" if bad else ""), flush=True)
    return rows


def main() -> None:
    gemm.sweep_main(__doc__, sweep, ",".join(SHAPES), "1,2,4", "gemv_sweep.json")


if __name__ == "__main__":
    main()
