"""fuse-rope-qk: after fuse-qkv, the q and k RoPEs become one `rope_qk` on the fused tensor.

Pattern: ``q, k, v = split(qkv)`` (3 outputs) with ``q' = rope(q)`` and ``k' = rope(k)``.
Replacement, at the split::

    r = rope_qk(qkv, positions) {n_heads=Hq, n_kv_heads=Hk, head_dim=D, theta, scaling}
    q', k', v = split(r) {sizes}

RoPE acts on each head alone (``y = x cos(p f) + rotate_half(x) sin(p f)`` per D-wide head),
so rotating heads 0..Hq+Hk-1 of qkv at once and passing the v columns through gives the
same numbers as the two ropes, and RoPE is applied where q/k are produced.

Declines: q or k has readers besides its rope, the two ropes differ in positions, head_dim,
theta or scaling, or the split's sizes are not (Hq D, Hk D, Hk D).
"""

from __future__ import annotations

from optimizer.ir import Graph, Node, Value
from optimizer.pass_api import NoOptions, graph_pass
from optimizer.passes.rewrite import Context, Edit, Match, Rule, renamed, rewrite

SHARED = ("head_dim", "theta", "scaling")


def _rope_reader(ctx: Context, value: str) -> int | None:
    return next((j for j in ctx.users.get(value, []) if ctx.node(j).op == "rope"), None)


def _match(ctx: Context, i: int) -> Match | None:
    node = ctx.node(i)
    if node.op != "split" or len(node.outputs) != 3:
        return None
    q, k = (_rope_reader(ctx, v) for v in node.outputs[:2])
    if q is None or k is None:
        return None
    return Match(node.inputs[0], {"split": i, "q": q, "k": k})


def _out(ctx: Context, m: Match) -> str:
    return renamed(ctx.node(m.nodes["split"]).inputs[0], "qkv", "qkv_rot")


def _check(ctx: Context, m: Match) -> str | None:
    split, q, k = (ctx.node(m.nodes[r]) for r in ("split", "q", "k"))
    for value in split.outputs[:2]:
        if ctx.n_readers(value) != 1:
            return f"%{value} has readers besides its rope"
    if q.inputs[1] != k.inputs[1]:
        return f"q/k ropes read different positions (%{q.inputs[1]}, %{k.inputs[1]})"
    pos = ctx.producer.get(q.inputs[1], -1)
    if pos > m.nodes["split"]:
        return f"%{q.inputs[1]} is defined after the split"
    for key in SHARED:
        if q.attr(key) != k.attr(key):
            return f"q/k ropes differ in {key} ({q.attr(key)} vs {k.attr(key)})"
    d, sizes = q.attr("head_dim"), split.attr("sizes")
    want = (q.attr("n_heads") * d, k.attr("n_heads") * d, k.attr("n_heads") * d)
    if tuple(sizes) != want:
        return f"split sizes {tuple(sizes)} are not (Hq*D, Hk*D, Hk*D) = {want}"
    return f"fused name {_out(ctx, m)} already exists" if ctx.taken(_out(ctx, m)) else None


def _replace(ctx: Context, m: Match) -> Edit:
    split, q, k = (ctx.node(m.nodes[r]) for r in ("split", "q", "k"))
    out = _out(ctx, m)
    attrs = {key: q.attr(key) for key in SHARED}
    rot = Node.make("rope_qk", [split.inputs[0], q.inputs[1]], [out], attrs={
        **attrs, "n_heads": q.attr("n_heads"), "n_kv_heads": k.attr("n_heads")})
    new_split = Node(op="split", inputs=(out,),
                     outputs=(q.outputs[0], k.outputs[0], split.outputs[2]),
                     attrs=split.attrs)
    src = ctx.graph.values[split.inputs[0]]
    return Edit({m.nodes["split"]: (rot, new_split)}, {out: Value(out, src.dtype, src.shape)})


RULES = (Rule("fuse-rope-qk", _match, _check, _replace),)


@graph_pass("fuse-rope-qk")
def fuse_rope_qk(graph: Graph, opts: NoOptions) -> Graph:
    """Fuse the q/k ropes after a fused qkv projection into one rope_qk on the fused tensor."""
    return rewrite(graph, "fuse-rope-qk", RULES)
