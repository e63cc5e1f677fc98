"""The PyTorch peers of bench/decode.py: a gpt-fast-style Llama decoder in plain PyTorch.

``PeerModel(weights, cfg, int4=False)``: fused wqkv / w13 projections, RMSNorm, rotate-half
RoPE, a static KV cache kept as module buffers [B, Hk, S, D] (so torch.compile's
"reduce-overhead" mode can use CUDA graphs), SDPA with GQA. ``int4=True`` replaces every
projection by PyTorch's int4 kernel (``torch.ops.aten._weight_int4pack_mm``, tinygemm, the
kernel torchao and gpt-fast use; group 128, asymmetric), lm_head stays bf16.
``step(tokens [B, T], positions [T]) -> next tokens [B]`` (greedy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GROUP = 128


def pack_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] bf16 -> (tinygemm packed weight, scales/zeros [K/G, N, 2] bf16), RTN g128."""
    n, k = w.shape
    wg = w.float().reshape(n, k // GROUP, GROUP)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    s = ((hi - lo) / 15).clamp(min=1e-6)
    q = ((wg - lo) / s).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    z = lo + 8 * s                                  # tinygemm: w = (q - 8) * s + z
    sz = torch.cat([s, z], -1).reshape(n, k // GROUP, 2).transpose(0, 1).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(
        torch.uint8), 8)
    return packed, sz.to(torch.bfloat16)


class Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor, int4: bool) -> None:
        super().__init__()
        self.int4 = int4
        if int4:
            p, sz = pack_int4(w)
            self.register_buffer("p", p)
            self.register_buffer("sz", sz)
        else:
            self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.int4:
            return F.linear(x, self.w)
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, shape[-1]), self.p, GROUP, self.sz)
        return y.reshape(*shape[:-1], -1)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotate-half; cos/sin [T, D]."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos.to(x.dtype) + rot * sin.to(x.dtype)


class PeerModel(torch.nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], cfg: dict, batch: int, max_len: int,
                 int4: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        h, hd = cfg["n_heads"], cfg["head_dim"]
        kv, n_layers = cfg["n_kv_heads"], cfg["n_layers"]
        self.eps = cfg["rms_eps"]
        dev, dt = weights["model.embed_tokens.weight"].device, torch.bfloat16
        self.register_buffer("emb", weights["model.embed_tokens.weight"])
        self.register_buffer("norm", weights["model.norm.weight"])
        self.register_buffer("out", weights.get("lm_head.weight",
                                                weights["model.embed_tokens.weight"]))
        self.layers = torch.nn.ModuleList()
        for i in range(n_layers):
            p = f"model.layers.{i}."
            layer = torch.nn.Module()
            wqkv = torch.cat([weights[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
            w13 = torch.cat([weights[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up")])
            layer.wqkv, layer.w13 = Linear(wqkv, int4), Linear(w13, int4)
            layer.wo = Linear(weights[p + "self_attn.o_proj.weight"], int4)
            layer.w2 = Linear(weights[p + "mlp.down_proj.weight"], int4)
            layer.register_buffer("n1", weights[p + "input_layernorm.weight"])
            layer.register_buffer("n2", weights[p + "post_attention_layernorm.weight"])
            layer.register_buffer("kc", torch.zeros(batch, kv, max_len, hd, device=dev, dtype=dt))
            layer.register_buffer("vc", torch.zeros(batch, kv, max_len, hd, device=dev, dtype=dt))
            self.layers.append(layer)
        freqs = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, device=dev).float() / hd))
        ang = torch.outer(torch.arange(max_len, device=dev).float(), freqs)
        emb = torch.cat([ang, ang], -1)
        self.register_buffer("cos", emb.cos())
        self.register_buffer("sin", emb.sin())
        self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool,
                                                             device=dev)))
        self.dims = (h, kv, hd)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] at positions [T] (the same for every row) -> greedy next [B]."""
        h_, kv, hd = self.dims
        b, t = tokens.shape
        x = self.emb[tokens]                                            # [B, T, H]
        cos, sin = self.cos[positions], self.sin[positions]
        mask = self.causal[positions][None, None]                       # [1, 1, T, S]
        for layer in self.layers:
            qkv = layer.wqkv(_rms(x, layer.n1, self.eps))
            q, k, v = qkv.split([h_ * hd, kv * hd, kv * hd], -1)
            q = _rope(q.view(b, t, h_, hd).transpose(1, 2), cos, sin)
            k = _rope(k.view(b, t, kv, hd).transpose(1, 2), cos, sin)
            layer.kc[:, :, positions] = k
            layer.vc[:, :, positions] = v.view(b, t, kv, hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, layer.kc, layer.vc, attn_mask=mask,
                                               enable_gqa=True)
            x = x + layer.wo(o.transpose(1, 2).reshape(b, t, h_ * hd))
            a, g = layer.w13(_rms(x, layer.n2, self.eps)).chunk(2, -1)
            x = x + layer.w2(F.silu(a) * g)
        return F.linear(_rms(x[:, -1], self.norm, self.eps), self.out).argmax(-1)
