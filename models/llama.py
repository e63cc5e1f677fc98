"""The Llama-family decoder as an IR graph.

Weights use Hugging Face names (``model.layers.{i}.self_attn.q_proj.weight``...); each
importer maps its file's names onto these. One layer, in the ops of `optimizer.ir.ops`::

    a = rms_norm(h) ; q, k, v = linear(a) x3 ; q, k = rope(q), rope(k)
    h = h + linear_o(attention(q, k, v))
    m = rms_norm(h) ; h = h + linear_down(silu(linear_gate(m)) * linear_up(m))

then ``logits = linear_lm_head(rms_norm(h))`` (lm_head is embed_tokens when tied).
"""

from __future__ import annotations

from optimizer.ir import Graph, Node, Value, WeightRef
from optimizer.models.config import ModelConfig

ACT = "float32"  # activations of the reference graph


def expected_weights(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the graph needs, with its shape as implied by the config."""
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.n_heads * d, cfg.n_kv_heads * d
    out = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        for name, shape in (("q", (q, h)), ("k", (kv, h)), ("v", (kv, h)), ("o", (h, q))):
            out[f"{p}self_attn.{name}_proj.weight"] = shape
            if (cfg.qkv_bias and name != "o") or (cfg.o_bias and name == "o"):
                out[f"{p}self_attn.{name}_proj.bias"] = (shape[0],)
        for name, shape in (("gate", (f, h)), ("up", (f, h)), ("down", (h, f))):
            out[f"{p}mlp.{name}_proj.weight"] = shape
            if cfg.mlp_bias:
                out[f"{p}mlp.{name}_proj.bias"] = (shape[0],)
    return out


class _Builder:
    def __init__(self, weights: dict[str, WeightRef]) -> None:
        self.weights = weights
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}

    def value(self, name: str, width: int | str, dtype: str = ACT) -> str:
        self.values[name] = Value(name, dtype, ("T", width) if width != "" else ("T",))
        return name

    def add(self, op: str, inputs: list[str], out: str, width: int,
            weights: dict[str, str] | None = None, **attrs: object) -> str:
        self.nodes.append(Node.make(op, inputs, [out], weights, attrs))
        return self.value(out, width)

    def linear(self, x: str, prefix: str, out: str, width: int) -> str:
        w = {"weight": prefix + ".weight"}
        if prefix + ".bias" in self.weights:
            w["bias"] = prefix + ".bias"
        return self.add("linear", [x], out, width, w)


def build_graph(cfg: ModelConfig, weights: dict[str, WeightRef],
                meta: dict[str, object]) -> Graph:
    """The reference graph. Precondition: ``weights`` holds `expected_weights(cfg)`."""
    b = _Builder(weights)
    b.value("tokens", "", "int64")
    b.value("positions", "", "int64")
    h, d = cfg.hidden_size, cfg.head_dim
    rope = {"head_dim": d, "theta": cfg.rope_theta,
            "scaling": tuple(sorted((cfg.rope_scaling or {}).items())) or None}
    x = b.add("embedding", ["tokens"], "h", h, {"weight": "model.embed_tokens.weight"},
              dtype=ACT)
    for i in range(cfg.n_layers):
        p, a = f"model.layers.{i}.", f"l{i}."
        n = b.add("rms_norm", [x], a + "attn_in", h, {"weight": p + "input_layernorm.weight"},
                  eps=cfg.rms_eps)
        q = b.linear(n, p + "self_attn.q_proj", a + "q", cfg.n_heads * d)
        k = b.linear(n, p + "self_attn.k_proj", a + "k", cfg.n_kv_heads * d)
        v = b.linear(n, p + "self_attn.v_proj", a + "v", cfg.n_kv_heads * d)
        q = b.add("rope", [q, "positions"], a + "q_rot", cfg.n_heads * d,
                  n_heads=cfg.n_heads, **rope)
        k = b.add("rope", [k, "positions"], a + "k_rot", cfg.n_kv_heads * d,
                  n_heads=cfg.n_kv_heads, **rope)
        att = b.add("attention", [q, k, v, "positions"], a + "attn", cfg.n_heads * d,
                    n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=d, layer=i,
                    window=cfg.window(i))
        o = b.linear(att, p + "self_attn.o_proj", a + "attn_out", h)
        x = b.add("add", [x, o], a + "h_attn", h)
        n = b.add("rms_norm", [x], a + "mlp_in", h,
                  {"weight": p + "post_attention_layernorm.weight"}, eps=cfg.rms_eps)
        g = b.linear(n, p + "mlp.gate_proj", a + "gate", cfg.intermediate_size)
        u = b.linear(n, p + "mlp.up_proj", a + "up", cfg.intermediate_size)
        s = b.add("silu", [g], a + "gate_act", cfg.intermediate_size)
        m = b.add("mul", [s, u], a + "gated", cfg.intermediate_size)
        o = b.linear(m, p + "mlp.down_proj", a + "mlp_out", h)
        x = b.add("add", [x, o], a + "h", h)
    x = b.add("rms_norm", [x], "final_norm", h, {"weight": "model.norm.weight"},
              eps=cfg.rms_eps)
    head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    b.add("linear", [x], "logits", cfg.vocab_size, {"weight": head})
    return Graph(inputs=("tokens", "positions"), outputs=("logits",), nodes=tuple(b.nodes),
                 values=b.values, weights=weights,
                 meta={**meta, "model": cfg.to_json()})
