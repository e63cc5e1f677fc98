"""Fused-kernel benchmark: ours (Triton: kernels/rms_norm, activation, rope, attention) vs
eager PyTorch (the plain references; SDPA for attention) and torch.compile of the reference
(elementwise ops only) on Llama-3-8B decode shapes: H = 4096, F = 14336, 32 q / 8 kv heads,
D = 128, batch 1, 8, 32; attention at context 512 and 4096 (every sequence full), bf16.
Also rope_qk_cache (one launch) vs rope_qk + cache_write, and at batch 1 the float GEMV
(kernels/gemv) vs cuBLAS (F.linear) on the 8B projections and lm_head.

    python bench/kernels_fused.py              # table (well under 2 minutes on an H100)
    python bench/kernels_fused.py --check      # quick correctness pass first (exit 1 on FAIL)
    python bench/kernels_fused.py --no-compile # skip torch.compile (its compiles take most time)
    python bench/kernels_fused.py --sweep      # decode attention: chunk / tile / warps / stages
    python bench/kernels_fused.py --sweep --batches 1 --contexts 160 --tiles 64:4:2 --chunks none
    OUT=/tmp/k python bench/kernels_fused.py   # also writes kernels_fused.{json,md} there

Method: copy bandwidth first (1 GiB device-to-device copy, bytes read + written). Each method
is timed as the median per call of a CUDA-graph replay (no launch gaps, as a captured decode
step runs), each call taking the next of several input copies (>= 256 MB together, at most
32), so large inputs (the KV cache) come from DRAM; small ones stay in L2 as they would
between a model's kernels. Where capture fails, ``triton.testing.do_bench``'s median (marked
*). Bytes per call (for GB/s and % of copy bandwidth): inputs read + outputs written once
(attention: K and V of every valid position + q + out; the split-K workspace is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # `kernels` from the repo root
from kernels.activation import reference as act_ref  # noqa: E402
from kernels.activation import triton_silu_mul  # noqa: E402
from kernels.attention import reference as attn_ref  # noqa: E402
from kernels.attention import triton_decode  # noqa: E402
from kernels.rms_norm import reference as norm_ref  # noqa: E402
from kernels.rms_norm import triton_rms_norm  # noqa: E402
from kernels.rope import reference as rope_ref  # noqa: E402
from kernels.rope import triton_rope  # noqa: E402
from kernels.gemv import reference as gemv_ref  # noqa: E402
from kernels.gemv import triton_gemv  # noqa: E402

DEV, DT = "cuda", torch.bfloat16
H, FF, HQ, HK, D, EPS = 4096, 14336, 32, 8, 128, 1e-5
BATCHES, CONTEXTS = (1, 8, 32), (512, 4096)
ROTATE_BYTES, MAX_COPIES = 256 << 20, 32
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
TOL = 1e-2   # bf16, vs the reference on float64 inputs (tests/test_kernels_fused_gpu.py)


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy, counting bytes read plus written."""
    x = torch.empty(1 << 29, dtype=torch.float16, device=DEV).normal_()
    y = torch.empty_like(x)
    t = do_bench(lambda: y.copy_(x), warmup=25, rep=100, return_mode="median")
    return 2 * x.numel() * 2 / (t * 1e-3)


def time_calls(calls: list) -> tuple[float, bool]:
    """Median µs per call over graph replays of ``calls`` (one per input copy)."""
    reps = max(1, 64 // len(calls))
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for c in calls:
                c()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                for c in calls:
                    c()
        graph.replay()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / (reps * len(calls)))
        return statistics.median(times), True
    except Exception:   # not capturable: do_bench on the first copy
        torch.cuda.synchronize()
        return do_bench(calls[0], warmup=10, rep=50, return_mode="median") * 1e3, False


def copies(make, nbytes: int) -> list:
    """Several independent input sets (together >= ROTATE_BYTES, at most MAX_COPIES)."""
    n = max(1, min(MAX_COPIES, -(-ROTATE_BYTES // max(nbytes, 1))))
    return [make() for _ in range(n)]


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=DEV).to(DT)


# ---- cases: name, shape, bytes, {method: fn(inputs)}, make(), check(inputs) ----------------

def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def cases(batch: int, use_compile: bool):
    es = torch.tensor([], dtype=DT).element_size()
    w = torch.rand(H, device=DEV).to(DT) + 0.5
    freqs = rope_ref.inv_freq(D, 500000.0, LLAMA3).to(DEV)
    nq = (HQ + 2 * HK) * D

    def rms_ours(i):
        return triton_rms_norm.rms_norm(i[0], w, EPS)

    def add_ours(i):
        return triton_rms_norm.add_rms_norm(i[0], i[1], w, EPS)

    def rope_ours(i):
        return triton_rope.rope_qk(i[0], i[1], freqs, HQ, HK, D)

    def rope_eager(i):
        return rope_ref.rope_qk(i[0], i[1], freqs, HQ, HK, D)

    rows = [
        ("rms_norm", f"{batch}x{H}", 2 * batch * H * es + H * es,
         {"ours": rms_ours, "eager": lambda i: norm_ref.rms_norm(i[0], w, EPS)},
         lambda: (rnd(batch, H),),
         lambda i: (rms_ours(i), norm_ref.rms_norm(i[0].double(), w.double(), EPS))),
        ("add_rms_norm", f"{batch}x{H}", 4 * batch * H * es + H * es,
         {"ours": add_ours, "eager": lambda i: norm_ref.add_rms_norm(i[0], i[1], w, EPS)},
         lambda: (rnd(batch, H), rnd(batch, H)),
         lambda i: (add_ours(i)[1],
                    norm_ref.add_rms_norm(i[0].double(), i[1].double(), w.double(), EPS)[1])),
        ("silu_mul", f"{batch}x{2 * FF}", 3 * batch * FF * es,
         {"ours": lambda i: triton_silu_mul.silu_mul(i[0]),
          "eager": lambda i: act_ref.silu_mul(i[0])},
         lambda: (rnd(batch, 2 * FF),),
         lambda i: (triton_silu_mul.silu_mul(i[0]), act_ref.silu_mul(i[0].double()))),
        ("rope_qk", f"{batch}x{nq}", 2 * batch * nq * es + batch * 8,
         {"ours": rope_ours, "eager": rope_eager},
         lambda: (rnd(batch, nq), torch.randint(0, 8192, (batch,), device=DEV)),
         lambda i: (rope_ours(i), rope_ref.rope_qk(i[0].double(), i[1], freqs, HQ, HK, D))),
    ]
    if use_compile:
        for _, _, _, methods, _, _ in rows:
            methods["compile"] = _compiled(methods["eager"])
    rows.append(_rope_cache_case(batch, es, freqs))
    if batch == 1:   # the float GEMV (M = 1) against cuBLAS on the 8B shapes and lm_head
        for name, n, k in GEMV_SHAPES:
            rows.append(_gemv_case(name, n, k, es))
    for ctx in CONTEXTS:
        rows.append(_attention_case(batch, ctx, es))
    return rows


GEMV_SHAPES = (("qkv", (HQ + 2 * HK) * D, H), ("o", H, HQ * D), ("gate_up", 2 * FF, H),
               ("down", H, FF), ("lm_head", 128256, H))


def _gemv_case(name: str, n: int, k: int, es: int):
    def make():
        return rnd(1, k), torch.randn(n, k, device=DEV).to(DT) * 0.02

    def check(i):
        return triton_gemv.gemv(i[0], i[1]), gemv_ref.gemv(i[0].double(), i[1].double())

    return (f"gemv {name}", f"1x{k} @ {n}x{k}", (n * k + k + n) * es,
            {"ours": lambda i: triton_gemv.gemv(i[0], i[1]),
             "eager": lambda i: F.linear(i[0], i[1])}, make, check)


def _rope_cache_case(batch: int, es: int, freqs: torch.Tensor):
    """rope_qk_cache (rope + both cache writes, one launch) vs rope_qk + cache_write."""
    nq, s_max = (HQ + 2 * HK) * D, 512
    pos = torch.arange(batch, device=DEV) * 7 % s_max

    def make():
        return (rnd(batch, nq), torch.zeros(batch, s_max, HK, D, device=DEV, dtype=DT),
                torch.zeros(batch, s_max, HK, D, device=DEV, dtype=DT))

    def ours(i):
        return triton_rope.rope_qk_cache(i[0], pos, freqs, HQ, HK, D, i[1], i[2])

    def unfused(i):
        y = triton_rope.rope_qk(i[0], pos, freqs, HQ, HK, D)
        q, k, v = torch.split(y, [HQ * D, HK * D, HK * D], -1)
        triton_decode.cache_write(i[1], i[2], k, v, pos)
        return q.contiguous()

    def check(i):
        return ours(i), rope_ref.rope_qk_cache(i[0].double(), pos, freqs, HQ, HK, D,
                                               i[1].double(), i[2].double())

    return ("rope_qk_cache", f"{batch}x{nq}", 2 * batch * nq * es, {"ours": ours,
            "eager": unfused}, make, check)


def _attention_case(batch: int, ctx: int, es: int):
    lengths = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
    mask = (torch.arange(ctx, device=DEV)[None, :] < lengths[:, None])[:, None, None, :]

    def make():
        return rnd(batch, HQ * D), rnd(batch, ctx, HK, D), rnd(batch, ctx, HK, D)

    def ours(i):
        return triton_decode.decode_attention(i[0], i[1], i[2], lengths, HQ, HK)

    def sdpa(i):   # eager: SDPA over the cache viewed [B, Hk, S, D], GQA, length mask
        q = i[0].view(batch, HQ, 1, D)
        o = F.scaled_dot_product_attention(q, i[1].transpose(1, 2), i[2].transpose(1, 2),
                                           attn_mask=mask, enable_gqa=True)
        return o.reshape(batch, HQ * D)

    def check(i):
        return ours(i), attn_ref.decode_attention(i[0].double(), i[1].double(),
                                                  i[2].double(), lengths, HQ, HK)

    nbytes = 2 * batch * ctx * HK * D * es + 2 * batch * HQ * D * es
    return ("decode_attn", f"b{batch} ctx{ctx}", nbytes, {"ours": ours, "eager": sdpa},
            make, check)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).norm() / ref.double().norm()).item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="correctness pass before timing")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--sweep", action="store_true", help="decode attention configs only")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--contexts", default=",".join(map(str, CONTEXTS)),
                    help="attention contexts (--sweep only)")
    ap.add_argument("--tiles", help="--sweep only these BN:warps:stages, e.g. 64:4:2,256:8:2")
    ap.add_argument("--chunks", help="--sweep only these chunks, e.g. none,256")
    args = ap.parse_args()
    if args.sweep:
        tiles = SWEEP_TILES if not args.tiles else [
            tuple(map(int, t.split(":"))) for t in args.tiles.split(",")]
        chunks = SWEEP_CHUNKS if not args.chunks else [
            None if c == "none" else int(c) for c in args.chunks.split(",")]
        return sweep(map(int, args.batches.split(",")),
                     [int(c) for c in args.contexts.split(",")], tiles, chunks)
    t0 = time.time()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"# {torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s  "
          f"torch {torch.__version__}", flush=True)
    failed, results = False, []
    for batch in map(int, args.batches.split(",")):
        for name, shape, nbytes, methods, make, check in cases(batch, not args.no_compile):
            if args.check:
                got, ref = check(make())
                err = rel_err(got, ref)
                ok = err < TOL and not torch.isnan(got).any()
                failed |= not ok
                print(f"check {name:13s} {shape:14s} rel err {err:.2e} "
                      f"{'ok' if ok else 'FAIL'}", flush=True)
            inputs = copies(make, nbytes)
            row = {"kernel": name, "shape": shape, "bytes": nbytes}
            for method, fn in methods.items():
                us, graphed = time_calls([(lambda i=i, fn=fn: fn(i)) for i in inputs])
                row[method] = {"us": us, "graph": graphed, "gbs": nbytes / us / 1e3}
            results.append(row)
            print(json.dumps(row), flush=True)
            del inputs
            torch.cuda.empty_cache()
    table = markdown(results, bw)
    print(f"\n{table}\n\n({time.time() - t0:.0f} s)")
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernels_fused.json").write_text(json.dumps({"copy_bw": bw, "rows": results}))
        (out / "kernels_fused.md").write_text(table + "\n")
    return 1 if failed else 0


SWEEP_CHUNKS = (None, 128, 256, 512, 1024)              # None: the shape-based choice
SWEEP_TILES = ((64, 4, 2), (32, 4, 2), (64, 4, 3), (64, 8, 2), (128, 4, 2), (128, 8, 2),
               (256, 8, 2))                                           # BN, warps, stages


def sweep(batches, contexts, tiles=SWEEP_TILES, chunks=SWEEP_CHUNKS) -> int:
    """µs of decode_attention per (batch, context) and config; the best per shape last."""
    best = []
    for batch in batches:
        for ctx in contexts:
            *_, nbytes, _, make, _ = _attention_case(batch, ctx, 2)
            inputs = copies(make, nbytes)
            lengths = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
            times = {}
            for chunk in chunks:
                for bn, warps, stages in tiles:
                    if chunk is not None and chunk < bn:
                        continue
                    kw = dict(chunk=chunk, block_n=bn, num_warps=warps, num_stages=stages)
                    calls = [(lambda i=i, kw=kw: triton_decode.decode_attention(
                        i[0], i[1], i[2], lengths, HQ, HK, **kw)) for i in inputs]
                    times[str(kw)] = us = time_calls(calls)[0]
                    print(f"b{batch} ctx{ctx} {kw} {us:.1f} µs {nbytes / us / 1e3:.0f} GB/s",
                          flush=True)
            key = min(times, key=times.get)
            best.append(f"b{batch} ctx{ctx}: {times[key]:.1f} µs with {key}")
            del inputs
            torch.cuda.empty_cache()
    print("\n".join(best))
    return 0


def markdown(rows: list[dict], bw: float) -> str:
    lines = ["| kernel | shape | ours µs | GB/s | % copy BW | eager µs | compile µs | "
             "x eager | x compile |", "|" + " --- |" * 9]
    for r in rows:
        o, e, c = r["ours"], r["eager"], r.get("compile")

        def us(m):
            return "-" if m is None else f"{m['us']:.1f}{'' if m['graph'] else '*'}"

        lines.append(f"| {r['kernel']} | {r['shape']} | {us(o)} | {o['gbs']:.0f} | "
                     f"{100 * o['gbs'] * 1e9 / bw:.0f}% | {us(e)} | {us(c)} | "
                     f"{e['us'] / o['us']:.2f} | "
                     f"{'-' if c is None else format(c['us'] / o['us'], '.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
