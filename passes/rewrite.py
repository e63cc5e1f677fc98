"""Local rewrites as data (STYLE.md 4): a pattern, a check that says why it declined, and a
replacement; `rewrite` applies a rule set to a graph and reports what each rule did.

    Rule(name, match, check, replace)
    match(ctx, i)   -> Match | None   the pattern, anchored at node i (None: not this shape)
    check(ctx, m)   -> str | None     why the rule declines this match (None: go ahead)
    replace(ctx, m) -> Edit           the nodes standing in for the matched ones

The rules of a set run in order, each over the graph the previous one left, so a fallback
rule can follow a stricter one. One rule's matches are all found on the same graph; a match
sharing a node with one already taken is declined ("overlaps ..."). An `Edit` removes every
matched node and inserts new nodes before given indices of the graph it was matched on;
values the removed nodes defined and nothing defines any more, and weights only they read,
are dropped. Replacements place new nodes where their inputs are defined; the verifier
(run by the PassManager after the pass) checks it.

The report, appended to ``graph.meta['rewrites']``::

    {"pass": name, "rules": [{"rule": name, "matched": n, "applied": n,
                              "declined": [{"at": "%value", "reason": "..."}]}]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from optimizer.ir import Graph, Node, Value, WeightRef
from optimizer.ir.scratch import ScratchDir
from optimizer.ir.weights import WeightStore


@dataclass(frozen=True)
class Match:
    """A pattern instance: ``nodes`` role -> node index; ``at`` names it in reports."""

    at: str
    nodes: Mapping[str, int]


@dataclass(frozen=True)
class Edit:
    """New nodes by the index they go before; the values and weights they introduce."""

    insert: Mapping[int, tuple[Node, ...]]
    values: Mapping[str, Value] = field(default_factory=dict)
    weights: Mapping[str, WeightRef] = field(default_factory=dict)


class Context:
    """What rules see: the graph, producers and readers of values, weight loading and the
    scratch directory for tensors a replacement computes."""

    def __init__(self, graph: Graph, store: WeightStore, scratch: list[ScratchDir],
                 prefix: str) -> None:
        self.graph = graph
        self.store = store
        self._scratch = scratch         # shared by the pass's rules; made on first write
        self._prefix = prefix
        self.producer = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs}
        self.users = graph.users()

    def node(self, i: int) -> Node:
        return self.graph.nodes[i]

    def producer_of(self, value: str) -> tuple[int, Node] | None:
        i = self.producer.get(value)
        return None if i is None else (i, self.graph.nodes[i])

    def n_readers(self, value: str) -> int:
        """Nodes reading ``value``, plus one if it is a graph output."""
        return len(self.users.get(value, [])) + (value in self.graph.outputs)

    def load(self, weight: str) -> torch.Tensor:
        return self.store.load(self.graph.weights[weight])

    def write(self, tensors: dict[str, torch.Tensor]) -> dict[str, WeightRef]:
        """Store computed tensors (one scratch file per call); their lazy handles."""
        if not tensors:
            return {}
        if not self._scratch:
            self._scratch.append(ScratchDir(prefix=self._prefix))
        return self._scratch[0].write(tensors)

    def taken(self, name: str) -> bool:
        """Is ``name`` already a value or weight of the graph?"""
        return name in self.graph.values or name in self.graph.weights


@dataclass(frozen=True)
class Rule:
    name: str
    match: Callable[[Context, int], Match | None]
    check: Callable[[Context, Match], str | None]
    replace: Callable[[Context, Match], Edit]


def renamed(name: str, old: str, new: str) -> str:
    """``a.b.old`` -> ``a.b.new``; any other last component -> ``name_new``."""
    head, dot, last = name.rpartition(".")
    return f"{head}{dot}{new}" if last == old else f"{name}_{new}"


def _apply(graph: Graph, edits: list[tuple[Match, Edit]]) -> Graph:
    removed = {i for m, _ in edits for i in m.nodes.values()}
    inserts: dict[int, list[Node]] = {}
    for _, e in edits:
        for i, new in e.insert.items():
            inserts.setdefault(i, []).extend(new)
    nodes: list[Node] = []
    for i, node in enumerate(graph.nodes):
        nodes += inserts.get(i, [])
        if i not in removed:
            nodes.append(node)
    defined = set(graph.inputs) | {o for n in nodes for o in n.outputs}
    used = {w for n in nodes for _, w in n.weights}
    gone_values = {o for i in removed for o in graph.nodes[i].outputs} - defined
    gone_weights = {w for i in removed for _, w in graph.nodes[i].weights} - used
    values = {**graph.values, **{k: v for _, e in edits for k, v in e.values.items()}}
    weights = {**graph.weights, **{k: w for _, e in edits for k, w in e.weights.items()}}
    return graph.replace(
        nodes=tuple(nodes),
        values={k: v for k, v in values.items() if k not in gone_values},
        weights={k: w for k, w in weights.items() if k not in gone_weights})


def rewrite(graph: Graph, pass_name: str, rules: Sequence[Rule]) -> Graph:
    """Apply ``rules`` in order (see the module docstring); record the report in meta."""
    store = WeightStore()
    scratch: list[ScratchDir] = []      # made on the first write
    report = []
    for rule in rules:
        ctx = Context(graph, store, scratch, f"optimizer-{pass_name}-")
        entry: dict = {"rule": rule.name, "matched": 0, "applied": 0, "declined": []}
        taken: set[int] = set()
        edits: list[tuple[Match, Edit]] = []
        for i in range(len(graph.nodes)):
            m = rule.match(ctx, i)
            if m is None:
                continue
            entry["matched"] += 1
            nodes = set(m.nodes.values())
            reason = ("overlaps a match already rewritten by this rule" if nodes & taken
                      else rule.check(ctx, m))
            if reason is not None:
                entry["declined"].append({"at": f"%{m.at}", "reason": reason})
                continue
            taken |= nodes
            edits.append((m, rule.replace(ctx, m)))
            entry["applied"] += 1
        graph = _apply(graph, edits) if edits else graph
        report.append(entry)
    if scratch:   # only applied edits write, so the new weights live there
        graph = graph.replace(resources=graph.resources + tuple(scratch))
    return graph.with_meta(rewrites=[*graph.meta.get("rewrites", []),
                                     {"pass": pass_name, "rules": report}])
