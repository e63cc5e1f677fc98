"""PDL smoke check on a GPU (bench/device_suite.sh runs it first): a decode-like chain of our
kernels (add+RMSNorm -> W4A16 qkv -> rope_qk_cache -> decode attention -> W4A16 o -> ...)
captured in a CUDA graph with programmatic dependent launch (kernels/pdl.py) must give
bit-identical results to the same chain run eagerly without PDL, over several replays with
fresh inputs. Prints the chain's replay time with and without PDL. Exit 1 on a mismatch.

    PYTHONPATH=. python3 bench/pdl_smoke.py
"""

from __future__ import annotations

import os
import sys

import torch

from optimizer.kernels.attention.triton_decode import decode_attention
from optimizer.kernels.rms_norm.triton_rms_norm import add_rms_norm
from optimizer.kernels.rope.reference import inv_freq
from optimizer.kernels.rope.triton_rope import rope_qk_cache
from optimizer.kernels.w4a16 import layout
from optimizer.kernels.w4a16.triton_gemm import w4a16_linear

H, HQ, HK, D, LAYERS, S = 4096, 32, 8, 128, 4, 256


def _int4(n: int, k: int, gen: torch.Generator) -> dict:
    q = torch.randint(0, 16, (n, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    s = (torch.rand(n, k // 128, device="cuda", generator=gen) * 0.01 + 0.001).half()
    z = torch.randint(0, 16, (n, k // 128), dtype=torch.uint8, device="cuda", generator=gen)
    return layout.prepare(q, s, z, None, 128, k)


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = [{"qkv": _int4((HQ + 2 * HK) * D, H, gen), "o": _int4(H, HQ * D, gen),
          "norm": torch.rand(H, device="cuda", generator=gen).bfloat16() + 0.5}
         for _ in range(LAYERS)]
    freqs = inv_freq(D, 500000.0, None).cuda()
    kc = [torch.randn(1, S, HK, D, device="cuda", generator=gen).bfloat16()
          for _ in range(LAYERS)]
    vc = [torch.randn_like(c) for c in kc]
    x = torch.empty(1, H, dtype=torch.bfloat16, device="cuda")
    pos = torch.zeros(1, dtype=torch.int64, device="cuda")

    def chain() -> torch.Tensor:
        h, r = x, torch.zeros_like(x)
        lengths = (pos + 1).to(torch.int32)
        for i in range(LAYERS):
            r, n = add_rms_norm(h, r, w[i]["norm"], 1e-5)
            qkv = w4a16_linear(n, w[i]["qkv"])
            q = rope_qk_cache(qkv, pos, freqs, HQ, HK, D, kc[i], vc[i])
            a = decode_attention(q, kc[i], vc[i], lengths, HQ, HK)
            h = w4a16_linear(a, w[i]["o"])
        return h + r

    inputs = torch.Generator(device="cuda")

    def fresh(step: int) -> None:
        if step == 0:
            inputs.manual_seed(1)
        x.copy_(torch.randn(1, H, device="cuda", generator=inputs))
        pos.fill_(100 + step)

    results = {}
    for mode in ("0", "1"):
        os.environ["OPTIMIZER_PDL"] = mode
        fresh(0)
        chain()                                                # compile this variant
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = chain()
        outs = []
        for step in range(4):
            fresh(step)
            g.replay()
            outs.append(out.clone())
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        for _ in range(50):
            g.replay()
        end.record()
        torch.cuda.synchronize()
        results[mode] = (outs, start.elapsed_time(end) / 50 * 1000)
    os.environ["OPTIMIZER_PDL"] = "0"
    eager = []
    for step in range(4):
        fresh(step)
        eager.append(chain().clone())
    torch.cuda.synchronize()
    ok = bool(torch.isfinite(eager[-1]).all())
    for mode, (outs, us) in results.items():
        diff = [float((a.float() - b.float()).abs().max()) for a, b in zip(outs, eager)]
        print(f"PDL={mode}: chain of {LAYERS} layers, graph replay {us:.1f} us; "
              f"max |graph - eager| per replay {diff}")
        ok &= all(d == 0.0 for d in diff)
    print("ok" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
