"""The CUDA W4A16 decode kernel under Nsight Compute, where the machine lets ncu read the
hardware counters (the device's Firecracker machines do, its gVisor ones do not): per 8B
shape at M = 1, the picked config, launched eagerly on fresh weight copies, so that ncu
reports memory throughput, issue activity and warp stall reasons per shape.

    ncu --clock-control none -k regex:w4a16_mma_kernel --section SpeedOfLight \\
        --section WarpStateStats --section SchedulerStats --section Occupancy \\
        python3 bench/ncu_w4a16.py [--shapes "gateup 8B,down 8B"] [--m 1]

Each shape's kernels follow a line "== shape NAME M=..." in the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemm  # noqa: E402
from gemm import cd, tg  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="qkv 8B,o 7B,gateup 8B,down 8B")
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--launches", type=int, default=1, help="profiled launches per shape")
    a = ap.parse_args()
    sms = tg.sm_count(torch.device("cuda"))
    for name in a.shapes.split(","):
        k, n = gemm.SHAPES[name]
        layer = gemm.Layer(k, n)
        x = torch.randn(a.m, k, dtype=torch.bfloat16, device="cuda")
        cfg = cd.pick_config(a.m, n, k, sms)
        torch.cuda.synchronize()
        print(f"== shape {name} M={a.m} config {cfg}", flush=True)
        for i in range(a.launches):
            tg.w4a16_linear(x, layer.ours[1 + i % (len(layer.ours) - 1)], config=cfg)
        torch.cuda.synchronize()
        del layer


if __name__ == "__main__":
    main()
