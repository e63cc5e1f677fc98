"""``--target cuda`` on the CPU: the pipeline's phases, the cuda-layout pass (structural: the
IR before/after; numerical: the reference interpreter gives the same logits before and after,
exactly, since the layout holds the same integers and scales), the manifest's target, and the
CLI. The GPU engine that runs these artifacts is tested in tests/test_cuda_runtime_gpu.py."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import optimizer
from optimizer.cli import main
from optimizer.errors import InvalidInput
from optimizer.interpreter import Interpreter
from optimizer.ir import Graph, Node, format_graph
from optimizer.ir.weights import WeightStore
from optimizer.kernels.qlinear.reference import dequantize as qlinear_dequantize
from optimizer.kernels.w4a16 import layout
from optimizer.pipelines import CUDA_FUSION, INT4_CUDA, BuildRequest, build_pipeline
from tiny_models import add_tokenizer, save_tiny

CALIB = Path(__file__).parent / "data" / "calib_small.jsonl"
RTN4 = "quantize-rtn:bits=4,group_size=128"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Llama, hidden 192 (group 128: a partial last group of 64), GQA 6/2."""
    folder = tmp_path_factory.mktemp("llama")
    save_tiny("llama", folder, hidden_size=192, intermediate_size=320,
              num_attention_heads=6, num_key_value_heads=2)
    add_tokenizer(folder, 96, CALIB)
    return folder


def _logits(g: Graph, ids: torch.Tensor) -> torch.Tensor:
    store = WeightStore()
    ex = Interpreter(g, {n: store.load(r) for n, r in g.weights.items()})
    return ex.step(ids, torch.arange(len(ids)))


def _ops(g: Graph) -> Counter:
    return Counter(n.op for n in g.nodes)


def test_pipeline_phases() -> None:
    specs = build_pipeline(BuildRequest(int4=True, target="cuda"))
    assert specs == ["dce", INT4_CUDA, "cast-weights:dtype=bfloat16", *CUDA_FUSION,
                     "cuda-layout"]
    assert "static_groups=true" in INT4_CUDA
    specs = build_pipeline(BuildRequest(passes=("dce",), dtype="float16", target="cuda"))
    assert specs == ["dce", "cast-weights:dtype=float16", *CUDA_FUSION, "cuda-layout"]
    assert build_pipeline(BuildRequest(passes=("dce",))) == ["dce"]
    with pytest.raises(InvalidInput, match="unknown target 'tpu'"):
        build_pipeline(BuildRequest(target="tpu"))


def test_cast_weights_keeps_scales(tiny: Path) -> None:
    g = optimizer.PassManager(["dce", RTN4, "cast-weights:dtype=bfloat16"]).run(
        optimizer.import_model(tiny))
    scales = {w for n in g.nodes for r, w in n.weights if r == "scales"}
    assert scales and all(g.weights[w].dtype == "float16" for w in scales)
    norms = {w for n in g.nodes if n.op == "rms_norm" for _, w in n.weights}
    assert all(g.weights[w].dtype == "bfloat16" for w in norms)


def test_cuda_layout_structural(tiny: Path) -> None:
    before = optimizer.PassManager(["dce", RTN4, *CUDA_FUSION]).run(optimizer.import_model(tiny))
    after = optimizer.PassManager(["cuda-layout:device=cpu"]).run(before)
    assert _ops(before)["qlinear"] == 2 * 4 and _ops(after)["qlinear"] == 0
    assert _ops(after)["w4a16_linear"] == 2 * 4
    assert after.meta["target"] == "cuda"
    text = format_graph(after)
    assert "w4a16_linear" in text and "qlinear(" not in text
    node = next(n for n in after.nodes if n.op == "w4a16_linear"
                and n.outputs[0] == "l0.qkv")
    qw, sz = after.weights[node.weight("qweight")], after.weights[node.weight("sz")]
    n_qkv = (6 + 2 * 2) * 32
    assert (qw.dtype, qw.shape) == ("int32", (256 // 8, n_qkv))   # K=192 -> 256 rows
    assert (sz.dtype, sz.shape) == ("int32", (2, n_qkv))          # 2 groups of 128 rows
    assert node.weight("perm") is None and node.attr("in_features") == 192
    report = after.meta["rewrites"][-1]
    assert report["pass"] == "cuda-layout" and report["rules"][0]["applied"] == 8


def test_cuda_layout_holds_the_same_weight(tiny: Path) -> None:
    """Per projection, layout.dequantize of the stored layout equals the qlinear weight."""
    before = optimizer.PassManager(["dce", RTN4]).run(optimizer.import_model(tiny))
    after = optimizer.PassManager(["cuda-layout:device=cpu"]).run(before)
    store = WeightStore()
    for old, new in zip(before.nodes, after.nodes):
        if old.op != "qlinear":
            continue
        w = {r: store.load(before.weights[n]) for r, n in old.weights}
        ref = qlinear_dequantize(w["qweight"], w["scales"], w.get("zeros"), w.get("g_idx"),
                                 4, old.attr("group_size"), old.attr("in_features"))
        prepared = {r: store.load(after.weights[n]) for r, n in new.weights}
        assert torch.equal(layout.dequantize(prepared, new.attr("in_features")), ref)


@pytest.mark.parametrize("passes", [RTN4, "quantize-rtn:bits=4,group_size=64,sym=true",
                                    "gptq:bits=4,group_size=128,act_order=true,"
                                    f"calib={CALIB},calib_samples=4,calib_seq_len=16"])
def test_cuda_layout_numerical(tiny: Path, passes: str) -> None:
    """Logits before and after the layout pass are equal (same arithmetic in the
    reference), with and without act-order (a permutation of the input channels)."""
    before = optimizer.PassManager(["dce", passes]).run(optimizer.import_model(tiny))
    after = optimizer.PassManager(["cuda-layout:device=cpu"]).run(before)
    if passes.startswith("gptq"):
        assert any(n.weight("perm") for n in after.nodes if n.op == "w4a16_linear")
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(7))
    a, b = _logits(before, ids), _logits(after, ids)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max()))


def test_target_cuda_artifact_and_cli(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert main([str(tiny), "-o", str(out), "--target", "cuda", "--passes", RTN4]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "cuda"
    assert [p["name"] for p in manifest["pipeline"]][-1] == "cuda-layout"
    rt = optimizer.runtime.load(out)                      # the CPU reference runs it
    ref = optimizer.runtime.load(optimizer.save(optimizer.PassManager(
        ["dce", RTN4, "cast-weights:dtype=bfloat16"]).run(optimizer.import_model(tiny)),
        tmp_path / "b"))
    ids = list(range(1, 20))
    assert (rt.logits(ids) - ref.logits(ids)).abs().max() <= 1e-4


def test_target_cuda_refuses_checkpoint_formats(tiny: Path, tmp_path: Path, capsys) -> None:
    code = main([str(tiny), "-o", str(tmp_path / "g"), "--target", "cuda", "--passes", RTN4,
                 "--format", "gptq"])
    assert code == 2
    assert "--target cuda" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_w4a16_linear_schema_is_verified(tiny: Path) -> None:
    g = optimizer.PassManager(["dce", RTN4, "cuda-layout:device=cpu"]).run(
        optimizer.import_model(tiny))
    i, node = next((i, n) for i, n in enumerate(g.nodes) if n.op == "w4a16_linear")
    bad = Node.make("w4a16_linear", node.inputs, node.outputs, dict(node.weights),
                    {**dict(node.attrs), "in_features": 100})
    from optimizer.ir import VerifyError, verify
    with pytest.raises(VerifyError, match="does not match in_features 100"):
        verify(g.replace(nodes=g.nodes[:i] + (bad,) + g.nodes[i + 1:]))


def test_engine_groups_rope_and_attention(tiny: Path) -> None:
    """The CUDA engine's schedule (cuda_ops.group_nodes) runs each layer's rope_qk -> split
    -> attention as one node, and nothing else changes; a rope whose k has another reader
    stays as it is."""
    from optimizer.runtime.cuda_ops import group_nodes
    g = optimizer.PassManager(["dce", *CUDA_FUSION]).run(optimizer.import_model(tiny))
    nodes = group_nodes(list(g.nodes))
    before, after = _ops(g), Counter(n.op for n in nodes)
    layers = before["attention"]
    assert layers == 2 and before["rope_qk"] == layers
    assert after["rope_qk_attention"] == layers
    assert after["rope_qk"] == after["attention"] == 0
    assert after["split"] == before["split"] - layers
    assert len(nodes) == len(g.nodes) - 2 * layers
    fused = next(n for n in nodes if n.op == "rope_qk_attention")
    attn = next(n for n in g.nodes if n.op == "attention")
    rope = next(n for n in g.nodes if n.op == "rope_qk")
    assert fused.inputs == rope.inputs and fused.outputs == attn.outputs
    assert fused.attr("theta") == rope.attr("theta") and fused.attr("layer") == 0
    # an extra reader of k: that layer is left alone
    split = next(n for n in g.nodes if n.op == "split" and n.inputs == rope.outputs)
    extra = Node.make("add", [split.outputs[1], split.outputs[1]], ["extra"])
    i = next(i for i, n in enumerate(g.nodes) if n is attn)
    nodes = group_nodes([*g.nodes[:i + 1], extra, *g.nodes[i + 1:]])
    assert Counter(n.op for n in nodes)["rope_qk_attention"] == layers - 1


def test_engine_groups_gate_up_and_silu(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In an int4 --target cuda graph the engine's schedule runs each layer's gate-up
    w4a16_linear -> silu_mul as one w4a16_silu node: the linear's inputs, weights and
    attributes, the silu_mul's output, and the linear's output as the key of its kernel
    tensors. A gate-up output that is also a graph output stays apart, and
    OPTIMIZER_FUSE_GU_SILU=0 keeps every layer apart. (The add-norm groups, which take
    the w4a16_silu nodes in, are switched off here.)"""
    from optimizer.runtime.cuda_ops import group_nodes
    monkeypatch.setenv("OPTIMIZER_FUSE_ADD_NORM", "0")
    g = optimizer.PassManager(["dce", *CUDA_FUSION, RTN4, "cuda-layout:device=cpu"]).run(
        optimizer.import_model(tiny))
    before = _ops(g)
    layers = before["attention"]
    assert layers == 2 and before["silu_mul"] == layers
    nodes = group_nodes(list(g.nodes), tuple(g.outputs))
    after = Counter(n.op for n in nodes)
    assert after["w4a16_silu"] == layers and after["silu_mul"] == 0
    assert after["w4a16_linear"] == before["w4a16_linear"] - layers
    act = next(n for n in g.nodes if n.op == "silu_mul")
    gate_up = next(n for n in g.nodes if n.outputs == act.inputs)
    assert gate_up.op == "w4a16_linear"
    fused = next(n for n in nodes if n.op == "w4a16_silu" and n.outputs == act.outputs)
    assert fused.inputs == gate_up.inputs and fused.weights == gate_up.weights
    assert fused.attr("prepared") == gate_up.outputs[0]
    assert {k: v for k, v in fused.attrs if k != "prepared"} == dict(gate_up.attrs)
    nodes = group_nodes(list(g.nodes), (*g.outputs, gate_up.outputs[0]))
    assert Counter(n.op for n in nodes)["w4a16_silu"] == layers - 1
    monkeypatch.setenv("OPTIMIZER_FUSE_GU_SILU", "0")
    assert Counter(n.op for n in group_nodes(list(g.nodes)))["w4a16_silu"] == 0


def test_engine_groups_qkv_rope_and_attention(tiny: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """In an int4 --target cuda graph the engine's schedule runs each layer's qkv
    w4a16_linear -> rope_qk -> split -> attention as one w4a16_rope_attention node: the
    linear's input and weights, the positions, the attention's output and attributes (with
    the rope's theta and scaling), and the linear's output as the key of its kernel tensors.
    Only with OPTIMIZER_FUSE_QKV_ROPE=1 (off by default until measured on a GPU); a qkv
    output that is also a graph output leaves that layer's linear apart. (The add-norm
    groups, which take the qkv linears in, are switched off here.)"""
    from optimizer.runtime.cuda_ops import group_nodes
    monkeypatch.setenv("OPTIMIZER_FUSE_ADD_NORM", "0")
    g = optimizer.PassManager(["dce", *CUDA_FUSION, RTN4, "cuda-layout:device=cpu"]).run(
        optimizer.import_model(tiny))
    off = Counter(n.op for n in group_nodes(list(g.nodes)))          # the default
    assert off["w4a16_rope_attention"] == 0 and off["rope_qk_attention"] == 2
    monkeypatch.setenv("OPTIMIZER_FUSE_QKV_ROPE", "1")
    before = _ops(g)
    layers = before["attention"]
    assert layers == 2 and before["rope_qk"] == layers
    nodes = group_nodes(list(g.nodes), tuple(g.outputs))
    after = Counter(n.op for n in nodes)
    assert after["w4a16_rope_attention"] == layers
    assert after["rope_qk_attention"] == after["rope_qk"] == after["attention"] == 0
    assert after["w4a16_linear"] == before["w4a16_linear"] - 2 * layers   # qkv, gate-up
    assert len(nodes) == len(g.nodes) - 4 * layers                         # 3 + silu_mul
    rope = next(n for n in g.nodes if n.op == "rope_qk")
    qkv = next(n for n in g.nodes if n.outputs == (rope.inputs[0],))
    attn = next(n for n in g.nodes if n.op == "attention" and n.attr("layer") == 0)
    assert qkv.op == "w4a16_linear"
    fused = next(n for n in nodes if n.op == "w4a16_rope_attention" and n.outputs == attn.outputs)
    assert fused.inputs == (qkv.inputs[0], rope.inputs[1]) and fused.weights == qkv.weights
    assert fused.attr("prepared") == qkv.outputs[0] and fused.attr("theta") == rope.attr("theta")
    assert all(fused.attr(k) == v for k, v in attn.attrs)
    nodes = group_nodes(list(g.nodes), (*g.outputs, qkv.outputs[0]))
    after = Counter(n.op for n in nodes)
    assert after["w4a16_rope_attention"] == layers - 1 and after["rope_qk_attention"] == 1


def test_engine_groups_add_norm(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the engine's schedule runs o -> add_rms_norm -> gate-up
    (w4a16_silu) and down -> next layer's add_rms_norm -> qkv as w4a16_add_norm_linear
    nodes: the first linear's input, the residual, the norm's sum and the second's output;
    the first's weights with the norm's as "norm", the keys of both kernels' tensors. The
    last layer's down (its norm feeds the float lm_head) and layer 0's rms_norm stay, and
    every name a node reads is made before it. OPTIMIZER_FUSE_ADD_NORM=0 keeps them apart."""
    from optimizer.runtime.cuda_ops import group_nodes
    g = optimizer.PassManager(["dce", *CUDA_FUSION, RTN4, "cuda-layout:device=cpu"]).run(
        optimizer.import_model(tiny))
    monkeypatch.setenv("OPTIMIZER_FUSE_ADD_NORM", "0")
    assert Counter(n.op for n in group_nodes(list(g.nodes)))["w4a16_add_norm_linear"] == 0
    monkeypatch.delenv("OPTIMIZER_FUSE_ADD_NORM")
    before = _ops(g)
    layers = before["attention"]
    assert layers == 2 and before["add_rms_norm"] == 2 * layers      # + the final norm - 1st
    nodes = group_nodes(list(g.nodes), tuple(g.outputs))
    after = Counter(n.op for n in nodes)
    assert after["w4a16_add_norm_linear"] == 2 * layers - 1
    assert after["add_rms_norm"] == 1 and after["rms_norm"] == before["rms_norm"]
    made = set(g.inputs)
    for n in nodes:
        assert all(v in made for v in n.inputs), f"{n.op} reads before it is made"
        made.update(n.outputs)
    by_out = {o: n for n in g.nodes for o in n.outputs}
    for f in (n for n in nodes if n.op == "w4a16_add_norm_linear"):
        norm = by_out[f.outputs[0]]
        assert norm.op == "add_rms_norm" and norm.outputs[0] == f.outputs[0]
        lin = next(by_out[v] for v in norm.inputs if v != f.inputs[1])
        assert lin.op == "w4a16_linear" and f.inputs[0] == lin.inputs[0]
        assert set(norm.inputs) == {lin.outputs[0], f.inputs[1]}
        assert f.weight("norm") == norm.weight("weight") and f.attr("eps") == norm.attr("eps")
        assert f.attr("prepared") == lin.outputs[0] and f.weight("qweight") == lin.weight("qweight")
        second = [n for n in g.nodes if n.inputs == (norm.outputs[1],)]
        assert len(second) == 1 and second[0].op == "w4a16_linear"
        assert f.attr("prepared_b") == second[0].outputs[0]
        silu = [n for n in g.nodes if n.op == "silu_mul" and n.inputs == second[0].outputs]
        assert f.attr("gate_up") == bool(silu)
        assert f.outputs[1] == (silu[0].outputs[0] if silu else second[0].outputs[0])
    # the normed value also a graph output: that group is left apart
    norm = next(n for n in g.nodes if n.op == "add_rms_norm" and n.outputs[1] in
                {i for m in g.nodes if m.op == "w4a16_linear" for i in m.inputs})
    nodes = group_nodes(list(g.nodes), (*g.outputs, norm.outputs[1]))
    assert Counter(n.op for n in nodes)["w4a16_add_norm_linear"] == 2 * layers - 2
