"""W4A16 GEMM benchmark: ours (kernels/w4a16, group 128, asymmetric) vs cuBLAS bf16 and
PyTorch's int4 tinygemm (``torch.ops.aten._weight_int4pack_mm``) on Llama-2-7B / Llama-3-8B
linear shapes (those of ../shared/peer/anchor_gemm.py), M in 1 .. 4096.

    python bench/gemm.py                  # full table (1-2 minutes on an H100)
    python bench/w4a16_sweep.py           # try configs per (shape, M): sets pick_config
    python bench/gemm.py --shapes "o 7B" --ms 1,16,128
    python bench/gemm.py --profile        # do_bench vs CUDA-graph times (for ncu)

Method: copy bandwidth first (device-to-device copy of 2 GiB, bytes read + written). Each
GEMM is timed twice, each call taking the next of several weight copies (>= 256 MB, or 16
copies, together) so weights come from DRAM: `triton.testing.do_bench`'s median (it also
flushes L2 before every call, which adds a few µs of dirty-line write-back to every method)
and the median per call of a CUDA-graph replay (no launch gaps; the headline number).
Before timing, ours is checked against a float32 reference (the first <= 64 rows, dequantized
weights, no TF32): ``||y - ref|| / ||ref|| < 1e-2``, else the row says FAIL.
Bytes per call (for % of copy bandwidth): weights as stored (ours: N*K/2 codes + G*N*4 scale
and zero words; tinygemm: N*K/2 + G*N*4 bf16 scale/zero pairs; bf16: N*K*2) + x + y.
Results: a table on stdout (last); JSON and markdown under $OUT when set.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # `kernels` from the repo root
from kernels.w4a16 import layout, reference  # noqa: E402
from kernels.w4a16 import cuda_decode as cd  # noqa: E402
from kernels.w4a16 import triton_gemm as tg  # noqa: E402

SHAPES = {"qkv 7B": (4096, 12288), "o 7B": (4096, 4096), "gateup 7B": (4096, 22016),
          "down 7B": (11008, 4096), "qkv 8B": (4096, 6144), "gateup 8B": (4096, 28672),
          "down 8B": (14336, 4096)}                     # "o 8B" is "o 7B"
MS = (1, 2, 4, 8, 16, 32, 64, 128, 512, 4096)
GROUP = 128
ROTATE_BYTES = 256 << 20
DEV = "cuda"


def sweep_main(doc: str, sweep, shapes: str, ms: str, json_name: str) -> None:
    """The shared command line of the kernel sweeps (gemv_sweep.py, w4a16_mma_sweep.py):
    --shapes / --ms, ``sweep(name, ms, copy_bw)`` per shape (rows with a "failures" list),
    the rows to ``$OUT/json_name``, exit 1 if any config differs from its reference."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--shapes", default=shapes)
    ap.add_argument("--ms", default=ms)
    args = ap.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    for name in (s.strip() for s in args.shapes.split(",")):
        rows += sweep(name, [int(v) for v in args.ms.split(",")], bw)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], json_name).write_text(
            json.dumps({"copy_bw": bw, "rows": rows}, indent=1))
    if any(r["failures"] for r in rows):
        print("FAIL: some configs differ from the reference")
        sys.exit(1)


def copy_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy, counting bytes read plus written."""
    x = torch.empty(1 << 30, dtype=torch.float16, device=DEV).normal_()
    y = torch.empty_like(x)
    t = do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median")
    return 2 * x.numel() * 2 / (t * 1e-3)


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-128 min/max quantization: codes int32 [N, K], float16 scales [N, G],
    uint8 zeros [N, G], with w ~ (q - z) * s."""
    n, k = w.shape
    wg = w.float().reshape(n, k // GROUP, GROUP)
    mn, mx = wg.amin(-1), wg.amax(-1)
    s = ((mx - mn) / 15).clamp(min=1e-6).half()
    z = (-mn / s.float()).round().clamp(0, 15)
    q = (wg / s.float()[..., None] + z[..., None]).round().clamp(0, 15).to(torch.int32)
    return q.reshape(n, k), s, z.to(torch.uint8)


class Layer:
    """One linear's weights in the three forms, with rotating copies."""

    def __init__(self, k: int, n: int) -> None:
        self.k, self.n, self.g = k, n, k // GROUP
        w = torch.randn(n, k, dtype=torch.bfloat16, device=DEV) * 0.02
        q, s, z = quantize(w)
        self.storage = ((q[:, 0::2] | q[:, 1::2] << 4).to(torch.uint8), s, z)   # ours, packed
        self.w_ref = reference.dequantize(*self.storage[:1], s, z, None, GROUP, k)  # f32 [N,K]
        prepared = layout.prepare(*self.storage, None, GROUP, k)
        # tinygemm (as ../shared/peer/anchor_gemm.py): w = (q - 8) * s + zero, bf16 pairs
        zero_tg = (8 - z.float()) * s.float()
        self.sz_tg = torch.stack([s.float(), zero_tg], -1).transpose(0, 1).contiguous() \
            .to(torch.bfloat16)                                      # [G, N, 2]
        try:
            packed_tg = torch.ops.aten._convert_weight_to_int4pack(
                (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
        except Exception as e:   # noqa: BLE001 - report and carry on without tinygemm
            print(f"tinygemm pack failed: {e}")
            packed_tg = None
        copies = lambda b: max(2, min(16, math.ceil(ROTATE_BYTES / b)))  # noqa: E731
        self.bf16 = [w] + [w.clone() for _ in range(copies(w.numel() * 2) - 1)]
        ours_bytes = n * k // 2 + self.g * n * 4
        self.ours = [prepared] + [{key: t.clone() for key, t in prepared.items()}
                                  for _ in range(copies(ours_bytes) - 1)]
        self.tg = (None if packed_tg is None else
                   [packed_tg] + [packed_tg.clone() for _ in range(copies(ours_bytes) - 1)])
        self.bytes = {"bf16": n * k * 2, "tinygemm": n * k // 2 + self.g * n * 4,
                      "ours": ours_bytes, "triton": ours_bytes}


def timed(fn_of_copy, copies: list, big: bool) -> float:
    """do_bench's median µs of fn, taking the weight copies in turn. do_bench zeroes a
    256 MB buffer before every call to flush L2; the dirty lines it leaves are written back
    during the timed call, which adds roughly 10 µs to every method (see `graph_timed`)."""
    it = itertools.cycle(copies)
    return do_bench(lambda: fn_of_copy(next(it)), warmup=10 if big else 25,
                    rep=60 if big else 100, return_mode="median") * 1e3


def graph_timed(fn_of_copy, copies: list, est_us: float) -> float:
    """Median µs per call of a CUDA graph calling fn once per weight copy in turn (no Python
    or launch gaps, as decode runs under graphs). L2 is not flushed, but consecutive calls use
    different copies (>= 256 MB, or 16 copies, together), so weights come from DRAM."""
    calls = len(copies) * max(1, min(64, int(3000 / max(est_us, 1.0) / len(copies))))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in copies:                   # warm-up (allocator, cuBLAS handles) off-graph
            fn_of_copy(c)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn_of_copy(copies[i % len(copies)])
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    del graph
    return sorted(times)[len(times) // 2]


def check(layer: Layer, x: torch.Tensor, y: torch.Tensor) -> float:
    rows = min(x.shape[0], 64)
    ref = x[:rows].float() @ layer.w_ref.T
    return ((y[:rows].float() - ref).norm() / ref.norm()).item()


def describe(c: tg.GemmConfig | tg.CublasConfig) -> str:
    if isinstance(c, tg.CublasConfig):
        return f"cublas chunk{c.chunk_n}"
    kind = "fac" if c.factored else "deq"
    return f"{kind} {c.block_m}x{c.block_n} s{c.split_k} w{c.num_warps} st{c.num_stages}"


def path_of(m: int, n: int, k: int) -> str:
    sms = tg.sm_count(torch.device(DEV))
    if m <= cd.AUTO_MAX_M and cd.available(torch.zeros(m, k, dtype=torch.bfloat16, device=DEV)):
        c = cd.pick_config(m, n, k, sms)
        return f"mma w{c.warps} u{c.inflight} s{c.split_k}"
    return describe(tg.pick_config(m, n, k, sms))


def bench(shapes: list[str], ms: list[int], bw: float) -> list[dict]:
    rows = []
    for name in shapes:
        t0 = time.time()
        rows += bench_shape(name, ms, bw)
        torch.cuda.empty_cache()
        print(f"# {name} done in {time.time() - t0:.0f} s", flush=True)
    return rows


def bench_shape(name: str, ms: list[int], bw: float) -> list[dict]:
    """Check, then time the three GEMMs at every M for one weight shape."""
    rows = []
    k, n = SHAPES[name]
    layer = Layer(k, n)
    for m in ms:
        x = torch.randn(m, k, dtype=torch.bfloat16, device=DEV)
        xy = m * k * 2 + m * n * 2
        err = check(layer, x, tg.w4a16_linear(x, layer.ours[0]))
        big = m >= 512
        r = {"shape": name, "K": k, "N": n, "M": m, "err": err, "ok": err < 1e-2,
             "path": path_of(m, n, k)}
        fns = {"bf16": (lambda w: x @ w.T, layer.bf16),
               "ours": (lambda p: tg.w4a16_linear(x, p), layer.ours)}
        if m <= cd.AUTO_MAX_M:      # the Triton kernel, which "auto" replaced at these M
            r["triton_err"] = check(layer, x, tg.w4a16_linear(x, layer.ours[0], path="fused"))
            r["ok"] = r["ok"] and r["triton_err"] < 1e-2
            fns["triton"] = (lambda p: tg.w4a16_linear(x, p, path="fused"), layer.ours)
        if layer.tg is not None:
            fns["tinygemm"] = (lambda p: torch.ops.aten._weight_int4pack_mm(
                x, p, GROUP, layer.sz_tg), layer.tg)
        for key, (fn, copies) in fns.items():
            r[f"{key}_dobench_us"] = timed(fn, copies, big)
            r[f"{key}_us"] = graph_timed(fn, copies, r[f"{key}_dobench_us"])
            t = r[f"{key}_us"] * 1e-6
            r[f"{key}_bw_pct"] = 100 * (layer.bytes[key] + xy) / t / bw
            r[f"{key}_tflops"] = 2 * m * n * k / t / 1e12
        r["speedup_vs_bf16"] = r["bf16_us"] / r["ours_us"]
        if "triton_us" in r:
            r["speedup_vs_triton"] = r["triton_us"] / r["ours_us"]
        r["speedup_vs_bf16_dobench"] = r["bf16_dobench_us"] / r["ours_dobench_us"]
        if "tinygemm_us" in r:
            r["speedup_vs_tinygemm"] = r["tinygemm_us"] / r["ours_us"]
        rows.append(r)
        print(json.dumps({key: (round(v, 4) if isinstance(v, float) else v)
                          for key, v in r.items()}), flush=True)
    return rows


def profile(shapes: list[str], ms: list[int]) -> None:
    """Launch overhead check: each GEMM timed by do_bench (events around a Python call) and
    by do_bench_cudagraph (graph replay, no Python); run under ncu for kernel counters."""
    from triton.testing import do_bench_cudagraph

    for name in shapes:
        k, n = SHAPES[name]
        layer = Layer(k, n)
        for m in ms:
            x = torch.randn(m, k, dtype=torch.bfloat16, device=DEV)
            fns = {"bf16": lambda: x @ layer.bf16[0].T,
                   "ours": lambda: tg.w4a16_linear(x, layer.ours[0])}
            if layer.tg is not None:
                fns["tinygemm"] = lambda: torch.ops.aten._weight_int4pack_mm(
                    x, layer.tg[0], GROUP, layer.sz_tg)
            for key, fn in fns.items():
                fn()
                torch.cuda.synchronize()
                t_ev = do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
                with torch.cuda.stream(torch.cuda.Stream()):
                    t_g = do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
                print(f"{name:10s} M={m:5d} {key:9s} do_bench {t_ev:8.1f} us  "
                      f"cudagraph {t_g:8.1f} us  ({path_of(m, n, k) if key == 'ours' else ''})",
                      flush=True)


def markdown(rows: list[dict], bw: float) -> str:
    head = ("| shape | M | bf16 µs | tinygemm µs | triton µs | ours µs | ours do_bench µs "
            "| ours %BW | ours TFLOP/s | vs bf16 | vs tinygemm | vs triton | path | check |")
    lines = [f"Copy bandwidth {bw / 1e12:.2f} TB/s; {torch.cuda.get_device_name()}; "
             f"torch {torch.__version__}, triton {triton.__version__}. µs: CUDA-graph replay "
             "over rotating weight copies; do_bench: median with L2 flushes.", "", head,
             "|" + "---|" * 14]
    nan = float("nan")
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['M']} | {r['bf16_us']:.1f} | {r.get('tinygemm_us', nan):.1f} "
            f"| {r.get('triton_us', nan):.1f} "
            f"| {r['ours_us']:.1f} | {r['ours_dobench_us']:.1f} | {r['ours_bw_pct']:.0f} "
            f"| {r['ours_tflops']:.0f} | {r['speedup_vs_bf16']:.2f} "
            f"| {r.get('speedup_vs_tinygemm', nan):.2f} "
            f"| {r.get('speedup_vs_triton', nan):.2f} | {r['path']} "
            f"| {'ok' if r['ok'] else 'FAIL'} {r['err']:.1e} |")
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    nan = float("nan")
    out = [f"{'shape':10s} {'M':>5s} {'bf16':>7s} {'tgemm':>7s} {'triton':>7s} {'ours':>7s} "
           f"{'ours_db':>7s} "
           f"{'%BW':>4s} {'xbf16':>6s} {'xtg':>6s} {'path':22s} check"]
    for r in rows:
        out.append(f"{r['shape']:10s} {r['M']:5d} {r['bf16_us']:7.1f} "
                   f"{r.get('tinygemm_us', nan):7.1f} {r.get('triton_us', nan):7.1f} "
                   f"{r['ours_us']:7.1f} "
                   f"{r['ours_dobench_us']:7.1f} {r['ours_bw_pct']:4.0f} "
                   f"{r['speedup_vs_bf16']:6.2f} {r.get('speedup_vs_tinygemm', nan):6.2f} "
                   f"{r['path']:22s} {'ok' if r['ok'] else 'FAIL'}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names")
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--profile", action="store_true",
                    help="do_bench vs CUDA-graph timings (run under ncu for counters)")
    args = ap.parse_args()
    shapes = [s.strip() for s in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")]
    torch.manual_seed(0)
    t0 = time.time()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    out = os.environ.get("OUT")
    if args.profile:
        profile(shapes, ms)
        return
    rows = bench(shapes, ms, bw)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gemm.json").write_text(json.dumps({"copy_bw": bw, "rows": rows}, indent=1))
        Path(out, "gemm.md").write_text(markdown(rows, bw))
    print(f"# total {time.time() - t0:.0f} s; copy bandwidth {bw / 1e12:.2f} TB/s")
    print(table(rows))
    if not all(r["ok"] for r in rows):
        print("FAIL: ours differs from the reference (see the check column)")
        sys.exit(1)


if __name__ == "__main__":
    main()
