"""The verifier: checks a graph is well formed. The pass manager runs it after every pass.

Checks: every value is defined exactly once (graph input or one node output) before it is
used; every node's op is known and its inputs, weights and attributes satisfy the op's
schema; each output's recorded dtype/shape equals what the schema infers; graph outputs
exist; every weight a node names exists.
"""

from __future__ import annotations

from optimizer.ir.graph import Graph
from optimizer.ir.ops import OPS, OpError


class VerifyError(Exception):
    """The graph is malformed; the message names the node (and the pass, when known)."""


def verify(graph: Graph, after: str | None = None) -> None:
    """Raise `VerifyError` on the first problem found. ``after`` names the pass just run."""
    where = f"after pass '{after}': " if after else ""

    def fail(message: str) -> None:
        raise VerifyError(where + message)

    defined: set[str] = set()
    for name in graph.inputs:
        if name not in graph.values:
            fail(f"graph input %{name} has no value record")
        defined.add(name)
    for i, node in enumerate(graph.nodes):
        label = f"node {i} ({node.op} -> {', '.join('%' + o for o in node.outputs)})"
        rule = OPS.get(node.op)
        if rule is None:
            fail(f"{label}: unknown op '{node.op}'")
        for name in node.inputs:
            if name not in defined:
                fail(f"{label}: input %{name} is used before it is defined")
        weights = {}
        for role, wname in node.weights:
            if wname not in graph.weights:
                fail(f"{label}: weight '{wname}' ({role}) is not in the graph")
            weights[role] = graph.weights[wname]
        try:
            inferred = rule(node, [graph.values[n] for n in node.inputs], weights)
        except OpError as e:
            fail(f"{label}: {e}")
        for name, (dtype, shape) in zip(node.outputs, inferred):
            if name in defined:
                fail(f"{label}: %{name} is defined twice")
            value = graph.values.get(name)
            if value is None:
                fail(f"{label}: output %{name} has no value record")
            elif (value.dtype, tuple(value.shape)) != (dtype, tuple(shape)):
                fail(f"{label}: output %{name} is recorded as {value} but the op gives "
                     f"{dtype}[{','.join(map(str, shape))}]")
            defined.add(name)
    for name in graph.outputs:
        if name not in defined:
            fail(f"graph output %{name} is never defined")
