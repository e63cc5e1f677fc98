"""The text form of a graph (``optimize inspect --ir``, ``--dump-ir``)."""

from __future__ import annotations

from optimizer.ir.graph import Graph, Node


def _fmt_attr(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def format_node(graph: Graph, node: Node) -> str:
    outs = ", ".join(f"%{o}: {graph.values[o]}" for o in node.outputs)
    args = [f"%{i}" for i in node.inputs] + [f"{r}=@{w}" for r, w in node.weights]
    attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in node.attrs)
    return f"{outs} = {node.op}({', '.join(args)})" + (f" {{{attrs}}}" if attrs else "")


def format_graph(graph: Graph, weights: bool = True) -> str:
    ins = ", ".join(f"%{n}: {graph.values[n]}" for n in graph.inputs)
    outs = ", ".join(f"%{n}" for n in graph.outputs)
    lines = [f"graph({ins}) -> ({outs}) {{"]
    lines += ["  " + format_node(graph, n) for n in graph.nodes]
    lines.append("}")
    if weights:
        lines.append(f"weights ({len(graph.weights)}, {graph.n_params:,} params, "
                     f"{graph.weight_bytes / 2**20:.1f} MiB):")
        for name in sorted(graph.weights):
            w = graph.weights[name]
            shape = ",".join(map(str, w.shape))
            tr = "".join(f" |> {t}" for t in w.transforms)
            lines.append(f"  @{name}: {w.dtype}[{shape}] <- {w.fmt}:{w.key}{tr}")
    return "\n".join(lines) + "\n"
