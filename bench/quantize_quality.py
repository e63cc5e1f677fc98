"""Perplexity, time and peak memory of each quantization scheme on one model.

    python bench/quantize_quality.py [--model smollm2] [--text bench/eval.txt]
        [--calib tests/data/calib_prose.txt] [--calib-samples 128] [--calib-seq-len 256]
        [--context 512] [--stride 256] [--max-tokens N]
        [--schemes fp,int8,rtn4,gptq4,awq4,w8a8] [--parallel 1] [--out results.md]

Each scheme runs in its own process (so peak RSS is its own): import, the scheme's passes,
save, then perplexity over the evaluation text. Prints a markdown table. Calibration is
`--calib` (default: our own prose in tests/data/calib_prose.txt, never the evaluation text;
``--calib ""`` has the model generate its own samples), cut into at most `--calib-samples`
windows of `--calib-seq-len` tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SCHEMES = {
    "fp": [],
    "int8": ["quantize-rtn:bits=8,group_size=0,sym=true"],
    "rtn4": ["quantize-rtn:bits=4,group_size=128"],
    "gptq4": ["gptq:bits=4,group_size=128,act_order=true,mse=2.4"],   # what --int4 runs
    "awq4": ["awq:bits=4,group_size=128"],
    "w8a8": ["smoothquant:alpha=0.5"],
}
LABELS = {"fp": "FP (dequantized Q4_1 source)", "int8": "RTN int8 per-channel",
          "rtn4": "RTN int4 g128 asym", "gptq4": "GPTQ int4 g128 asym act-order mse",
          "awq4": "AWQ int4 g128 asym", "w8a8": "SmoothQuant W8A8 (alpha 0.5)"}


def run_one(args: argparse.Namespace, scheme: str) -> dict:
    """In a child process: build the scheme's artifact and measure it."""
    import tempfile
    from pathlib import Path

    import optimizer
    from optimizer.evaluate import perplexity, read_text, tokenize_text

    calibrated = ("gptq", "awq", "smoothquant")
    specs = ["dce"]
    for s in SCHEMES[scheme]:
        if s.startswith("gptq") and args.device == "cuda":
            s += ",device=cuda"
        if s.split(":")[0] in calibrated:
            s += (f",calib_samples={args.calib_samples},calib_seq_len={args.calib_seq_len}"
                  + (f",calib={args.calib}" if args.calib else ""))
        specs.append(s)
    start = time.perf_counter()
    graph = optimizer.PassManager(specs).run(optimizer.import_model(args.model))
    cal = next((r["calibration"] for r in graph.meta.get("quantization", [])
                if "calibration" in r), None)
    calib = f"{cal['samples']} x {cal['tokens'] // cal['samples']}" if cal else "-"
    with tempfile.TemporaryDirectory() as tmp:
        out = optimizer.save(graph, Path(tmp) / "a")
        build_s = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(out).iterdir())
        rt = optimizer.runtime.load(out, device=args.device)
        ids = tokenize_text(rt, read_text(Path(args.text)))
        if args.max_tokens:
            ids = ids[: args.max_tokens]
        t = time.perf_counter()
        res = perplexity(rt, ids, context=args.context, stride=args.stride)
        eval_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # MiB (Linux: KiB)
    return {"scheme": scheme, "ppl": res.ppl, "tokens": res.n_tokens, "build_s": build_s,
            "eval_s": eval_s, "peak_rss_mib": peak, "artifact_mib": size / 2**20,
            "calib": calib}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--text", default="bench/eval.txt")
    p.add_argument("--calib", default="tests/data/calib_prose.txt")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=0)
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--device", default="cpu", help="runtime for the evaluation (and where "
                   "GPTQ's math runs)")
    p.add_argument("--parallel", type=int, default=1, help="schemes run at once")
    p.add_argument("--child", default="")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(args, args.child)))
        return
    procs = []
    for scheme in args.schemes.split(","):
        cmd = [sys.executable, __file__, "--child", scheme]
        for key in ("model", "text", "calib", "calib_samples", "calib_seq_len", "context",
                    "stride", "max_tokens", "device"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        procs.append((scheme, cmd))
    rows = []
    running: list = []
    while procs or running:
        while procs and len(running) < args.parallel:
            scheme, cmd = procs.pop(0)
            running.append((scheme, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE, text=True)))
        scheme, proc = running.pop(0)
        out, err = proc.communicate()
        if proc.returncode != 0:
            print(f"{scheme}: FAILED\n{err[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{scheme}: ppl {rows[-1]['ppl']:.4f}", file=sys.stderr, flush=True)
    order = args.schemes.split(",")
    rows.sort(key=lambda r: order.index(r["scheme"]))
    base = next((r["ppl"] for r in rows if r["scheme"] == "fp"), None)
    lines = ["| scheme | perplexity | vs FP | calibration | build s | eval s | peak RSS MiB "
             "| artifact MiB |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rel = f"{(r['ppl'] / base - 1) * 100:+.2f}%" if base else "-"
        lines.append(f"| {LABELS[r['scheme']]} | {r['ppl']:.4f} | {rel} | {r['calib']} "
                     f"| {r['build_s']:.0f} "
                     f"| {r['eval_s']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['artifact_mib']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
