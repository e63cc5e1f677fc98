"""`PassManager`: runs a list of passes, verifying the graph after each one.

    PassManager(["dce", "cast-weights:dtype=bfloat16"]).run(graph)

For every pass it records the name and options in ``graph.meta['pipeline']`` (which the
artifact's manifest keeps), times it, summarises what changed, and with ``dump_ir`` writes
the graph's text form after it. New passes plug in through `optimizer.passes.registry()`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from optimizer.errors import InvalidInput
from optimizer.ir import Graph, format_graph, verify
from optimizer.pass_api import GraphPass, parse_pass_spec


@dataclass(frozen=True)
class PassRecord:
    name: str
    options: dict[str, Any]
    seconds: float
    summary: str


def summarize(before: Graph, after: Graph) -> str:
    """One line on what changed: node counts by op, weights, bytes."""
    ops_b, ops_a = Counter(n.op for n in before.nodes), Counter(n.op for n in after.nodes)
    parts = [f"{op} {ops_b[op]}->{ops_a[op]}" for op in sorted(ops_b | ops_a)
             if ops_b[op] != ops_a[op]]
    if len(before.weights) != len(after.weights):
        parts.append(f"weights {len(before.weights)}->{len(after.weights)}")
    if before.weight_bytes != after.weight_bytes:
        parts.append(f"weight bytes {before.weight_bytes / 2**20:.1f}->"
                     f"{after.weight_bytes / 2**20:.1f} MiB")
    return ", ".join(parts) or "no change"


class PassManager:
    def __init__(self, passes: Sequence[str | tuple[str, dict[str, Any]]],
                 dump_ir: str | Path | None = None,
                 log: Callable[[str], None] | None = None,
                 registry: dict[str, GraphPass] | None = None) -> None:
        if registry is None:
            from optimizer.passes import registry as default_registry
            registry = default_registry()
        self.steps: list[tuple[GraphPass, Any]] = []
        for spec in passes:
            name, raw = parse_pass_spec(spec) if isinstance(spec, str) else spec
            if name not in registry:
                raise InvalidInput(None, f"unknown pass '{name}' "
                                         f"(known: {', '.join(sorted(registry))})")
            p = registry[name]
            self.steps.append((p, p.make_options(raw)))
        self.dump_ir = Path(dump_ir) if dump_ir else None
        self.log = log
        self.records: list[PassRecord] = []

    def _dump(self, index: int, name: str, graph: Graph) -> None:
        if self.dump_ir:
            self.dump_ir.mkdir(parents=True, exist_ok=True)
            (self.dump_ir / f"{index:02d}-{name}.txt").write_text(format_graph(graph))

    def run(self, graph: Graph) -> Graph:
        verify(graph, after="import")
        self._dump(0, "input", graph)
        pipeline = list(graph.meta.get("pipeline", []))
        for i, (p, opts) in enumerate(self.steps, 1):
            start = time.perf_counter()
            new = p.fn(graph, opts)
            verify(new, after=p.name)
            seconds = time.perf_counter() - start
            options = dataclasses.asdict(opts)
            pipeline.append({"name": p.name, "options": options})
            new = new.with_meta(pipeline=list(pipeline))
            record = PassRecord(p.name, options, seconds, summarize(graph, new))
            self.records.append(record)
            if self.log:
                self.log(f"pass {p.name}: {record.summary} ({seconds * 1000:.0f} ms)")
            self._dump(i, p.name, new)
            graph = new
        return graph
