"""Peak memory of calibrated quantization vs model depth (GPTQ streams layer by layer).

    python bench/quantize_memory.py [--layers 6,24] [--hidden 2048] [--ffn 5632]
        [--dtype float32] [--workdir /tmp/qmem]

Writes random Llama checkpoints (TinyLlama-1.1B-like width, float32 so that the deeper one
is several GB) one tensor at a time, then runs ``optimize MODEL --passes gptq:... -o OUT``
in a child process while sampling its /proc status every 20 ms: peak RSS (VmHWM), peak
anonymous memory (RssAnon) and peak file-backed resident memory (RssFile, the memory-mapped
weights, which the kernel can drop at any time). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "tests" / "data" / "calib_small.jsonl"


def write_model(folder: Path, layers: int, hidden: int, ffn: int, dtype: str) -> int:
    from optimizer.formats.safetensors_io import write_safetensors

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import add_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    heads, kv, vocab = 32, 4, 32000
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
           "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn,
           "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "max_position_embeddings": 2048, "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(cfg))
    add_tokenizer(folder, vocab, CALIB)
    d = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,),
                       p + "self_attn.q_proj.weight": (hidden, hidden),
                       p + "self_attn.k_proj.weight": (kv * d, hidden),
                       p + "self_attn.v_proj.weight": (kv * d, hidden),
                       p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (ffn, hidden),
                       p + "mlp.up_proj.weight": (ffn, hidden),
                       p + "mlp.down_proj.weight": (hidden, ffn)})
    tdtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)

    def produce(name: str) -> torch.Tensor:
        shape = shapes[name]
        if len(shape) == 1:
            return (1 + 0.1 * torch.randn(shape, generator=gen)).to(tdtype)
        return (torch.randn(shape, generator=gen) * shape[1] ** -0.5).to(tdtype)

    entries = [(n, tdtype, s) for n, s in shapes.items()]
    write_safetensors(folder / "model.safetensors", entries, produce)
    return (folder / "model.safetensors").stat().st_size


def measure(cmd: list[str]) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    start = time.perf_counter()
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.02)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return {**{k: v / 1024 for k, v in peak.items()}, "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="6,24")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--workdir", default="/tmp/qmem")
    p.add_argument("--passes", default=f"gptq:bits=4,group_size=128,calib={CALIB},"
                                       "calib_samples=16,calib_seq_len=64")
    args = p.parse_args()
    rows = []
    for n in [int(x) for x in args.layers.split(",")]:
        folder = Path(args.workdir) / f"llama-{n}"
        size = write_model(folder, n, args.hidden, args.ffn, args.dtype)
        out = Path(args.workdir) / f"out-{n}"
        cmd = [sys.executable, "-m", "optimizer.cli", str(folder), "--passes", args.passes,
               "-o", str(out)]
        m = measure(cmd)
        rows.append((n, size / 2**30, m))
        print(f"{n} layers done: {m}", file=sys.stderr)
    print(f"passes: `{args.passes}`\n")
    print("| layers | weights GiB | peak RSS MiB | peak anon MiB | peak file-backed MiB | s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, gib, m in rows:
        print(f"| {n} | {gib:.2f} | {m['VmHWM']:.0f} | {m['RssAnon']:.0f} | "
              f"{m['RssFile']:.0f} | {m['seconds']:.0f} |")


if __name__ == "__main__":
    main()
