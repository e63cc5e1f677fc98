"""Dead-code elimination: drop nodes whose outputs nothing reads, then unused weights."""

from __future__ import annotations

from optimizer.ir import Graph
from optimizer.pass_api import NoOptions, graph_pass


@graph_pass("dce")
def dce(graph: Graph, opts: NoOptions) -> Graph:
    """Remove nodes that do not contribute to a graph output, and weights no node uses."""
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    kept.reverse()
    used = {w for n in kept for _, w in n.weights}
    defined = set(graph.inputs) | {o for n in kept for o in n.outputs}
    return graph.replace(
        nodes=tuple(kept),
        values={k: v for k, v in graph.values.items() if k in defined},
        weights={k: w for k, w in graph.weights.items() if k in used})
