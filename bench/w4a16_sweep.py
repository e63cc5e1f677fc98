"""W4A16 sweep (kernels/w4a16) on a GPU, in one call: every variant checked against float64,
then timed; the best configuration per (shape, act-order, M) against cuBLAS bf16, tinygemm
and the previous kernel.

    python bench/w4a16_sweep.py                       # all (about 3-4 minutes on an H200)
    python bench/w4a16_sweep.py --shapes o --ms 1,16 --no-legacy

Shapes: Llama-3-8B's linears (N x K): qkv 6144x4096, o 4096x4096, gate-up 28672x4096,
down 4096x14336; int4, group 128, asymmetric, random codes/scales/zeros; each without and with
act-order (a random g_idx: the layout permutes the input channels).

Method (as bench/gemm.py): copy bandwidth first (2 GiB device-to-device, bytes read +
written). Every variant runs once on fresh random x and is checked against the float64
reference (x @ W^T with W dequantized exactly): ``||y - ref|| / ||ref|| < 1e-2`` or it is
marked FAIL and never picked. Times: median of 5 replays of a CUDA graph that calls the
variant over rotating weight copies (>= 256 MB together, or 16 copies), so weights come from
DRAM. %BW: bytes stored (codes N*K/2 + scale/zero words + x + y) / time / copy bandwidth;
%cp: the time of a device copy moving the same weight bytes (half read, half written; graph,
rotating buffers) / ours: what a single launch of that size can reach here.

Kernels compile first in parallel worker processes (Triton's cache, for sm_90, without a
GPU: a stand-in driver), so the timing loop finds them built. The previous kernel (git
9335730's kernels/w4a16, as a package `w4a16_old` under --legacy DIR) is timed when present.
Candidates: decode (M <= 16) all of DECODE with split-K for ~1-8 programs per SM at M = 1
and 16, the best ten of those at M = 2-8; MID / LARGE per M; act-order rows time the best
configs without act-order, with and without the in-kernel gather.
Output: one line per (shape, act-order, M) as it goes, JSON and markdown under $OUT, and the
compact table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # `kernels` from the repo root
from kernels.w4a16 import layout, reference  # noqa: E402
from kernels.w4a16 import triton_gemm as tg  # noqa: E402

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gateup": (4096, 28672),
          "down": (14336, 4096)}                                   # name: (K, N)
MS = (1, 2, 4, 8, 16, 32, 64, 128, 512, 4096)
GROUP = 128
ROTATE_BYTES = 256 << 20
TOL = 1e-2
G = tg.GemmConfig

# ---- candidates ---------------------------------------------------------------------------

DECODE = ([G(16, bn, factored=True, num_warps=w, num_stages=st, block_k=bk) for bn, w, st, bk in
           [(64, 4, 4, 128), (128, 4, 3, 128), (128, 4, 4, 128), (128, 4, 4, 32)]] +
          [G(16, bn, factored=False, num_warps=w, num_stages=st, block_k=bk)
           for bn, w, st, bk in
           [(64, 4, 3, 128), (64, 4, 4, 128), (64, 4, 6, 128), (128, 4, 3, 128),
            (128, 4, 4, 128), (128, 4, 6, 128), (128, 8, 4, 128), (256, 8, 3, 128),
            (256, 8, 4, 128), (128, 4, 4, 64), (64, 2, 4, 128)]])
MID = {
    32: [G(32, 64, num_warps=4, num_stages=4), G(32, 128, num_warps=4, num_stages=4),
         G(32, 64, factored=False, num_warps=4, num_stages=4),
         G(32, 128, factored=False, num_warps=4, num_stages=4),
         G(32, 128, factored=False, num_warps=4, num_stages=6),
         G(32, 256, factored=False, num_warps=8, num_stages=4),
         G(16, 128, factored=False, num_warps=4, num_stages=4)],
    64: [G(64, 64, num_warps=4, num_stages=4),
         G(64, 64, factored=False, num_warps=4, num_stages=4),
         G(64, 64, factored=False, num_warps=4, num_stages=6),
         G(64, 128, factored=False, num_warps=4, num_stages=4),
         G(64, 128, factored=False, num_warps=4, num_stages=6),
         G(64, 256, factored=False, num_warps=8, num_stages=3),
         G(32, 128, factored=False, num_warps=4, num_stages=4)],
    128: [G(128, 128, factored=False, num_warps=8, num_stages=3),
          G(128, 128, factored=False, num_warps=8, num_stages=4),
          G(128, 64, factored=False, num_warps=4, num_stages=4),
          G(64, 128, factored=False, num_warps=4, num_stages=4),
          G(64, 64, factored=False, num_warps=4, num_stages=4),
          G(128, 256, factored=False, num_warps=8, num_stages=3),
          G(64, 256, factored=False, num_warps=8, num_stages=3)],
}
LARGE = [G(128, 128, factored=False, num_warps=8, num_stages=4),
         G(128, 128, factored=False, num_warps=8, num_stages=3),
         G(128, 256, factored=False, num_warps=8, num_stages=3),
         G(256, 128, factored=False, num_warps=8, num_stages=3),
         G(64, 256, factored=False, num_warps=8, num_stages=4)]
CHUNKS = (0, 1024, 2048, 4096)


def describe(c) -> str:
    if isinstance(c, tg.CublasConfig):
        return f"cublas chunk{c.chunk_n}"
    kind = "fac" if c.factored else "deq"
    g = " gather" if c.gather else ""       # in-kernel act-order gather
    bk = "" if c.block_k == 128 else f" k{c.block_k}"
    return (f"{kind} {c.block_m}x{c.block_n} s{c.split_k} w{c.num_warps} st{c.num_stages}"
            f"{bk}{g}")


def with_splits(cfgs: list, m: int, n: int, k: int, per_sms=(1.0, 2.0, 4.0)) -> list:
    out = []
    for c in cfgs:
        splits = {1} | {tg.choose_split_k(m, n, k, c.block_m, c.block_n, 132, p)
                        for p in per_sms}
        out += [dataclasses.replace(c, split_k=s) for s in sorted(splits)]
    return out


def kernel_set() -> list:
    """Every distinct compiled kernel the sweep launches: (config, gather)."""
    cfgs = DECODE + sum(MID.values(), []) + LARGE
    seen, out = set(), []
    for c in cfgs:
        for gather in (False, True):
            key = (c.block_m, c.block_n, c.factored, c.num_warps, c.num_stages, c.block_k,
                   gather)
            if key not in seen:
                seen.add(key)
                out.append((dataclasses.replace(c, split_k=1), gather))
    return out


# ---- parallel compile without a GPU -------------------------------------------------------

class _StandInDriver:
    """Just enough of Triton's driver to compile for sm_90 (no launches)."""

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


class _WarmOnly:
    """kernel[grid](...) -> kernel.warmup(..., grid=grid): compile, do not launch."""

    def __init__(self, fn):
        self.fn = fn
        self.last = None

    def __getitem__(self, grid):
        def warm(*args, **kw):
            self.last = self.fn.warmup(*args, grid=grid, **kw)
        return warm


def _compile_task(task) -> str:
    from triton.runtime import driver
    driver.set_active(_StandInDriver())
    t0 = time.time()
    kind = task[0]
    try:
        if kind == "ours":
            _, cdict, gather, dtype = task
            mod = tg
            mod._use_asm = lambda x: True
            if not isinstance(mod._w4a16_kernel, _WarmOnly):
                mod._w4a16_kernel = _WarmOnly(mod._w4a16_kernel)
            cfg = tg.GemmConfig(**cdict)
            k, n = 4096, 4096
            p = {"qweight": torch.empty(k // 8, n, dtype=torch.int32),
                 "sz": torch.empty(k // GROUP, n, dtype=torch.int32),
                 "locks": torch.zeros(layout.n_locks(n), dtype=torch.int32)}
            if gather:
                p["perm"] = torch.empty(k, dtype=torch.int64)
            x = torch.empty(cfg.block_m, k, dtype=getattr(torch, dtype))
            y = torch.empty(cfg.block_m, n, dtype=x.dtype)
            for split in (1, 2):       # the split-K epilogue is compiled only when split > 1
                tg._gemm(x, p, None, y, dataclasses.replace(cfg, split_k=split), gather)
                smem = tg._w4a16_kernel.last.metadata.shared
                if smem > 227 * 1024:
                    return f"{describe(cfg)} gather={gather}: {smem} B shared memory > 227 KiB"
        elif kind == "dequant":
            if not isinstance(tg._dequant_kernel, _WarmOnly):
                tg._dequant_kernel = _WarmOnly(tg._dequant_kernel)
            _, k, n, chunk = task
            p = {"qweight": torch.empty(k // 8, n, dtype=torch.int32),
                 "sz": torch.empty(k // GROUP, n, dtype=torch.int32)}
            tg._dequant_into(p, torch.empty(k, chunk, dtype=torch.bfloat16), 0)
        elif kind == "gather":
            if not isinstance(tg._gather_kernel, _WarmOnly):
                tg._gather_kernel = _WarmOnly(tg._gather_kernel)
            _, k = task
            tg.gather_columns(torch.empty(4, k, dtype=torch.bfloat16),
                              torch.empty(k, dtype=torch.int64))
        elif kind == "legacy":
            _, ldir, m, k, n = task
            if ldir not in sys.path:
                sys.path.insert(0, ldir)
            old = importlib.import_module("w4a16_old.triton_gemm")
            if not isinstance(old._w4a16_kernel, _WarmOnly):
                old._w4a16_kernel = _WarmOnly(old._w4a16_kernel)
            p = {"qweight": torch.empty(k // 8, n, dtype=torch.int32),
                 "sz": torch.empty(k // GROUP, n, dtype=torch.int32),
                 "locks": torch.zeros(16 * -(-n // 16), dtype=torch.int32)}
            x = torch.empty(m, k, dtype=torch.bfloat16)
            old.w4a16_linear(x, p)
    except Exception as e:   # noqa: BLE001 - reported; the main process compiles it again
        return f"{task[:2]}: {type(e).__name__}: {str(e)[:300]}"
    return f"ok {time.time() - t0:.1f}s"


def precompile(legacy: str | None, shapes: list[str], ms: list[int], jobs: int) -> list[str]:
    tasks = [("ours", dataclasses.asdict(c), g, "bfloat16") for c, g in kernel_set()]
    for name in shapes:
        k, n = SHAPES[name]
        tasks += [("dequant", k, n, c if c else n) for c in CHUNKS if c < n]
        tasks += [("gather", k)]
        if legacy:
            tasks += [("legacy", legacy, m, k, n) for m in ms if m < 512]
    t0 = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(jobs) as pool:
        res = pool.map(_compile_task, tasks, chunksize=1)
    bad = [r for r in res if not r.startswith("ok")]
    print(f"# precompiled {len(tasks)} tasks in {time.time() - t0:.0f} s with {jobs} "
          f"processes; {len(bad)} failed", flush=True)
    for r in bad[:5]:
        print("#   ", r, flush=True)
    return bad


# ---- measurement --------------------------------------------------------------------------

def copy_bandwidth() -> float:
    from triton.testing import do_bench
    x = torch.empty(1 << 30, dtype=torch.float16, device="cuda").normal_()
    y = torch.empty_like(x)
    t = do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median")
    del x, y
    return 2 * (1 << 30) * 2 / (t * 1e-3)


def n_copies(nbytes: int) -> int:
    return max(2, min(16, math.ceil(ROTATE_BYTES / nbytes)))


def graph_us(fn, copies: list) -> float:
    """Median µs per call over 5 replays of a CUDA graph calling fn on each copy in turn
    (on the CPU, --dry-run: the wall time of one pass over the copies)."""
    if not torch.cuda.is_available():
        t0 = time.time()
        for c in copies:
            fn(c)
        return (time.time() - t0) * 1e6 / len(copies)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    for c in copies:
        fn(c)
    b.record()
    b.synchronize()
    est = max(a.elapsed_time(b) * 1e3 / len(copies), 1.0)
    calls = len(copies) * max(1, min(400 // len(copies), int(2000 / est / len(copies))))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in copies:
            fn(c)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(copies[i % len(copies)])
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    del graph
    return sorted(times)[2]


class Layer:
    """One linear's weights (ours, bf16, tinygemm, previous kernel), rotating copies."""

    def __init__(self, k: int, n: int, act: bool, legacy, seed: int, dev: str,
                 dt: torch.dtype) -> None:
        gen = torch.Generator(device=dev).manual_seed(seed)
        self.k, self.n, self.g = k, n, k // GROUP
        q = torch.randint(0, 16, (n, k), generator=gen, device=dev, dtype=torch.int32)
        s = (torch.rand(n, self.g, generator=gen, device=dev) * 0.02 + 0.002).half()
        z = torch.randint(0, 16, (n, self.g), generator=gen, device=dev).to(torch.uint8)
        g_idx = None
        if act:
            perm = torch.randperm(k, generator=gen, device=dev)
            g_idx = torch.empty(k, dtype=torch.int64, device=dev)
            g_idx[perm] = torch.arange(k, device=dev) // GROUP
        packed = (q[:, 0::2] | q[:, 1::2] << 4).to(torch.uint8)
        self.storage = (packed, s, z, g_idx)
        w32 = reference.dequantize(packed, s, z, g_idx, GROUP, k)    # float32 [N, K]
        self.w64 = w32.double()
        ours_bytes = n * k // 2 + self.g * n * 4
        self.bytes = ours_bytes
        p = layout.prepare(packed, s, z, g_idx, GROUP, k)
        self.ours = [p] + [{key: t.clone() for key, t in p.items()}
                           for _ in range(n_copies(ours_bytes) - 1)]
        self.old = None
        if legacy is not None:
            po = legacy.layout.prepare(packed, s, z, g_idx, GROUP, k)
            self.old = [po] + [{key: t.clone() for key, t in po.items()}
                               for _ in range(n_copies(ours_bytes) - 1)]
        self.bf16 = self.tg = None
        if not act:
            wb = w32.to(dt)
            self.bf16 = [wb] + [wb.clone() for _ in range(n_copies(n * k * 2) - 1)]
            try:   # tinygemm: w = (q - 8) * s + zero, bf16 (scale, zero) pairs
                zero_tg = (8 - z.float()) * s.float()
                self.sz_tg = torch.stack([s.float(), zero_tg], -1).transpose(0, 1) \
                    .contiguous().to(torch.bfloat16)
                ptg = torch.ops.aten._convert_weight_to_int4pack(
                    (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
                self.tg = [ptg] + [ptg.clone() for _ in range(n_copies(ours_bytes) - 1)]
            except Exception as e:   # noqa: BLE001
                print(f"# tinygemm unavailable: {str(e)[:100]}", flush=True)
        del w32
        self.copy_us = None
        if dev == "cuda":   # moving the same bytes (read + write = ours_bytes) by a copy
            bufs = [torch.empty(ours_bytes // 2, dtype=torch.uint8, device=dev)
                    for _ in range(max(2, min(32, math.ceil(ROTATE_BYTES * 2 / ours_bytes))))]
            dst = torch.empty_like(bufs[0])
            self.copy_us = graph_us(lambda b: dst.copy_(b), bufs)
            del bufs, dst


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def candidates(name: str, m: int, n: int, k: int, act: bool, best: dict) -> list:
    """Variants for one (shape, M, act-order), using `best` (winners so far, by (shape,
    act-order, M))."""
    if m <= 16:
        if not act and m in (1, 16):
            return with_splits(DECODE, m, n, k, (1.0, 2.0, 4.0, 8.0))
        if not act:
            top = best.get((name, False, 1), [])[:5] + best.get((name, False, 16), [])[:5]
            return list(dict.fromkeys(top)) or with_splits(DECODE[3:6], m, n, k)
        top = best.get((name, False, m), [])[:3] or with_splits(DECODE[3:5], m, n, k)
        return top + [dataclasses.replace(top[0], gather=False)]
    if m in MID:
        if not act:
            return with_splits(MID[m], m, n, k, (1.0, 2.0, 4.0))
        top = best.get((name, False, m), [])[:2]
        return top + [dataclasses.replace(c, gather=not c.gather) for c in top]
    if not act:
        return (with_splits(LARGE, m, n, k, (1.0,)) +
                [tg.CublasConfig(c) for c in CHUNKS if c < n])
    top = best.get((name, False, m), [])[:3]
    return [dataclasses.replace(c, gather=False) if isinstance(c, tg.GemmConfig) else c
            for c in top]


def sweep_shape(name: str, act: bool, ms: list[int], bw: float, legacy, deadline: float,
                rows: list, best: dict, shapes: dict, dev: str, dt: torch.dtype) -> None:
    k, n = shapes[name]
    layer = Layer(k, n, act, legacy, int.from_bytes(os.urandom(4), "little"), dev, dt)
    gen = torch.Generator(device=dev).manual_seed(int.from_bytes(os.urandom(4), "little"))
    for m in ms:
        if time.time() > deadline:
            print(f"# out of time: {name} act={act} M>={m} skipped", flush=True)
            return
        x = torch.randn(m, k, generator=gen, device=dev).to(dt)
        y = torch.empty(m, n, dtype=dt, device=dev)
        ref = x.double() @ layer.w64.T
        xy = m * k * 2 + m * n * 2
        r = {"shape": name, "act": act, "M": m, "K": k, "N": n, "variants": [],
             "copy_us": layer.copy_us}
        if layer.bf16 is not None:
            r["bf16_us"] = graph_us(lambda w: torch.mm(x, w.T, out=y), layer.bf16)
        if layer.tg is not None:
            r["tinygemm_us"] = graph_us(lambda p: torch.ops.aten._weight_int4pack_mm(
                x, p, GROUP, layer.sz_tg), layer.tg)
        if layer.old is not None:
            try:
                err = rel_err(legacy.triton_gemm.w4a16_linear(x, layer.old[0]), ref)
                r["old_us"] = graph_us(lambda p: legacy.triton_gemm.w4a16_linear(x, p),
                                       layer.old)
                r["old_err"] = err
            except Exception as e:   # noqa: BLE001
                print(f"# old kernel failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        timed = []
        for cfg in candidates(name, m, n, k, act, best):
            what = describe(cfg)
            try:
                y.fill_(float("nan"))
                tg.w4a16_linear(x, layer.ours[0], out=y, config=cfg)
                err = rel_err(y, ref)
                ok = bool(err < TOL and not torch.isnan(y).any())
                t = graph_us(lambda p: tg.w4a16_linear(x, p, out=y, config=cfg), layer.ours)
            except Exception as e:   # noqa: BLE001 - a variant that fails to build or run
                print(f"  {name} act={act} M={m} {what}: {type(e).__name__}: "
                      f"{str(e)[:300]}", flush=True)
                r["variants"].append({"config": what, "error": str(e)[:300]})
                continue
            pct = 100 * (layer.bytes + xy) / (t * 1e-6) / bw
            r["variants"].append({"config": what, "us": t, "err": err, "ok": ok,
                                  "bw_pct": pct})
            if ok:
                timed.append((t, cfg))
            else:
                print(f"  FAIL {name} act={act} M={m} {what}: rel err {err:.3e}", flush=True)
        timed.sort(key=lambda v: v[0])
        best[(name, act, m)] = [c for _, c in timed]
        if timed:
            t, cfg = timed[0]
            r.update(best_us=t, best=describe(cfg),
                     bw_pct=100 * (layer.bytes + xy) / (t * 1e-6) / bw)
            base = r.get("bf16_us") or next((q.get("bf16_us") for q in rows
                                             if q["shape"] == name and q["M"] == m
                                             and not q["act"]), None)
            if base:
                r["vs_bf16"] = base / t
            if r.get("old_us"):
                r["vs_old"] = r["old_us"] / t
        r["n_fail"] = sum(1 for v in r["variants"] if not v.get("ok"))
        rows.append(r)
        top = ", ".join(f"{describe(c)} {t:.1f}" for t, c in timed[:3])
        print(f"{name:6s} act={int(act)} M={m:5d} bf16 {r.get('bf16_us', float('nan')):8.1f} "
              f"tg {r.get('tinygemm_us', float('nan')):8.1f} old "
              f"{r.get('old_us', float('nan')):8.1f} | {top} | fails {r['n_fail']}",
              flush=True)
    del layer
    if dev == "cuda":
        torch.cuda.empty_cache()


def table(rows: list, bw: float) -> str:
    nan = float("nan")
    out = [f"copy bandwidth {bw / 1e12:.2f} TB/s",
           f"{'shape':6s} {'act':>3s} {'M':>5s} {'bf16':>7s} {'tgemm':>7s} {'old':>7s} "
           f"{'ours':>7s} {'%BW':>4s} {'%cp':>4s} {'xbf16':>5s} {'xold':>5s} {'xtg':>5s} f best"]
    for r in sorted(rows, key=lambda q: (list(SHAPES).index(q["shape"]), q["act"], q["M"])):
        tgr = (r["tinygemm_us"] / r["best_us"]) if r.get("tinygemm_us") and "best_us" in r \
            else nan
        cp = (100 * r["copy_us"] / r["best_us"]) if r.get("copy_us") and "best_us" in r \
            else nan
        out.append(f"{r['shape']:6s} {int(r['act']):3d} {r['M']:5d} "
                   f"{r.get('bf16_us', nan):7.1f} {r.get('tinygemm_us', nan):7.1f} "
                   f"{r.get('old_us', nan):7.1f} {r.get('best_us', nan):7.1f} "
                   f"{r.get('bw_pct', nan):4.0f} {cp:4.0f} {r.get('vs_bf16', nan):5.2f} "
                   f"{r.get('vs_old', nan):5.2f} {tgr:5.2f} {r['n_fail']} "
                   f"{r.get('best', '-')}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--acts", default="0,1", help="act-order settings to run (0, 1)")
    ap.add_argument("--legacy", default=str(Path(__file__).resolve().parents[1] / ".legacy"),
                    help="folder holding the previous kernel as package w4a16_old")
    ap.add_argument("--no-legacy", action="store_true")
    ap.add_argument("--jobs", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--budget", type=float, default=230.0, help="seconds for the sweep")
    ap.add_argument("--precompile-only", action="store_true",
                    help="only fill Triton's cache (no GPU needed)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU + TRITON_INTERPRET=1, small shapes: checks the script itself")
    args = ap.parse_args()
    dev = "cpu" if args.dry_run else "cuda"
    shape_of = ({key: (256, 192 if key != "gateup" else 320) for key in SHAPES}
                if args.dry_run else SHAPES)
    t0 = time.time()
    shapes = [s.strip() for s in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")]
    acts = [bool(int(v)) for v in args.acts.split(",")]
    ldir = None
    if not args.no_legacy and Path(args.legacy, "w4a16_old").is_dir():
        ldir = args.legacy
    if args.precompile_only:
        precompile(ldir, shapes, ms, args.jobs)
        return
    if not args.dry_run:
        precompile(ldir, shapes, ms, args.jobs)
    legacy = None
    if ldir:
        sys.path.insert(0, ldir)
        legacy = importlib.import_module("w4a16_old")
        legacy.layout = importlib.import_module("w4a16_old.layout")
        legacy.triton_gemm = importlib.import_module("w4a16_old.triton_gemm")
    import triton
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (dry run)"
    print(f"{name}, {tg.sm_count(torch.device(dev))} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    bw = copy_bandwidth() if dev == "cuda" else 1e10
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    rows: list = []
    best: dict = {}
    deadline = t0 + args.budget
    for act in acts:        # all shapes without act-order first: act-order reuses the winners
        for name in shapes:
            sweep_shape(name, act, ms, bw, legacy, deadline, rows, best, shape_of, dev,
                        torch.float16 if args.dry_run else torch.bfloat16)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "w4a16_sweep.json").write_text(json.dumps(
            {"device": name, "copy_bw": bw, "rows": rows},
            indent=1, default=str))
        Path(out, "w4a16_sweep.txt").write_text(table(rows, bw) + "\n")
    print(f"# sweep {time.time() - t0:.0f} s")
    print(table(rows, bw))


if __name__ == "__main__":
    main()
