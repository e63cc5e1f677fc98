"""Fusion passes (fuse-qkv, fuse-rope-qk, fuse-gate-up, fuse-add-rmsnorm): for each, a
structural test (the printed IR before/after: op counts, fused weight names, reported
declines) and a numerical one (logits before vs after on random token ids, max abs
difference <= 1e-5) on tiny llama (GQA 4/2), qwen2 (q/k/v bias), RTN int4 g16 (qwen2),
RTN int8 per channel sym (llama) and W8A8 (qwen2); then the whole CUDA_FUSION pipeline and
the artifact round trip."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest
import torch

import optimizer
from optimizer.interpreter import Interpreter
from optimizer.ir import Graph, Node, VerifyError, format_graph, verify
from optimizer.ir.scratch import ScratchDir
from optimizer.ir.weights import WeightStore
from optimizer.kernels.qlinear.reference import dequantize, pack_bits
from optimizer.kernels.w8a8.reference import quantize_per_token
from optimizer.pipelines import CUDA_FUSION
from tiny_models import save_tiny

TOL = 1e-5
MODELS = ("llama", "qwen2", "rtn4", "rtn8", "w8a8")
PASSES = {"fuse-qkv": ["fuse-qkv"], "fuse-rope-qk": ["fuse-qkv", "fuse-rope-qk"],
          "fuse-gate-up": ["fuse-gate-up"], "fuse-add-rmsnorm": ["fuse-add-rmsnorm"]}


def _w8a8(graph: Graph) -> Graph:
    """Every linear but the lm_head as qlinear_w8a8 (int8 rows, per-row scales)."""
    store, scratch = WeightStore(), ScratchDir()
    nodes, tensors = [], {}
    for n in graph.nodes:
        if n.op == "linear" and n.outputs[0] != "logits":
            prefix = n.weight("weight").removesuffix(".weight")
            q, s = quantize_per_token(store.load(graph.weights[n.weight("weight")]).float())
            tensors[f"{prefix}.qweight"], tensors[f"{prefix}.scales"] = q, s.squeeze(1)
            roles = {"qweight": f"{prefix}.qweight", "scales": f"{prefix}.scales"}
            if n.weight("bias"):
                roles["bias"] = n.weight("bias")
            n = Node.make("qlinear_w8a8", n.inputs, n.outputs, roles, {"method": "test"})
        nodes.append(n)
    g = graph.replace(nodes=tuple(nodes), weights={**graph.weights, **scratch.write(tensors)},
                      resources=graph.resources + (scratch,))
    return optimizer.PassManager(["dce"]).run(g)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Graph]:
    out = {}
    for kind in ("llama", "qwen2"):
        folder = tmp_path_factory.mktemp(kind)
        save_tiny(kind, folder)
        out[kind] = optimizer.import_model(folder)
    out["rtn4"] = optimizer.PassManager(["quantize-rtn:bits=4,group_size=16"]).run(out["qwen2"])
    out["rtn8"] = optimizer.PassManager(
        ["quantize-rtn:bits=8,group_size=0,sym=true"]).run(out["llama"])
    out["w8a8"] = _w8a8(out["qwen2"])
    out["rtn4-llama"] = optimizer.PassManager(
        ["quantize-rtn:bits=4,group_size=16"]).run(out["llama"])    # for the decline tests
    return out


IDS = torch.randint(0, 96, (11,), generator=torch.Generator().manual_seed(5))


def _logits(g: Graph, ids: torch.Tensor = IDS) -> torch.Tensor:
    store = WeightStore()
    ex = Interpreter(g, {n: store.load(w) for n, w in g.weights.items()})
    return ex.step(ids, torch.arange(ids.numel()))


def _ops(g: Graph) -> Counter:
    """Op counts read off the printed IR."""
    return Counter(re.findall(r"^  %.*? = (\w+)\(", format_graph(g, weights=False), re.M))


def _rules(g: Graph, pass_name: str) -> dict[str, dict]:
    entry = [r for r in g.meta["rewrites"] if r["pass"] == pass_name][-1]
    return {r["rule"]: r for r in entry["rules"]}


def _mix(base: Graph, other: Graph, outputs: set[str]) -> Graph:
    """``base`` with the nodes producing ``outputs`` taken from ``other`` (same layout);
    their weights are renamed ``other.*``."""
    nodes, weights = [], dict(base.weights)
    for b, o in zip(base.nodes, other.nodes):
        if o.outputs[0] in outputs:
            roles = {r: f"other.{w}" for r, w in o.weights}
            weights.update({f"other.{w}": dataclasses.replace(other.weights[w],
                                                               name=f"other.{w}")
                            for _, w in o.weights})
            b = Node.make(o.op, o.inputs, o.outputs, roles, dict(o.attrs))
        nodes.append(b)
    g = base.replace(nodes=tuple(nodes), weights=weights,
                     resources=base.resources + other.resources)
    return optimizer.PassManager(["dce"]).run(g)


# --- numerical: every pass on every model ---------------------------------------------

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", sorted(PASSES))
def test_numerical(models, name: str, model: str) -> None:
    g = models[model]
    fused = optimizer.PassManager(PASSES[name]).run(g)
    assert _ops(fused) != _ops(g)
    assert (_logits(fused) - _logits(g)).abs().max().item() <= TOL


# --- fuse-qkv ----------------------------------------------------------------------------

def test_fuse_qkv_structural(models) -> None:
    g = models["llama"]
    out = optimizer.PassManager(["fuse-qkv"]).run(g)
    before, after = _ops(g), _ops(out)
    assert (before["linear"], after["linear"], after["split"]) == (15, 11, 2)
    text = format_graph(out)
    assert ("%l0.q: float32[T,64], %l0.k: float32[T,32], %l0.v: float32[T,32] = "
            "split(%l0.qkv) {sizes=(64, 32, 32)}") in text
    assert ("%l1.qkv: float32[T,128] = linear(%l1.attn_in, "
            "weight=@model.layers.1.self_attn.qkv_proj.weight)") in text
    assert out.weights["model.layers.0.self_attn.qkv_proj.weight"].shape == (128, 64)
    assert not any(f".{x}_proj." in w for w in out.weights for x in "qkv")
    # every other node prints as before (rope and attention still read %l0.q, ...)
    untouched = [ln for ln in format_graph(g, weights=False).splitlines()
                 if not re.search(r"%l\d\.[qkv]:", ln)]
    assert len(untouched) == len(g.nodes) + 2 - 6
    assert set(untouched) <= set(format_graph(out, weights=False).splitlines())
    assert _rules(out, "fuse-qkv")["fuse-qkv"] == {
        "rule": "fuse-qkv", "matched": 2, "applied": 2, "declined": []}


def test_fuse_qkv_bias_and_quantized_names(models) -> None:
    q = optimizer.PassManager(["fuse-qkv"]).run(models["qwen2"])
    assert q.weights["model.layers.1.self_attn.qkv_proj.bias"].shape == (128,)
    r4 = optimizer.PassManager(["fuse-qkv"]).run(models["rtn4"])
    names = {n for n in r4.weights if "qkv_proj" in n}
    assert names == {f"model.layers.{i}.self_attn.qkv_proj.{r}" for i in (0, 1)
                     for r in ("qweight", "scales", "zeros", "bias")}
    assert r4.weights["model.layers.0.self_attn.qkv_proj.qweight"].shape == (128, 32)
    assert r4.weights["model.layers.0.self_attn.qkv_proj.scales"].shape == (128, 4)
    w8 = optimizer.PassManager(["fuse-qkv"]).run(models["w8a8"])
    assert "= qlinear_w8a8(%l0.attn_in, bias=@model.layers.0.self_attn.qkv_proj.bias, " \
           "qweight=@model.layers.0.self_attn.qkv_proj.qweight" in format_graph(w8)


def test_qlinear_row_concatenation_is_exact() -> None:
    """Stacking packed rows, scales and zeros along N stacks the dequantized weights, also
    for odd bit widths (per-row padding) and a partial last group."""
    gen = torch.Generator().manual_seed(0)
    k, gs, bits = 37, 8, 3
    parts = []
    for n in (5, 3, 3):
        codes = torch.randint(0, 1 << bits, (n, k), generator=gen)
        scales = torch.rand(n, 5, generator=gen).half() + 0.01
        zeros = torch.randint(0, 1 << bits, (n, 5), generator=gen).to(torch.uint8)
        parts.append((pack_bits(codes, bits), scales, zeros))
    cat = [torch.cat([p[i] for p in parts]) for i in range(3)]
    whole = dequantize(*cat, None, bits, gs, k)
    each = torch.cat([dequantize(*p, None, bits, gs, k) for p in parts])
    assert torch.equal(whole, each)


def test_fuse_qkv_declines_with_reasons(models) -> None:
    rtn4 = models["rtn4-llama"]
    mixed = _mix(rtn4, models["llama"], {"l0.k"})              # k of layer 0 stays float
    out = optimizer.PassManager(["fuse-qkv"]).run(mixed)
    rule = _rules(out, "fuse-qkv")["fuse-qkv"]
    assert (rule["matched"], rule["applied"]) == (2, 1)
    assert rule["declined"] == [{"at": "%l0.attn", "reason":
                                 "q/k/v projections differ in op (qlinear/linear/qlinear)"}]
    assert _ops(out)["split"] == 1
    assert (_logits(out) - _logits(mixed)).abs().max().item() <= TOL

    schemes = _mix(rtn4, models["rtn8"], {"l1.v"})
    out = optimizer.PassManager(["fuse-qkv"]).run(schemes)
    assert _rules(out, "fuse-qkv")["fuse-qkv"]["declined"] == [{
        "at": "%l1.attn",
        "reason": "q/k/v projections differ in quantization scheme: bits 4/4/8"}]


def _with_g_idx(g: Graph, perms: dict[str, torch.Tensor]) -> Graph:
    """Give the layer-0 q/k/v qlinears a g_idx each (output name -> int32 [K])."""
    scratch = ScratchDir()
    refs = scratch.write({f"g_idx.{k}": v.to(torch.int32) for k, v in perms.items()})
    nodes = tuple(Node.make(n.op, n.inputs, n.outputs,
                            {**dict(n.weights), "g_idx": f"g_idx.{n.outputs[0]}"}, dict(n.attrs))
                  if n.outputs[0] in perms else n for n in g.nodes)
    return g.replace(nodes=nodes, weights={**g.weights, **refs},
                     resources=g.resources + (scratch,))


def test_fuse_qkv_g_idx(models) -> None:
    """Equal g_idx (separate tensors): fused, one shared g_idx. Act-order style per-
    projection g_idx: declined with the reason."""
    rtn4 = models["rtn4-llama"]
    natural = torch.arange(64) // 16
    same = _with_g_idx(rtn4, {v: natural for v in ("l0.q", "l0.k", "l0.v")})
    out = optimizer.PassManager(["fuse-qkv"]).run(same)
    assert "%l0.qkv: float32[T,128] = qlinear(%l0.attn_in, g_idx=@g_idx.l0.q, " \
           "qweight=@model.layers.0.self_attn.qkv_proj.qweight" in format_graph(out)
    assert "g_idx.l0.k" not in out.weights and _ops(out)["split"] == 2
    assert (_logits(out) - _logits(same)).abs().max().item() <= TOL

    perm = natural[torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    act = _with_g_idx(rtn4, {"l0.q": natural, "l0.k": perm, "l0.v": natural})
    out = optimizer.PassManager(["fuse-qkv"]).run(act)
    (declined,) = _rules(out, "fuse-qkv")["fuse-qkv"]["declined"]
    assert declined["at"] == "%l0.attn" and "different g_idx" in declined["reason"]

    partial = _with_g_idx(rtn4, {"l0.q": natural, "l0.k": natural})
    out = optimizer.PassManager(["fuse-qkv"]).run(partial)
    assert _rules(out, "fuse-qkv")["fuse-qkv"]["declined"] == [{
        "at": "%l0.attn", "reason": "q/k/v projections: only some carry g_idx"}]


# --- fuse-rope-qk ------------------------------------------------------------------------

def test_fuse_rope_qk_structural(models) -> None:
    qkv = optimizer.PassManager(["fuse-qkv"]).run(models["llama"])
    out = optimizer.PassManager(["fuse-rope-qk"]).run(qkv)
    before, after = _ops(qkv), _ops(out)
    assert (before["rope"], after["rope"], after["rope_qk"], after["split"]) == (4, 0, 2, 2)
    text = format_graph(out)
    assert ("%l0.qkv_rot: float32[T,128] = rope_qk(%l0.qkv, %positions) {head_dim=16, "
            "n_heads=4, n_kv_heads=2, scaling=None, theta=10000.0}") in text
    assert ("%l0.q_rot: float32[T,64], %l0.k_rot: float32[T,32], %l0.v: float32[T,32] = "
            "split(%l0.qkv_rot) {sizes=(64, 32, 32)}") in text
    # without fuse-qkv there is no split: nothing matches
    plain = optimizer.PassManager(["fuse-rope-qk"]).run(models["llama"])
    assert _rules(plain, "fuse-rope-qk")["fuse-rope-qk"]["matched"] == 0
    assert format_graph(plain) == format_graph(models["llama"])


# --- fuse-gate-up ------------------------------------------------------------------------

def test_fuse_gate_up_structural(models) -> None:
    g = models["llama"]
    out = optimizer.PassManager(["fuse-gate-up"]).run(g)
    before, after = _ops(g), _ops(out)
    assert (before["silu"], before["mul"], before["linear"]) == (2, 2, 15)
    assert (after["silu"], after["mul"], after["linear"], after["silu_mul"]) == (0, 0, 13, 2)
    text = format_graph(out)
    assert ("%l0.gate_up: float32[T,224] = linear(%l0.mlp_in, "
            "weight=@model.layers.0.mlp.gate_up_proj.weight)") in text
    assert "%l0.gated: float32[T,112] = silu_mul(%l0.gate_up)" in text
    assert out.weights["model.layers.1.mlp.gate_up_proj.weight"].shape == (224, 64)
    rules = _rules(out, "fuse-gate-up")
    assert (rules["fuse-gate-up"]["applied"], rules["fuse-silu-mul"]["matched"]) == (2, 0)


def test_fuse_gate_up_declines_to_silu_mul2(models) -> None:
    """gate quantized, up float: the pair is declined with the reason and the fallback
    rule makes silu_mul2(gate, up) instead."""
    rtn8 = models["rtn8"]
    mixed = _mix(rtn8, models["llama"], {"l1.up"})
    out = optimizer.PassManager(["fuse-gate-up"]).run(mixed)
    rules = _rules(out, "fuse-gate-up")
    assert rules["fuse-gate-up"]["declined"] == [{
        "at": "%l1.gated", "reason": "gate/up projections differ in op (qlinear/linear)"}]
    assert rules["fuse-silu-mul"]["applied"] == 1
    ops = _ops(out)
    assert (ops["silu_mul"], ops["silu_mul2"], ops["silu"], ops["mul"]) == (1, 1, 0, 0)
    assert "%l1.gated: float32[T,112] = silu_mul2(%l1.gate, %l1.up)" in format_graph(out)
    assert (_logits(out) - _logits(mixed)).abs().max().item() <= TOL


# --- fuse-add-rmsnorm --------------------------------------------------------------------

def test_fuse_add_rmsnorm_structural(models) -> None:
    g = models["qwen2"]
    out = optimizer.PassManager(["fuse-add-rmsnorm"]).run(g)
    before, after = _ops(g), _ops(out)
    assert (before["add"], before["rms_norm"]) == (4, 5)
    # layer 0's input norm reads the embedding and stays; the final norm is fused
    assert (after["add"], after["rms_norm"], after["add_rms_norm"]) == (0, 1, 4)
    text = format_graph(out)
    assert ("%l0.h_attn: float32[T,64], %l0.mlp_in: float32[T,64] = add_rms_norm(%h, "
            "%l0.attn_out, weight=@model.layers.0.post_attention_layernorm.weight) "
            "{eps=1e-05}") in text
    assert "%l1.h: float32[T,64], %final_norm: float32[T,64] = add_rms_norm(" in text
    assert out.weights.keys() == g.weights.keys()
    assert _rules(out, "fuse-add-rmsnorm")["fuse-add-rmsnorm"]["applied"] == 4


# --- the pipeline and the artifact -------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_cuda_fusion_pipeline_and_artifact(models, model: str, tmp_path) -> None:
    g = models[model]
    fused = optimizer.PassManager(CUDA_FUSION + ["dce"]).run(g)
    ops = _ops(fused)
    assert ops["split"] == ops["rope_qk"] == ops["silu_mul"] == 2 and ops["add_rms_norm"] == 4
    assert ops["rope"] == ops["silu"] == ops["mul"] == ops["add"] == 0
    assert [p["name"] for p in fused.meta["pipeline"]][-5:] == CUDA_FUSION + ["dce"]
    ref = _logits(g)
    assert (_logits(fused) - ref).abs().max().item() <= TOL
    rt = optimizer.runtime.load(optimizer.save(fused, tmp_path / "art"))
    assert (rt.logits(IDS.tolist()) - ref).abs().max().item() <= TOL
    # fusing again finds nothing left to do
    again = optimizer.PassManager(CUDA_FUSION).run(fused)
    assert format_graph(again) == format_graph(fused)


def test_new_op_schemas_are_verified(models) -> None:
    out = optimizer.PassManager(["fuse-qkv"]).run(models["llama"])
    i = next(i for i, n in enumerate(out.nodes) if n.op == "split")
    bad = Node.make("split", out.nodes[i].inputs, out.nodes[i].outputs,
                    attrs={"sizes": (64, 32, 16)})
    with pytest.raises(VerifyError, match="do not add up"):
        verify(out.replace(nodes=out.nodes[:i] + (bad,) + out.nodes[i + 1:]))
