"""Graph <-> JSON (the artifact's ``graph.json``). Attribute tuples become lists and come
back as tuples; weight handles keep their file relative to the artifact directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimizer.ir.graph import Graph, Node, Transform, Value, WeightRef


def _tuples(x: Any) -> Any:
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


def _lists(x: Any) -> Any:
    return [_lists(i) for i in x] if isinstance(x, tuple) else x


def graph_to_json(graph: Graph) -> dict[str, Any]:
    return {
        "inputs": list(graph.inputs),
        "outputs": list(graph.outputs),
        "values": [[v.name, v.dtype, list(v.shape)] for v in graph.values.values()],
        "nodes": [{"op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
                   "weights": dict(n.weights), "attrs": {k: _lists(v) for k, v in n.attrs}}
                  for n in graph.nodes],
        "weights": [{"name": w.name, "dtype": w.dtype, "shape": list(w.shape), "file": w.file,
                     "key": w.key, "fmt": w.fmt,
                     "transforms": [[t.op, list(t.args)] for t in w.transforms]}
                    for w in (graph.weights[k] for k in sorted(graph.weights))],
        "meta": {k: v for k, v in graph.meta.items() if k != "tokenizer"},
    }


def graph_from_json(d: dict[str, Any], base: Path) -> Graph:
    """Inverse of `graph_to_json`; relative weight files are resolved against ``base``."""
    weights = {}
    for w in d["weights"]:
        weights[w["name"]] = WeightRef(
            w["name"], w["dtype"], tuple(w["shape"]), str(base / w["file"]), w["key"],
            w["fmt"], tuple(Transform(op, tuple(args)) for op, args in w["transforms"]))
    return Graph(
        inputs=tuple(d["inputs"]), outputs=tuple(d["outputs"]),
        nodes=tuple(Node(n["op"], tuple(n["inputs"]), tuple(n["outputs"]),
                         tuple(sorted(n["weights"].items())),
                         tuple(sorted((k, _tuples(v)) for k, v in n["attrs"].items())))
                    for n in d["nodes"]),
        values={name: Value(name, dtype, tuple(shape)) for name, dtype, shape in d["values"]},
        weights=weights, meta=d["meta"])
