"""fuse-gate-up: the gated MLP's gate/up projections become one projection and `silu_mul`.

Two rules, in this order:

1. ``fuse-gate-up``. Pattern: ``mul(silu(g), u)`` (either operand order) with g and u each
   a projection. Check: they can be stacked (`fuse_qkv.concat_decline`: same input, op,
   scheme, g_idx...) and g, silu(g) and u have no other readers. Replacement::

       gu = proj_gate_up(x)        # [T, 2F] = x [W_gate; W_up]^T (+ [b_gate; b_up])
       y  = silu_mul(gu)           # [T, F]  = silu(gu[:, :F]) * gu[:, F:]

   Stacking rows is exact (see fuse_qkv), and silu_mul is the same elementwise math.
2. ``fuse-silu-mul``, the fallback for what rule 1 left (e.g. gate and up quantized
   differently, or not projections at all). Pattern: ``mul(silu(a), b)``. Check: silu(a)
   has no other reader. Replacement: ``y = silu_mul2(a, b) = silu(a) * b``, a two-input
   variant that needs no concatenated tensor (no weights are rewritten, nothing copied).
"""

from __future__ import annotations

from optimizer.ir import Graph, Node, Value
from optimizer.pass_api import NoOptions, graph_pass
from optimizer.passes.fuse_qkv import (PROJECTIONS, ROWS, concat_decline, concat_projection,
                                       prefix_of)
from optimizer.passes.rewrite import Context, Edit, Match, Rule, renamed, rewrite


def _silu_mul_match(ctx: Context, i: int) -> Match | None:
    """mul(silu(a), b): roles mul, silu."""
    node = ctx.node(i)
    if node.op != "mul":
        return None
    for value in node.inputs:
        found = ctx.producer_of(value)
        if found and found[1].op == "silu":
            return Match(node.outputs[0], {"mul": i, "silu": found[0]})
    return None


def _other_input(ctx: Context, m: Match) -> str:
    mul, silu = ctx.node(m.nodes["mul"]), ctx.node(m.nodes["silu"])
    rest = list(mul.inputs)
    rest.remove(silu.outputs[0])
    return rest[0]


def _gate_up_match(ctx: Context, i: int) -> Match | None:
    m = _silu_mul_match(ctx, i)
    if m is None:
        return None
    gate = ctx.producer_of(ctx.node(m.nodes["silu"]).inputs[0])
    up = ctx.producer_of(_other_input(ctx, m))
    if not (gate and up and gate[1].op in PROJECTIONS and up[1].op in PROJECTIONS):
        return None
    if gate[0] == up[0]:
        return None
    return Match(m.at, {**m.nodes, "gate": gate[0], "up": up[0]})


def _gate_up_names(ctx: Context, m: Match) -> tuple[str, str]:
    gate = ctx.node(m.nodes["gate"])
    return (renamed(prefix_of(ctx, gate), "gate_proj", "gate_up_proj"),
            renamed(gate.outputs[0], "gate", "gate_up"))


def _gate_up_check(ctx: Context, m: Match) -> str | None:
    gate, up = ctx.node(m.nodes["gate"]), ctx.node(m.nodes["up"])
    reason = concat_decline(ctx, [gate, up], "gate/up projections")
    if reason:
        return reason
    for value in (gate.outputs[0], up.outputs[0], ctx.node(m.nodes["silu"]).outputs[0]):
        if ctx.n_readers(value) != 1:
            return f"%{value} has other readers (it would no longer exist)"
    prefix, out = _gate_up_names(ctx, m)
    clash = [n for n in (out, *(f"{prefix}.{r}" for r in ROWS[gate.op])) if ctx.taken(n)]
    return f"fused name {clash[0]} already exists" if clash else None


def _gate_up_replace(ctx: Context, m: Match) -> Edit:
    gate, up, mul = (ctx.node(m.nodes[r]) for r in ("gate", "up", "mul"))
    prefix, out = _gate_up_names(ctx, m)
    fused, refs = concat_projection(ctx, [gate, up], prefix, out)
    x = ctx.graph.values[gate.inputs[0]]
    width = 2 * ctx.graph.values[mul.outputs[0]].shape[-1]
    act = Node.make("silu_mul", [out], mul.outputs)
    first = min(m.nodes["gate"], m.nodes["up"])
    return Edit({first: (fused,), m.nodes["mul"]: (act,)},
                {out: Value(out, x.dtype, (*x.shape[:-1], width))}, refs)


def _silu_mul_check(ctx: Context, m: Match) -> str | None:
    silu = ctx.node(m.nodes["silu"])
    if ctx.n_readers(silu.outputs[0]) != 1:
        return f"%{silu.outputs[0]} has other readers (it would no longer exist)"
    return None


def _silu_mul_replace(ctx: Context, m: Match) -> Edit:
    mul, silu = ctx.node(m.nodes["mul"]), ctx.node(m.nodes["silu"])
    node = Node.make("silu_mul2", [silu.inputs[0], _other_input(ctx, m)], mul.outputs)
    return Edit({m.nodes["mul"]: (node,)})


RULES = (Rule("fuse-gate-up", _gate_up_match, _gate_up_check, _gate_up_replace),
         Rule("fuse-silu-mul", _silu_mul_match, _silu_mul_check, _silu_mul_replace))


@graph_pass("fuse-gate-up")
def fuse_gate_up(graph: Graph, opts: NoOptions) -> Graph:
    """Fuse gate/up projections into one [T, 2F] projection + silu_mul; else silu_mul2."""
    return rewrite(graph, "fuse-gate-up", RULES)
