"""fuse-qkv: the q, k and v projections of an attention become one projection and a split.

Pattern: ``attention(q', k', v)`` with ``q' = rope(q)`` or ``q`` (same for k), where q, k, v
are each a projection (``linear``, ``qlinear`` or ``qlinear_w8a8``). Replacement::

    qkv = proj_qkv(x)                      # [T, (Hq + 2 Hk) D]
    q, k, v = split(qkv) {sizes=(Hq D, Hk D, Hk D)}

keeping the names of q, k, v, so the rope and attention nodes are untouched. Stacking the
output rows is exact for every projection kind, because output row n of each depends only
on row n of its tensors and on what all rows share:

- linear: ``[y_q | y_k | y_v] = x [W_q; W_k; W_v]^T + [b_q; b_k; b_v]`` (a missing bias is
  a zero block);
- qlinear: ``W[n, k] = (Q[n, k] - Z[n, g(k)]) S[n, g(k)]``; qweight packs each row's codes
  into its own ceil(K*bits/8) bytes (padding per row), scales/zeros are [N, G], so stacking
  qweight, scales and zeros along N stacks W, provided bits, group_size, in_features, sym and
  the column-to-group map g (``g_idx``, shared by all rows) are the same. Act-order GPTQ
  gives each projection its own g_idx: declined;
- qlinear_w8a8: ``y[t, n] = (x_q W_q^T)[t, n] s_x[t] s_w[n] + b[n]``; x_q and s_x depend on
  x only, so qweight and scales stack along N.

Declines (reported in ``meta['rewrites']``): the projections read different values, differ
in op, in quantization scheme, in which optional tensors they carry, in dtypes, or in g_idx.
`concat_decline` / `concat_projection` are shared with fuse-gate-up.
"""

from __future__ import annotations

import torch

from optimizer.ir import Graph, Node, Value, WeightRef
from optimizer.pass_api import NoOptions, graph_pass
from optimizer.passes.rewrite import Context, Edit, Match, Rule, renamed, rewrite

PROJECTIONS = ("linear", "qlinear", "qlinear_w8a8")
MAIN = {"linear": "weight", "qlinear": "qweight", "qlinear_w8a8": "qweight"}
ROWS = {"linear": ("weight", "bias"),                    # roles stacked along N
        "qlinear": ("qweight", "scales", "zeros", "bias"),
        "qlinear_w8a8": ("qweight", "scales", "bias")}
SCHEME = {"linear": (), "qlinear": ("bits", "group_size", "in_features", "sym"),
          "qlinear_w8a8": ()}


def out_rows(ctx: Context, node: Node) -> int:
    return ctx.graph.weights[node.weight(MAIN[node.op])].shape[0]


def _differ(values: list[object]) -> bool:
    return len(set(values)) > 1


def concat_decline(ctx: Context, nodes: list[Node], what: str) -> str | None:
    """Why the projections ``nodes`` cannot become one by stacking output rows, or None."""
    slash = "/".join
    if _differ([n.inputs[0] for n in nodes]):
        return f"{what} read different values ({slash('%' + n.inputs[0] for n in nodes)})"
    ops = [n.op for n in nodes]
    if _differ(ops):
        return f"{what} differ in op ({slash(ops)})"
    op = ops[0]
    for key in SCHEME[op]:
        if _differ([n.attr(key) for n in nodes]):
            return (f"{what} differ in quantization scheme: {key} "
                    f"{slash(str(n.attr(key)) for n in nodes)}")
    for role in ROWS[op] + (("g_idx",) if op == "qlinear" else ()):
        names = [n.weight(role) for n in nodes]
        if role != "bias" and _differ([w is None for w in names]):
            return f"{what}: only some carry {role}"
        refs = [ctx.graph.weights[w] for w in names if w is not None]
        if _differ([r.dtype for r in refs]):
            return f"{what} differ in {role} dtype ({slash(r.dtype for r in refs)})"
        if role != "g_idx" and _differ([r.shape[1:] for r in refs]):
            return f"{what} differ in {role} columns ({slash(str(r.shape) for r in refs)})"
    g_idx = [n.weight("g_idx") for n in nodes]
    if g_idx[0] is not None and _differ(g_idx):
        first = ctx.load(g_idx[0])
        if not all(torch.equal(first, ctx.load(g)) for g in g_idx[1:]):
            return (f"{what} have different g_idx (act-order gives each its own column "
                    "order; one stacked qweight needs one shared g_idx)")
    return None


def concat_projection(ctx: Context, nodes: list[Node], prefix: str,
                      out: str) -> tuple[Node, dict[str, WeightRef]]:
    """One projection ``out = x @ [W_0; W_1; ...]^T`` (+ stacked bias) whose tensors, named
    ``{prefix}.{role}``, are written to scratch. Precondition: `concat_decline` gave None."""
    op = nodes[0].op
    tensors: dict[str, torch.Tensor] = {}
    for role in ROWS[op]:
        names = [n.weight(role) for n in nodes]
        if all(w is None for w in names):
            continue
        like = ctx.load(next(w for w in names if w is not None))
        parts = [ctx.load(w) if w is not None else torch.zeros(out_rows(ctx, n), dtype=like.dtype)
                 for n, w in zip(nodes, names)]
        tensors[f"{prefix}.{role}"] = torch.cat(parts, 0)
    refs = ctx.write(tensors)
    roles = {name.rsplit(".", 1)[1]: name for name in refs}
    if nodes[0].weight("g_idx") is not None:
        roles["g_idx"] = nodes[0].weight("g_idx")        # shared, checked equal
    attrs = dict(nodes[0].attrs)
    methods = sorted({str(n.attr("method")) for n in nodes if n.attr("method") is not None})
    if len(methods) > 1:
        attrs["method"] = "+".join(methods)
    return Node.make(op, nodes[0].inputs, [out], roles, attrs), refs


def prefix_of(ctx: Context, node: Node) -> str:
    """``model.layers.0.self_attn.q_proj`` from the node's main weight name."""
    return node.weight(MAIN[node.op]).rsplit(".", 1)[0]


def _projection(ctx: Context, value: str, through_rope: bool) -> int | None:
    found = ctx.producer_of(value)
    if found and through_rope and found[1].op == "rope":
        found = ctx.producer_of(found[1].inputs[0])
    return found[0] if found and found[1].op in PROJECTIONS else None


def _match(ctx: Context, i: int) -> Match | None:
    node = ctx.node(i)
    if node.op != "attention":
        return None
    idx = [_projection(ctx, v, rope) for v, rope in zip(node.inputs[:3], (True, True, False))]
    if None in idx or len(set(idx)) != 3:
        return None
    return Match(node.outputs[0], dict(zip(("q", "k", "v"), idx)))


def _names(ctx: Context, m: Match) -> tuple[str, str]:
    q = ctx.node(m.nodes["q"])
    return (renamed(prefix_of(ctx, q), "q_proj", "qkv_proj"),
            renamed(q.outputs[0], "q", "qkv"))


def _check(ctx: Context, m: Match) -> str | None:
    nodes = [ctx.node(m.nodes[r]) for r in ("q", "k", "v")]
    reason = concat_decline(ctx, nodes, "q/k/v projections")
    if reason:
        return reason
    prefix, out = _names(ctx, m)
    clash = [n for n in (out, *(f"{prefix}.{r}" for r in ROWS[nodes[0].op])) if ctx.taken(n)]
    return f"fused name {clash[0]} already exists" if clash else None


def _replace(ctx: Context, m: Match) -> Edit:
    nodes = [ctx.node(m.nodes[r]) for r in ("q", "k", "v")]
    prefix, out = _names(ctx, m)
    fused, refs = concat_projection(ctx, nodes, prefix, out)
    sizes = tuple(out_rows(ctx, n) for n in nodes)
    x = ctx.graph.values[nodes[0].inputs[0]]
    split = Node.make("split", [out], [n.outputs[0] for n in nodes], attrs={"sizes": sizes})
    value = Value(out, x.dtype, (*x.shape[:-1], sum(sizes)))
    return Edit({min(m.nodes.values()): (fused, split)}, {out: value}, refs)


RULES = (Rule("fuse-qkv", _match, _check, _replace),)


@graph_pass("fuse-qkv")
def fuse_qkv(graph: Graph, opts: NoOptions) -> Graph:
    """Fuse each attention's q/k/v projections into one projection followed by a split."""
    return rewrite(graph, "fuse-qkv", RULES)
