"""Configs of the CUDA W4A16 decode kernel (kernels/w4a16/mma_decode.cu) per shape and M:
warps per CTA x blocks in flight per warp x split-K, each checked against the float32
reference, then timed as bench/gemm.py times (CUDA-graph replay over rotating weight copies).
Prints the best few per (shape, M) and, for comparison, the Triton kernel and `pick_config`.

    python bench/w4a16_mma_sweep.py                          # 8B shapes, M = 1 and 8
    python bench/w4a16_mma_sweep.py --shapes "o 7B" --ms 1,4
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemm  # noqa: E402  (bench/gemm.py: Layer, graph_timed, copy_bandwidth, check)
from gemm import cd, tg  # noqa: E402

SPLITS = (1, 2, 4, 8)


def sweep(name: str, ms: list[int], bw: float) -> list[dict]:
    k, n = gemm.SHAPES[name]
    layer = gemm.Layer(k, n)
    sms = tg.sm_count(torch.device("cuda"))
    rows = []
    for m in ms:
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        nbytes = layer.bytes["ours"] + m * k * 2 + m * n * 2
        pick = cd.pick_config(m, n, k, sms)
        res = []
        cands = [cd.MmaConfig(w, u, s, xs) for w in (4, 8, 16) for u, xs in
                 ((2, False), (4, False), (2, True)) for s in SPLITS
                 if s <= k // 128 and (w < 16 or u == 2)]
        for cfg in cands:
            try:
                err = gemm.check(layer, x, tg.w4a16_linear(x, layer.ours[0], config=cfg))
            except ValueError:                   # staged x too large for this split
                continue
            us = gemm.graph_timed(lambda p, c=cfg: tg.w4a16_linear(x, p, config=c),
                                  layer.ours, 20.0)
            res.append({"cfg": f"w{cfg.warps} u{cfg.inflight} s{cfg.split_k}"
                               + (" xs" if cfg.stage_x else ""), "us": us,
                        "err": err, "bw_pct": 100 * nbytes / (us * 1e-6) / bw,
                        "picked": cfg == pick})
        tri = gemm.graph_timed(lambda p: tg.w4a16_linear(x, p, path="fused"), layer.ours, 20.0)
        res.sort(key=lambda r: r["us"])
        bad = [r for r in res if r["err"] >= 1e-2]
        picked = next((r for r in res if r["picked"]), None)
        row = {"shape": name, "M": m, "triton_us": tri, "best": res[:4], "picked": picked,
               "failures": bad}
        rows.append(row)
        print(f"{name:10s} M={m}: triton {tri:6.1f} us | picked "
              f"{picked['cfg'] if picked else '-'} {picked['us'] if picked else 0:6.1f} | best "
              + ", ".join(f"{r['cfg']} {r['us']:.1f} ({r['bw_pct']:.0f}%)" for r in res[:4])
              + (f" | {len(bad)} FAILED" if bad else ""), flush=True)
    return rows


def main() -> None:
    gemm.sweep_main(__doc__, sweep, "qkv 8B,o 7B,gateup 8B,down 8B", "1,8",
                    "w4a16_mma_sweep.json")


if __name__ == "__main__":
    main()
