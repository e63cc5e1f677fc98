"""Pass manager and cleanup passes: a structural test (printed IR before/after) and a
numerical test (same logits before/after) for each pass, plus the manager's contract."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import optimizer
from optimizer.errors import InvalidInput
from optimizer.ir import Node, Value, VerifyError, format_graph, verify
from optimizer.pass_api import graph_pass
from optimizer.passes import registry
from optimizer.interpreter import Interpreter
from optimizer.ir.weights import WeightStore
from tiny_models import save_tiny


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny("llama", folder)
    return optimizer.import_model(folder)


def _logits(g, ids: torch.Tensor) -> torch.Tensor:
    store = WeightStore()
    ex = Interpreter(g, {n: store.load(w) for n, w in g.weights.items()})
    return ex.step(ids, torch.arange(ids.numel()))


def _with_dead_code(g):
    """The graph plus an unused branch: a linear on the embedding that nothing reads."""
    w = g.weights["model.layers.0.mlp.up_proj.weight"]
    extra = Node.make("linear", ["h"], ["dead"], {"weight": w.name})
    nodes = (g.nodes[0], extra) + g.nodes[1:]
    values = {**g.values, "dead": Value("dead", "float32", ("T", w.shape[0]))}
    return g.replace(nodes=nodes, values=values)


def test_dce_structural(graph) -> None:
    dirty = _with_dead_code(graph)
    verify(dirty)
    assert "%dead" in format_graph(dirty)
    clean = optimizer.PassManager(["dce"]).run(dirty)
    assert format_graph(clean).replace("pipeline", "") == format_graph(graph)
    assert "%dead" not in format_graph(clean)


def test_dce_drops_unused_weights(graph) -> None:
    head = graph.nodes[-1]
    # Cut the graph after the embedding: everything else, and its weights, is dead.
    cut = graph.replace(outputs=(graph.nodes[0].outputs[0],))
    out = optimizer.PassManager(["dce"]).run(cut)
    assert [n.op for n in out.nodes] == ["embedding"]
    assert list(out.weights) == ["model.embed_tokens.weight"]
    assert head.weight("weight") not in out.weights


def test_dce_numerical(graph) -> None:
    ids = torch.randint(0, 96, (7,), generator=torch.Generator().manual_seed(3))
    before = _logits(_with_dead_code(graph), ids)
    after = _logits(optimizer.PassManager(["dce"]).run(_with_dead_code(graph)), ids)
    assert torch.equal(before, after)


def test_cast_weights_structural(graph) -> None:
    out = optimizer.PassManager(["cast-weights:dtype=bfloat16"]).run(graph)
    text = format_graph(out)
    assert "float32[" not in text.split("weights (")[1]
    assert "|> cast(bfloat16)" in text
    assert out.weight_bytes * 2 == graph.weight_bytes
    assert [n for n in out.nodes] == [n for n in graph.nodes]


def test_cast_weights_numerical(graph) -> None:
    """Same logits as the float32 graph run on weights rounded to bfloat16 by torch."""
    ids = torch.randint(0, 96, (7,), generator=torch.Generator().manual_seed(4))
    store = WeightStore()
    rounded = {n: store.load(w).to(torch.bfloat16).float() for n, w in graph.weights.items()}
    ref = Interpreter(graph, rounded).step(ids, torch.arange(7))
    out = optimizer.PassManager(["cast-weights:dtype=bfloat16"]).run(graph)
    assert torch.equal(_logits(out, ids), ref)


def test_pipeline_recorded_and_dumped(graph, tmp_path) -> None:
    logs: list[str] = []
    pm = optimizer.PassManager(["dce", "cast-weights:dtype=float16"], dump_ir=tmp_path,
                               log=logs.append)
    out = pm.run(graph)
    assert out.meta["pipeline"] == [{"name": "dce", "options": {}},
                                    {"name": "cast-weights", "options": {"dtype": "float16"}}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00-input.txt", "01-dce.txt", "02-cast-weights.txt"]
    assert "cast(float16)" in (tmp_path / "02-cast-weights.txt").read_text()
    assert [r.name for r in pm.records] == ["dce", "cast-weights"]
    assert "weight bytes" in pm.records[1].summary and len(logs) == 2


@pytest.mark.parametrize("spec,match", [
    ("nosuch", "unknown pass 'nosuch'"),
    ("dce:x=1", "has no option 'x'"),
    ("cast-weights:dtype=int3", "dtype: expected one of"),
    ("cast-weights:dtype", "expected key=value"),
])
def test_bad_pass_specs(spec: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        optimizer.PassManager([spec])


def test_verifier_names_the_pass_that_broke_the_graph(graph) -> None:
    @graph_pass("break-shapes")
    def break_shapes(g, opts):
        """Drop the first node (its output is then used before definition)."""
        return g.replace(nodes=g.nodes[1:])

    reg = {**registry(), "break-shapes": break_shapes}
    with pytest.raises(VerifyError, match="after pass 'break-shapes'.*used before"):
        optimizer.PassManager(["dce", "break-shapes"], registry=reg).run(graph)


def test_verifier_checks_shapes(graph) -> None:
    bad = dict(graph.values)
    bad["l0.q"] = dataclasses.replace(bad["l0.q"], shape=("T", 3))
    with pytest.raises(VerifyError, match="l0.q"):
        verify(graph.replace(values=bad))


def test_graph_is_immutable(graph) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.nodes = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        graph.weights["x"] = None  # type: ignore[index]
