"""Decode and prefill throughput on a Llama-3-8B-shaped model: ours vs PyTorch, in one run.

    python3 bench/decode.py [--layers 32] [--work /dev/shm/decode] [--batches 1,8,32]
        [--steps 64] [--prompt 128] [--prefill 512] [--schemes bf16,int8,int4]
        [--peers eager,compile] [--compile-batches 1] [--out results.md]

1. Measures device-to-device copy bandwidth (bytes read + written).
2. Writes a random-weight Llama-3-8B-shaped checkpoint (HF layout, bf16, seeded; nothing is
   downloaded) and builds artifacts with our toolchain, one process each, in parallel:
   ``optimize CKPT --target cuda`` with no quantization (bf16), ``quantize-rtn:bits=8,
   group_size=0,sym=true`` (int8 weight-only) and ``quantize-rtn:bits=4,group_size=128``
   (int4; RTN instead of GPTQ: the same layout and kernels, no calibration time).
3. For each artifact: decode tok/s at each batch (B prompts of --prompt random tokens, then
   --steps greedy steps of all B; tok/s = B * steps / time) and prefill tok/s (one sequence
   of --prefill tokens, median of 5).
4. Peers on the same weights (bench/torch_peers.py): eager PyTorch bf16 and PyTorch's int4
   kernel under torch.compile (mode reduce-overhead: CUDA graphs), gpt-fast style.
5. The bandwidth limit: copy bandwidth / bytes read per decode step (every weight a step
   reads once: projections, norms, lm_head; not the embedding table; KV cache excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CFG = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
           num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
           rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192)
SCHEMES = {"bf16": "dce", "int8": "dce;quantize-rtn:bits=8,group_size=0,sym=true",
           "int4": "dce;quantize-rtn:bits=4,group_size=128"}


def copy_bandwidth() -> float:
    x = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 20 * 2 * x.numel() * 2 / (time.perf_counter() - t)
    del x, y
    torch.cuda.empty_cache()
    return bw


def write_checkpoint(folder: Path, layers: int) -> None:
    """A random bf16 Llama checkpoint (std 0.02 projections, norms near 1), in shards."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**CFG, "num_hidden_layers": layers, "model_type": "llama",
           "architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False,
           "torch_dtype": "bfloat16", "hidden_act": "silu"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    h, f, v = CFG["hidden_size"], CFG["intermediate_size"], CFG["vocab_size"]
    hd = h // CFG["num_attention_heads"]
    q, kv = h, CFG["num_key_value_heads"] * hd
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=dev) * std).to(torch.bfloat16)

    index, shard, n = {}, {}, 0

    def flush() -> None:
        nonlocal shard, n
        if shard:
            name = f"model-{n:05d}.safetensors"
            save_file({k: t.cpu() for k, t in shard.items()}, str(folder / name))
            index.update({k: name for k in shard})
            shard, n = {}, n + 1

    shard["model.embed_tokens.weight"] = rnd(v, h)
    shard["lm_head.weight"] = rnd(v, h)
    shard["model.norm.weight"] = (1 + rnd(h, std=0.1).float()).to(torch.bfloat16)
    flush()
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)),
                            ("self_attn.v_proj", (kv, h)), ("self_attn.o_proj", (h, q)),
                            ("mlp.gate_proj", (f, h)), ("mlp.up_proj", (f, h)),
                            ("mlp.down_proj", (h, f))):
            shard[p + name + ".weight"] = rnd(*shape)
        for name in ("input_layernorm", "post_attention_layernorm"):
            shard[p + name + ".weight"] = (1 + rnd(h, std=0.1).float()).to(torch.bfloat16)
        if i % 4 == 3:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": index}))


def build_all(ckpt: Path, work: Path, schemes: list[str]) -> dict[str, float]:
    """Build every scheme's artifact in its own process, in parallel; seconds each."""
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "PYTHONPATH": str(ROOT),
           # leave a few cores to whatever else runs meanwhile (bench/device_suite.sh)
           "OMP_NUM_THREADS": str(max(1, ((os.cpu_count() or 4) - 6) // len(schemes)))}
    (work / "tmp").mkdir(exist_ok=True)
    procs, start = {}, time.perf_counter()
    for s in schemes:
        cmd = [sys.executable, "-m", "optimizer.cli", str(ckpt), "-o", str(work / s),
               "--target", "cuda", "--passes", SCHEMES[s]]
        procs[s] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
    seconds = {}
    for s, p in procs.items():
        out = p.communicate()[0]
        seconds[s] = time.perf_counter() - start
        if p.returncode:
            raise SystemExit(f"building {s} failed:\n{out[-3000:]}")
        print(f"built {s} in {seconds[s]:.0f} s: {out.strip().splitlines()[-1]}", flush=True)
    return seconds


def step_bytes(graph) -> int:
    """Bytes of the weights one decode step reads (all but the embedding table)."""
    emb = {w for n in graph.nodes if n.op == "embedding" for _, w in n.weights}
    reads = {w for n in graph.nodes if n.op != "embedding" for _, w in n.weights}
    return sum(graph.weights[w].nbytes for w in reads - emb) + sum(
        graph.weights[w].nbytes for w in reads & emb)


def bench_ours(path: Path, batches: list[int], steps: int, prompt: int,
               prefill: int | None) -> dict:
    import optimizer
    rt = optimizer.runtime.load(path, device="cuda")
    gen = torch.Generator().manual_seed(1)
    vocab = CFG["vocab_size"]
    res = {"bytes": step_bytes(rt.graph), "decode": {}}
    for b in batches:
        ids = [torch.randint(vocab, (prompt,), generator=gen).tolist() for _ in range(b)]
        rt.generate_ids(ids, 8)                              # capture + warm-up
        best = 0.0
        for _ in range(2):
            rt.generate_ids(ids, steps)
            best = max(best, rt.last_stats["decode_tok_s"])
        res["decode"][b] = best
        print(f"  ours {path.name} B={b}: {best:.1f} tok/s", flush=True)
    if prefill:
        ids = torch.randint(vocab, (prefill,), generator=gen)
        res["prefill"] = prefill / _median_time(lambda: rt.engine.prefill(ids))
        print(f"  ours {path.name} prefill {prefill}: {res['prefill']:.0f} tok/s", flush=True)
    del rt
    torch.cuda.empty_cache()
    return res


def _median_time(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def bench_peer(ckpt: Path, int4: bool, compiled: bool, batches: list[int], steps: int,
               prompt: int, prefill: int) -> dict:
    from safetensors.torch import load_file

    from bench.torch_peers import PeerModel
    weights = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        weights.update({k: t.to("cuda") for k, t in load_file(str(f)).items()})
    cfg = json.loads((ckpt / "config.json").read_text())
    pc = {"n_heads": cfg["num_attention_heads"], "n_kv_heads": cfg["num_key_value_heads"],
          "head_dim": cfg["hidden_size"] // cfg["num_attention_heads"],
          "n_layers": cfg["num_hidden_layers"], "rms_eps": cfg["rms_norm_eps"],
          "rope_theta": cfg["rope_theta"]}
    res: dict = {"decode": {}}
    label = ("int4 tinygemm" if int4 else "bf16") + (" compile" if compiled else " eager")
    for b in batches:
        torch._dynamo.reset()
        model = PeerModel(weights, pc, b, prompt + steps + 8, int4=int4)
        fn = torch.compile(model, mode="reduce-overhead", fullgraph=True) if compiled else model
        tok = torch.randint(CFG["vocab_size"], (b, prompt), device="cuda")
        with torch.inference_mode():
            tok = model(tok, torch.arange(prompt, device="cuda"))[:, None]
            t0 = time.perf_counter()
            for i in range(3):                                   # compile / warm-up
                tok = fn(tok, torch.tensor([prompt + i], device="cuda"))[:, None].clone()
            torch.cuda.synchronize()
            warm = time.perf_counter() - t0
            t = time.perf_counter()
            for i in range(3, steps):
                tok = fn(tok, torch.tensor([prompt + i], device="cuda"))[:, None].clone()
            torch.cuda.synchronize()
            res["decode"][b] = b * (steps - 3) / (time.perf_counter() - t)
        print(f"  peer {label} B={b}: {res['decode'][b]:.1f} tok/s (warm-up {warm:.0f} s)",
              flush=True)
        if b == batches[0] and not compiled:
            ids = torch.randint(CFG["vocab_size"], (1, prefill), device="cuda")
            big = PeerModel(weights, pc, 1, prefill, int4=int4)
            with torch.inference_mode():
                res["prefill"] = prefill / _median_time(
                    lambda: big(ids, torch.arange(prefill, device="cuda")))
            print(f"  peer {label} prefill {prefill}: {res['prefill']:.0f} tok/s", flush=True)
            del big
        del model, fn
        torch.cuda.empty_cache()
    del weights
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/dev/shm/decode"))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--schemes", default="bf16,int8,int4")
    ap.add_argument("--peers", default="eager,compile")
    ap.add_argument("--compile-batches", default="1")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--pdl-ab", action="store_true",
                    help="also time each scheme (batch 1 and prefill) with OPTIMIZER_PDL=0 "
                         "(no programmatic dependent launch, kernels/pdl.py)")
    ap.add_argument("--build-only", action="store_true",
                    help="write the checkpoint and build the artifacts, then stop")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    schemes = [s for s in args.schemes.split(",") if s]
    bw = 0.0 if args.build_only else copy_bandwidth()
    if bw:
        print(f"device {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s",
              flush=True)
    ckpt = args.work / "ckpt"
    if not (ckpt / "model.safetensors.index.json").is_file():
        t = time.perf_counter()
        write_checkpoint(ckpt, args.layers)
        print(f"wrote checkpoint in {time.perf_counter() - t:.0f} s", flush=True)
    todo = [s for s in schemes if not (args.work / s / "manifest.json").is_file()]
    if todo:
        build_all(ckpt, args.work, todo)
    if args.build_only:
        (args.work / "built").write_text("ok\n")
        return
    rows = []
    for s in schemes:
        r = bench_ours(args.work / s, batches, args.steps, args.prompt, args.prefill)
        rows.append((f"ours {s}", r, bw / r["bytes"]))
        if args.pdl_ab:
            os.environ["OPTIMIZER_PDL"] = "0"
            r0 = bench_ours(args.work / s, [1], args.steps, args.prompt, args.prefill)
            os.environ.pop("OPTIMIZER_PDL")
            rows.append((f"ours {s}, PDL off", r0, bw / r0["bytes"]))
    limit_bf16 = next((lim for name, _, lim in rows if name == "ours bf16"), None)
    limit_int4 = next((lim for name, _, lim in rows if name == "ours int4"), None)
    peers = [p for p in args.peers.split(",") if p]
    if "eager" in peers:
        rows.append(("PyTorch bf16 eager", bench_peer(ckpt, False, False, batches, args.steps,
                                                      args.prompt, args.prefill), limit_bf16))
    if "compile" in peers:
        cb = [int(b) for b in args.compile_batches.split(",")]
        rows.append(("PyTorch int4 tinygemm + compile", bench_peer(
            ckpt, True, True, cb, args.steps, args.prompt, args.prefill), limit_int4))
    lines = [f"copy bandwidth {bw / 1e12:.2f} TB/s; decode: {args.prompt}-token prompts, "
             f"{args.steps} greedy steps; prefill: {args.prefill} tokens, batch 1", "",
             "| engine | limit B=1 tok/s | " + " | ".join(f"decode B={b} tok/s" for b in batches)
             + " | B=1 % of limit | prefill tok/s |",
             "|---|---:|" + "---:|" * len(batches) + "---:|---:|"]
    for name, r, lim in rows:
        d = r["decode"]
        cells = [f"{d[b]:.1f}" if b in d else "-" for b in batches]
        pct = f"{100 * d[1] / lim:.0f}%" if 1 in d and lim else "-"
        pre = f"{r['prefill']:.0f}" if "prefill" in r else "-"
        lines.append(f"| {name} | {lim:.0f} | " + " | ".join(cells) + f" | {pct} | {pre} |"
                     if lim else f"| {name} | - | " + " | ".join(cells) + f" | - | {pre} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
