"""fuse-add-rmsnorm: a residual add feeding an RMSNorm becomes one two-output op.

Pattern: ``n = rms_norm(s) {eps; weight}`` with ``s = add(x, y)``. Replacement, at the add::

    s, n = add_rms_norm(x, y) {eps; weight}     # s = x + y,  n = weight * s / rms(s)

keeping both names, so every reader of s (the next residual add) and of n is untouched.
The arithmetic is the add and kernels/rms_norm/reference.py in the same order: exact.

In a Llama layer this takes the add before the post-attention norm and the add before the
next layer's input norm (the last layer's before the final norm; there s has no other
reader, and a kernel may skip writing it). The first layer's input norm reads the
embedding and stays ``rms_norm``. An add read by two norms is fused with the first; the
second match is declined as overlapping.
"""

from __future__ import annotations

from optimizer.ir import Graph, Node
from optimizer.pass_api import NoOptions, graph_pass
from optimizer.passes.rewrite import Context, Edit, Match, Rule, rewrite


def _match(ctx: Context, i: int) -> Match | None:
    node = ctx.node(i)
    if node.op != "rms_norm":
        return None
    found = ctx.producer_of(node.inputs[0])
    if not found or found[1].op != "add":
        return None
    return Match(node.outputs[0], {"add": found[0], "norm": i})


def _check(ctx: Context, m: Match) -> str | None:
    """Nothing to decline beyond the pattern: the sum keeps its name for other readers."""
    return None


def _replace(ctx: Context, m: Match) -> Edit:
    add, norm = ctx.node(m.nodes["add"]), ctx.node(m.nodes["norm"])
    fused = Node(op="add_rms_norm", inputs=add.inputs,
                 outputs=(add.outputs[0], norm.outputs[0]),
                 weights=norm.weights, attrs=norm.attrs)
    return Edit({m.nodes["add"]: (fused,)})


RULES = (Rule("fuse-add-rmsnorm", _match, _check, _replace),)


@graph_pass("fuse-add-rmsnorm")
def fuse_add_rmsnorm(graph: Graph, opts: NoOptions) -> Graph:
    """Fuse add + rms_norm into add_rms_norm (two outputs: the sum and its norm)."""
    return rewrite(graph, "fuse-add-rmsnorm", RULES)
