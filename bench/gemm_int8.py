"""Int8 GEMM benchmark: ours W8A16 (kernels/w8a16) and W8A8 (kernels/w8a8) vs cuBLAS bf16
(``x @ W.T``) and cuBLAS int8 (``torch._int_mm``) on Llama-2-7B / Llama-3-8B linear shapes,
M in 1 .. 4096.

    python bench/gemm_int8.py                 # full table (about 1-2 minutes on an H100)
    python bench/gemm_int8.py --quick         # the four Llama-3-8B shapes, fewer M
    python bench/gemm_int8.py --check         # quick correctness (a few shapes); 1 on FAIL
    python bench/gemm_int8.py --sweep         # configs per M (8B shapes, M 1,16,128,512; ~3 min)
    python bench/gemm_int8.py --sweep --shapes "o 8B,down 8B" --ms 1,16
    python bench/gemm_int8.py --group 128     # W8A16 with group-128 asymmetric codes

Method: copy bandwidth first (device-to-device copy of 2 GiB, bytes read + written). Weights:
random bf16 ``W`` [N, K] * 0.02, quantized per output channel symmetric (W8A16 as
``--int8``; ``--group`` for groups) and per row to int8 (W8A8, as SmoothQuant stores them).
Each call is timed as the median per call of a CUDA-graph replay that calls it once per weight
copy in turn (copies >= 256 MB together, or 16, so weights come from DRAM, not L2; no Python
or launch gaps, as decode runs). Before timing, ours is checked against float32 references
(first <= 64 rows): W8A16 against the dequantized weight, W8A8 against
kernels/w8a8/reference.py; ``||y - ref|| / ||ref|| < 1e-2``, else the row says FAIL.

Columns: µs per call; %BW = bytes / time / copy bandwidth, bytes = weights as stored (bf16:
2NK; W8A16: NK + scales; W8A8 and int_mm: NK + 4N) + x + y (W8A8 also its int8 copy of x);
``x bf16`` = bf16 µs / ours µs. ``int_mm``: ``torch._int_mm(x_q, w_q.T)`` alone on
pre-quantized x (int32 out, no scaling; M < 17 padded to 17 rows, as it requires); ours W8A8
includes the quantization of x and the fused epilogue. ``path``: what ours ran.
Results: a table on stdout (last); JSON and markdown under $OUT when set.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from kernels.w8a8 import layout as w8a8_layout  # noqa: E402
from kernels.w8a8 import reference as w8a8_ref  # noqa: E402
from kernels.w8a8 import triton_gemm as t8  # noqa: E402
from kernels.w8a16 import layout  # noqa: E402
from kernels.w8a16 import triton_gemm as t16  # noqa: E402

SHAPES = {"qkv 7B": (4096, 12288), "o 7B": (4096, 4096), "gateup 7B": (4096, 22016),
          "down 7B": (11008, 4096), "qkv 8B": (4096, 6144), "o 8B": (4096, 4096),
          "gateup 8B": (4096, 28672), "down 8B": (14336, 4096)}          # name: (K, N)
SHAPES_8B = ["qkv 8B", "o 8B", "gateup 8B", "down 8B"]
MS = (1, 2, 4, 8, 16, 32, 64, 128, 512, 4096)
QUICK_MS = (1, 4, 16, 64, 128, 512, 4096)
ROTATE_BYTES = 256 << 20
DEV = "cuda"


def copy_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy, counting bytes read plus written."""
    x = torch.empty(1 << 30, dtype=torch.float16, device=DEV).normal_()
    y = torch.empty_like(x)
    t = do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median")
    del x, y
    return 2 * (1 << 30) * 2 / (t * 1e-3)


def quantize_w8(w: torch.Tensor, group: int) -> tuple:
    """Storage (qweight uint8 [N, K], scales fp16 [N, G], zeros uint8 or None): per channel
    symmetric for group 0 (z = 128), else asymmetric min/max groups."""
    n, k = w.shape
    if group == 0:
        s = (w.float().abs().amax(1, keepdim=True) / 127).clamp(min=1e-8).half()
        q = (w.float() / s.float()).round().clamp(-128, 127) + 128
        return q.to(torch.uint8), s, None
    wg = w.float().reshape(n, k // group, group)
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    s = ((hi - lo) / 255).clamp(min=1e-8).half()
    z = (-lo / s.float()).round().clamp(0, 255)
    q = (wg / s.float()[..., None] + z[..., None]).round().clamp(0, 255)
    return q.reshape(n, k).to(torch.uint8), s, z.to(torch.uint8)


class Layer:
    """One linear's weights in the four forms, with rotating copies."""

    def __init__(self, k: int, n: int, group: int) -> None:
        self.k, self.n = k, n
        w = torch.randn(n, k, dtype=torch.bfloat16, device=DEV) * 0.02
        qw, s, z = quantize_w8(w, group)
        p16 = layout.prepare(qw, s, z, None, group, k)
        self.w16_ref = layout.dequantize(p16, k)                     # float32 [N, K]
        wq, ws = w8a8_ref.quantize_per_token(w)                      # int8 [N, K], [N, 1]
        self.wq, self.ws = wq, ws[:, 0].contiguous()
        p8 = w8a8_layout.prepare(self.wq, self.ws)
        copies = lambda b: max(2, min(16, math.ceil(ROTATE_BYTES / b)))  # noqa: E731
        clone = lambda p: {r: (t.clone() if torch.is_tensor(t) else t)  # noqa: E731
                           for r, t in p.items()}
        g = s.shape[1]
        self.bytes = {"bf16": 2 * n * k, "w8a16": n * k + n * g * (2 if z is None else 3),
                      "w8a8": n * k + 4 * n, "int_mm": n * k + 4 * n}
        self.bf16 = [w] + [w.clone() for _ in range(copies(self.bytes["bf16"]) - 1)]
        self.w16 = [p16] + [clone(p16) for _ in range(copies(self.bytes["w8a16"]) - 1)]
        self.w8 = [p8] + [clone(p8) for _ in range(copies(self.bytes["w8a8"]) - 1)]
        self.wq_t = [p["qweight"].T for p in self.w8]                # [K, N] column-major


def graph_timed(fn_of_copy, copies: list) -> float:
    """Median µs per call of a CUDA graph calling fn once per weight copy in turn."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in copies:                   # warm-up (compiles, allocator, handles) off-graph
            fn_of_copy(c)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for c in copies:
            fn_of_copy(c)
        b.record()
        b.synchronize()
    est = a.elapsed_time(b) * 1e3 / len(copies)
    torch.cuda.current_stream().wait_stream(side)
    calls = len(copies) * max(1, min(32, int(2000 / max(est, 1.0) / len(copies))))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn_of_copy(copies[i % len(copies)])
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    del graph
    return sorted(times)[len(times) // 2]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).norm() / ref.norm()).item()


def check(layer: Layer, x: torch.Tensor) -> tuple[float, float]:
    """(W8A16 error, W8A8 error) of ours on the first <= 64 rows."""
    rows = x[: min(x.shape[0], 64)]
    e16 = rel_err(t16.w8a16_linear(x, layer.w16[0])[: rows.shape[0]],
                  rows.float() @ layer.w16_ref.T)
    e8 = rel_err(t8.w8a8_linear(x, layer.w8[0])[: rows.shape[0]],
                 w8a8_ref.w8a8_linear(rows, layer.wq, layer.ws, None))
    return e16, e8


def path16(m: int, n: int, k: int) -> str:
    if m >= t16.CUBLAS_MIN_M:
        return "cublas"
    return t16.pick_config(m, n, k, t16.sm_count(torch.device(DEV))).describe()


def path8(m: int, n: int, k: int) -> str:
    return t8.pick_config(m, n, k, t8.sm_count(torch.device(DEV))).describe()


def bench_shape(name: str, ms: list[int], bw: float, group: int) -> list[dict]:
    k, n = SHAPES[name]
    layer = Layer(k, n, group)
    rows = []
    for m in ms:
        x = torch.randn(m, k, dtype=torch.bfloat16, device=DEV)
        xq, _ = t8.quantize_per_token(x)
        xq_mm = torch.nn.functional.pad(xq, (0, 0, 0, max(0, 17 - m)))
        e16, e8 = check(layer, x)
        r = {"shape": name, "K": k, "N": n, "M": m, "err_w8a16": e16, "err_w8a8": e8,
             "ok": e16 < 1e-2 and e8 < 1e-2, "path_w8a16": path16(m, n, k),
             "path_w8a8": path8(m, n, k)}
        fns = {"bf16": (lambda w: x @ w.T, layer.bf16),
               "int_mm": (lambda wt: torch._int_mm(xq_mm, wt), layer.wq_t),
               "w8a16": (lambda p: t16.w8a16_linear(x, p), layer.w16),
               "w8a8": (lambda p: t8.w8a8_linear(x, p), layer.w8)}
        xy = {"bf16": 2 * m * k + 2 * m * n, "w8a16": 2 * m * k + 2 * m * n,
              "w8a8": 2 * m * k + 2 * m * k + 2 * m * n,
              "int_mm": xq_mm.numel() + 4 * xq_mm.shape[0] * n}
        for key, (fn, copies) in fns.items():
            t = graph_timed(fn, copies)
            r[f"{key}_us"] = t
            r[f"{key}_bw_pct"] = 100 * (layer.bytes[key] + xy[key]) / (t * 1e-6) / bw
        for key in ("w8a16", "w8a8", "int_mm"):
            r[f"{key}_x_bf16"] = r["bf16_us"] / r[f"{key}_us"]
        rows.append(r)
        print(json.dumps({a: (round(v, 4) if isinstance(v, float) else v)
                          for a, v in r.items()}), flush=True)
    del layer
    torch.cuda.empty_cache()
    return rows


def run_check(group: int) -> bool:
    """Quick correctness: two shapes, a few M, both kernels, every dispatch bucket."""
    ok = True
    for name in ("o 8B", "down 8B"):
        k, n = SHAPES[name]
        layer = Layer(k, n, group)
        for m in (1, 3, 16, 33, 128, 512):
            x = torch.randn(m, k, dtype=torch.bfloat16, device=DEV)
            e16, e8 = check(layer, x)
            good = e16 < 1e-2 and e8 < 1e-2
            ok &= good
            print(f"{name:10s} M={m:4d} w8a16 {e16:.2e} ({path16(m, n, k)})  w8a8 {e8:.2e} "
                  f"({path8(m, n, k)})  {'ok' if good else 'FAIL'}", flush=True)
        del layer
    return ok


def sweep_shape(name: str, ms: list[int], bw: float, group: int) -> list[dict]:
    """Each candidate config of `configs(m)` (split-K 1, the heuristic's and double it),
    plus the library paths (cuBLAS / int_mm) from M = 128; prints the best four per kernel,
    shape and M next to the default pick."""
    k, n = SHAPES[name]
    layer = Layer(k, n, group)
    sms = t16.sm_count(torch.device(DEV))
    out = []
    for m in ms:
        x = torch.randn(m, k, dtype=torch.bfloat16, device=DEV)
        base = graph_timed(lambda w: x @ w.T, layer.bf16)
        for kind, mod, copies, nbytes in (("w8a16", t16, layer.w16, layer.bytes["w8a16"]),
                                          ("w8a8", t8, layer.w8, layer.bytes["w8a8"])):
            fn = t16.w8a16_linear if kind == "w8a16" else t8.w8a8_linear
            results = []
            for cfg in mod.configs(m):
                gemv = getattr(cfg, "kernel", "mma") == "gemv"
                tiles = (m if gemv else -(-m // cfg.block_m)) * -(-n // cfg.block_n)
                auto = mod.choose_split_k(tiles, -(-k // cfg.block_k), sms)
                for split in sorted({1, auto, min(2 * auto, 16)}):
                    c = dataclasses.replace(cfg, split_k=split)
                    try:
                        fn(x, copies[0], config=c)
                        torch.cuda.synchronize()
                        t = graph_timed(lambda p: fn(x, p, config=c), copies)
                    except Exception as e:   # noqa: BLE001 - a config that fails to build
                        print(f"  {kind} {name} M={m} {c.describe()}: {type(e).__name__}: "
                              f"{str(e)[:160]}", flush=True)
                        continue
                    results.append((t, c.describe()))
            if m >= 128:
                lib = "cublas" if kind == "w8a16" else "int_mm"
                results.append((graph_timed(lambda p: fn(x, p, path=lib), copies), lib))
            pick = graph_timed(lambda p: fn(x, p), copies)
            results.sort(key=lambda r: r[0])
            print(f"{kind} {name} M={m}: bf16 {base:.1f} us, default pick {pick:.1f} us "
                  f"({path16(m, n, k) if kind == 'w8a16' else path8(m, n, k)}); best:",
                  flush=True)
            for t, what in results[:4]:
                pct = 100 * (nbytes + 2 * m * (k + n)) / (t * 1e-6) / bw
                print(f"   {t:8.1f} us  x{base / t:5.2f}  {pct:4.0f}%BW  {what}", flush=True)
            out += [{"kind": kind, "shape": name, "M": m, "config": what, "us": t,
                     "bf16_us": base, "pick_us": pick} for t, what in results]
    del layer
    torch.cuda.empty_cache()
    return out


def markdown(rows: list[dict], bw: float, group: int) -> str:
    lines = [f"Copy bandwidth {bw / 1e12:.2f} TB/s; {torch.cuda.get_device_name()}; "
             f"torch {torch.__version__}, triton {triton.__version__}; W8A16 group {group} "
             "(0: per channel). µs: CUDA-graph replay over rotating weight copies.", "",
             "| shape | M | bf16 µs | int_mm µs | W8A16 µs | W8A16 %BW | W8A16 x bf16 "
             "| W8A8 µs | W8A8 %BW | W8A8 x bf16 | W8A16 path | W8A8 path | check |",
             "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['M']} | {r['bf16_us']:.1f} | {r['int_mm_us']:.1f} "
            f"| {r['w8a16_us']:.1f} | {r['w8a16_bw_pct']:.0f} | {r['w8a16_x_bf16']:.2f} "
            f"| {r['w8a8_us']:.1f} | {r['w8a8_bw_pct']:.0f} | {r['w8a8_x_bf16']:.2f} "
            f"| {r['path_w8a16']} | {r['path_w8a8']} "
            f"| {'ok' if r['ok'] else 'FAIL'} {max(r['err_w8a16'], r['err_w8a8']):.1e} |")
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    out = [f"{'shape':10s} {'M':>5s} {'bf16':>7s} {'int_mm':>7s} {'w8a16':>7s} {'%BW':>4s} "
           f"{'x':>5s} {'w8a8':>7s} {'%BW':>4s} {'x':>5s} check"]
    for r in rows:
        out.append(f"{r['shape']:10s} {r['M']:5d} {r['bf16_us']:7.1f} {r['int_mm_us']:7.1f} "
                   f"{r['w8a16_us']:7.1f} {r['w8a16_bw_pct']:4.0f} {r['w8a16_x_bf16']:5.2f} "
                   f"{r['w8a8_us']:7.1f} {r['w8a8_bw_pct']:4.0f} {r['w8a8_x_bf16']:5.2f} "
                   f"{'ok' if r['ok'] else 'FAIL'}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--ms", default=None, help="comma-separated M values")
    ap.add_argument("--group", type=int, default=0, help="W8A16 group size (0: per channel)")
    ap.add_argument("--quick", action="store_true", help="Llama-3-8B shapes, fewer M")
    ap.add_argument("--check", action="store_true", help="correctness only; exit 1 on FAIL")
    ap.add_argument("--sweep", action="store_true", help="time candidate configs instead")
    args = ap.parse_args()
    default = SHAPES_8B if (args.quick or args.sweep) else list(SHAPES)
    shapes = [s.strip() for s in args.shapes.split(",")] if args.shapes else default
    ms = ([int(v) for v in args.ms.split(",")] if args.ms
          else list(QUICK_MS if args.quick else (1, 16, 128, 512) if args.sweep else MS))
    torch.manual_seed(0)
    t0 = time.time()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    if args.check:
        ok = run_check(args.group)
        print(f"# check {'passed' if ok else 'FAILED'} in {time.time() - t0:.0f} s")
        sys.exit(0 if ok else 1)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    if args.sweep:
        rows = [r for name in shapes for r in sweep_shape(name, ms, bw, args.group)]
        if out:
            Path(out, "gemm_int8_sweep.json").write_text(json.dumps(rows, indent=1))
        print(f"# sweep took {time.time() - t0:.0f} s")
        return
    rows = []
    for name in shapes:
        t1 = time.time()
        rows += bench_shape(name, ms, bw, args.group)
        print(f"# {name} done in {time.time() - t1:.0f} s", flush=True)
    if out:
        Path(out, "gemm_int8.json").write_text(json.dumps({"copy_bw": bw, "rows": rows},
                                                          indent=1))
        Path(out, "gemm_int8.md").write_text(markdown(rows, bw, args.group))
    print(f"# total {time.time() - t0:.0f} s; copy bandwidth {bw / 1e12:.2f} TB/s")
    print(table(rows))
    if not all(r["ok"] for r in rows):
        print("FAIL: ours differs from the reference (see the check column)")
        sys.exit(1)


if __name__ == "__main__":
    main()
