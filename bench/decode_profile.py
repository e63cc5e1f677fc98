"""Where a decode step's time goes: the kernels of one CUDA-graph replay, in place.

    python3 bench/decode_profile.py ARTIFACT [--batch 1] [--context 160] [--steps 20]

Loads a ``--target cuda`` artifact on the GPU, captures its decode step for --batch
sequences at position --context, and records --steps replays with torch.profiler (CUPTI
sees the kernels inside the graph). With PDL a kernel starts before the previous one ends,
so a kernel's own duration counts time it spent waiting; the table instead charges each
kernel the time from the previous kernel's end to its own end ("marginal": their sum is the
step's time). Columns per kernel name: launches per step, marginal µs per step, the part of
it when no kernel ran ("idle before": launch gaps), the kernels' own durations, and the
share of the step. A second table splits one layer by position (so the four projections of
a layer, which share a kernel name, get a row each), averaged over the middle layers.
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


def layer_period(names: list[str]) -> int | None:
    """The number of kernels per layer: the smallest shift under which the middle half of
    a step's kernel names repeats (None if none does)."""
    lo, hi = len(names) // 4, 3 * len(names) // 4
    for p in range(2, max(2, (hi - lo) // 2)):
        idx = range(lo, hi - p)
        if idx and all(names[j] == names[j + p] for j in idx):
            return p
    return None


def layer_table(ev: list[tuple[float, float, str]], marg: list[float], steps: int
                ) -> list[str]:
    """Markdown lines: each kernel of one layer (its position in the layer's run), its
    marginal and own µs averaged over the middle half of every step's layers."""
    per = len(ev) // steps                     # kernels per step
    names = [k for _, _, k in ev[:per]]
    period = layer_period(names)
    if not period:
        return []
    lo, hi = per // 4, 3 * per // 4
    sums, owns, n = [0.0] * period, [0.0] * period, 0
    for s0 in range(0, steps * per, per):
        for j in range(lo, hi - period + 1, period):
            n += 1
            for q in range(period):
                sums[q] += marg[s0 + j + q]
                owns[q] += ev[s0 + j + q][1] - ev[s0 + j + q][0]
    lines = ["", f"One layer ({period} kernels), averaged over {n} layers from the middle of "
             "the steps:", "", "| # | kernel | marginal µs | own µs |", "|---:|---|---:|---:|"]
    for q in range(period):
        lines.append(f"| {q} | {names[lo + q]} | {sums[q] / n:.2f} | {owns[q] / n:.2f} |")
    lines.append(f"| | layer | {sum(sums) / n:.2f} | |")
    return lines


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
    marg = []                                  # per event, in order
    prev_end = ev[0][0]
    for start, end, name in ev:
        marg.append(max(0.0, end - prev_end))
        marginal[name] += marg[-1]
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
    lines += layer_table(ev, marg, steps)
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
