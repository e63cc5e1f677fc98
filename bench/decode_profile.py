"""Where a decode step's time goes: the kernels of one CUDA-graph replay, in place.

    python3 bench/decode_profile.py ARTIFACT [--batch 1] [--context 160] [--steps 20]

Loads a ``--target cuda`` artifact on the GPU, captures its decode step for --batch
sequences at position --context, and records --steps replays with torch.profiler (CUPTI
sees the kernels inside the graph). With PDL a kernel starts before the previous one ends,
so a kernel's own duration counts time it spent waiting; the table instead charges each
kernel the time from the previous kernel's end to its own end ("marginal": their sum is the
step's time). Columns per kernel name: launches per step, marginal µs per step, the part of
it when no kernel ran ("idle before": launch gaps), the kernels' own durations, and the
share of the step.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def short(name: str) -> str:
    """A kernel's name without template arguments and parameter lists."""
    name = name.replace("(anonymous namespace)::", "")
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\(.*", "", name)
    name = re.sub(r"<.*", "", name)
    return name.split("::")[-1][:60] or "(unnamed)"


def kernel_events(trace: Path) -> list[tuple[float, float, str]]:
    data = json.loads(trace.read_text())
    out = []
    for e in data.get("traceEvents", []):
        if e.get("cat") == "kernel" and "dur" in e:
            out.append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), short(e["name"])))
    return sorted(out)


def profile(path: Path, batch: int, context: int, steps: int) -> str:
    import optimizer
    rt = optimizer.runtime.load(path, device="cuda")
    eng = rt.engine
    eng.ensure_cache(batch, context + steps + 16)
    cap = eng.decoder(batch)
    cap.positions.fill_(context)
    for _ in range(5):
        eng.step(cap)
    cap.positions.fill_(context)
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            eng.step(cap)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.json"
        prof.export_chrome_trace(str(trace))
        ev = kernel_events(trace)
    if not ev:
        return f"{path.name} B={batch}: the profiler recorded no kernels"
    wall = (ev[-1][1] - ev[0][0]) / steps
    marginal, own, idle = defaultdict(float), defaultdict(float), defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    prev_end = ev[0][0]
    for start, end, name in ev:
        marginal[name] += max(0.0, end - prev_end)
        idle[name] += max(0.0, start - prev_end)
        own[name] += end - start
        count[name] += 1
        prev_end = max(prev_end, end)
    rows = sorted(marginal, key=lambda k: -marginal[k])
    lines = [f"### {path.name}, batch {batch}, context {context}: {wall:.1f} µs per step "
             f"({batch * 1e6 / wall:.1f} tok/s under the profiler), {len(ev) / steps:.0f} "
             f"kernels per step", "",
             "| kernel | per step | marginal µs | idle before µs | own µs | share |",
             "|---|---:|---:|---:|---:|---:|"]
    for k in rows:
        lines.append(f"| {k} | {count[k] / steps:.0f} | {marginal[k] / steps:.1f} | "
                     f"{idle[k] / steps:.1f} | {own[k] / steps:.1f} | "
                     f"{100 * marginal[k] / steps / wall:.1f}% |")
    per = len(ev) // steps                     # one layer's run of kernels, mid-step
    lines += ["", "A run of kernels from the middle of one step (µs from the first):", "",
              "| kernel | start | own | marginal |", "|---|---:|---:|---:|"]
    mid = per // 2
    for i in range(mid, min(mid + 14, len(ev))):
        s, e, k = ev[i]
        lines.append(f"| {k} | {s - ev[mid][0]:.1f} | {e - s:.1f} | "
                     f"{max(0.0, e - max(x[1] for x in ev[:i])):.1f} |")
    del rt, eng, cap
    torch.cuda.empty_cache()
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--context", type=int, default=160)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    for path in a.artifacts:
        for b in (int(s) for s in a.batch.split(",")):
            print(profile(path, b, a.context, a.steps), flush=True)
            print(flush=True)


if __name__ == "__main__":
    main()
