"""Op schemas: for each op, the shape/dtype rule the verifier checks.

Ops are coarse, transformer-level. ``T`` is the symbolic token count of one step.

===========  ==========================  ===============  ===============================
op           inputs                      weights          output
===========  ==========================  ===============  ===============================
embedding    ids int64[T]                weight [V, H]    [T, H]
rms_norm     x [T, H]                    weight [H]       [T, H]   x / rms(x) * weight
linear       x [T, K]                    weight [N, K],   [T, N]   x @ weight.T + bias
                                         bias? [N]
rope         x [T, n*D], positions[T]    -                [T, n*D] rotate-half RoPE
attention    q [T, Hq*D], k, v [T, Hk*D] -                [T, Hq*D] causal, KV cached
             positions int64[T]
qlinear      x [T, K]                    qweight, scales, [T, N]   weight-only quantized
                                         zeros?, g_idx?,  (kernels/qlinear/reference.py)
                                         bias?
qlinear_w8a8 x [T, K]                    qweight int8     [T, N]   W8A8, dynamic per-token
                                         [N,K], scales    int8 activations
                                         [N], bias?       (kernels/w8a8/reference.py)
silu         x                           -                x * sigmoid(x)
mul, add     x, y (same shape)           -                elementwise
===========  ==========================  ===============  ===============================

Fused ops (made by the fusion passes, ``passes/fuse_*.py``; several outputs where noted):

============  =========================  ==========  ======================================
op            inputs                     weights     outputs
============  =========================  ==========  ======================================
split         x [T, sum(sizes)]          -           one [T, s] per s in attr ``sizes``,
                                                     consecutive column slices of x
silu_mul      x [T, 2F]                  -           [T, F] silu(x[:, :F]) * x[:, F:]
silu_mul2     a, b [T, F]                -           [T, F] silu(a) * b (no concatenation)
add_rms_norm  x, y (same shape [T, H])   weight [H]  s = x + y [T, H], rms_norm(s) [T, H]
rope_qk       x [T, (Hq + 2 Hk) D],      -           [T, (Hq + 2 Hk) D]: RoPE on the first
              positions int64[T]                     (Hq + Hk) heads (q, k), v unchanged
============  =========================  ==========  ======================================

Kernel-layout ops (made at build time by ``passes/cuda_layout.py`` for ``--target cuda``; the
weights are already in the GPU kernel's layout, so loading does no repacking):

============  =========================  ===================  =============================
op            inputs                     weights              output
============  =========================  ===================  =============================
w4a16_linear  x [T, K]                   qweight int32        [T, N] = x @ W^T + bias, W the
                                         [KP/8, N], sz int32  int4 weight described in
                                         [G, N], perm? int64  kernels/w4a16/layout.py
                                         [KP], bias? [N]      (attr in_features = K)
============  =========================  ===================  =============================
"""

from __future__ import annotations

from typing import Callable

from optimizer.ir.graph import Dim, Node, Value, WeightRef

Signature = tuple[str, tuple[Dim, ...]]
Rule = Callable[[Node, list[Value], dict[str, WeightRef]], list[Signature]]


class OpError(ValueError):
    """A node does not satisfy its op's schema."""


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise OpError(message)


def _arity(node: Node, n_in: int, roles: set[str], optional: set[str] = frozenset(),
           n_out: int = 1) -> None:
    _need(len(node.inputs) == n_in, f"expects {n_in} inputs, has {len(node.inputs)}")
    have = {r for r, _ in node.weights}
    _need(roles <= have <= roles | optional,
          f"expects weights {sorted(roles)} (optional {sorted(optional)}), has {sorted(have)}")
    _need(len(node.outputs) == n_out, f"expects {n_out} output(s), has {len(node.outputs)}")


def _embedding(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 1, {"weight"})
    _need(ins[0].dtype in ("int64", "int32"), f"ids must be integer, got {ins[0].dtype}")
    _need(len(ins[0].shape) == 1, f"ids must be 1-D, got {ins[0]}")
    _need(len(w["weight"].shape) == 2, "weight must be 2-D")
    return [(node.attr("dtype", "float32"), (ins[0].shape[0], w["weight"].shape[1]))]


def _rms_norm(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 1, {"weight"})
    _need(w["weight"].shape == (ins[0].shape[-1],),
          f"weight {w['weight'].shape} does not match input {ins[0]}")
    _need(node.attr("eps") is not None, "missing attribute eps")
    return [(ins[0].dtype, ins[0].shape)]


def _linear(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 1, {"weight"}, {"bias"})
    n, k = w["weight"].shape
    _need(ins[0].shape[-1] == k, f"input {ins[0]} does not match weight [{n},{k}]")
    if "bias" in w:
        _need(w["bias"].shape == (n,), f"bias {w['bias'].shape} does not match [{n}]")
    return [(ins[0].dtype, (*ins[0].shape[:-1], n))]


def _qlinear(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 1, {"qweight", "scales"}, {"zeros", "g_idx", "bias"})
    bits, group, k = node.attr("bits"), node.attr("group_size"), node.attr("in_features")
    _need(bits in (2, 3, 4, 8), f"bits must be 2, 3, 4 or 8, got {bits}")
    _need(isinstance(group, int) and group >= 0, f"group_size must be an int >= 0, got {group}")
    _need(ins[0].shape[-1] == k, f"input {ins[0]} does not match in_features {k}")
    qw, sc = w["qweight"], w["scales"]
    n = qw.shape[0]
    _need(qw.dtype == "uint8" and qw.shape == (n, (k * bits + 7) // 8),
          f"qweight must be uint8 [{n}, {(k * bits + 7) // 8}], got {qw.dtype}{list(qw.shape)}")
    groups = (k + group - 1) // group if group else 1
    if "g_idx" in w:
        _need(w["g_idx"].shape == (k,) and w["g_idx"].dtype == "int32",
              f"g_idx must be int32 [{k}], got {w['g_idx'].dtype}{list(w['g_idx'].shape)}")
        groups = sc.shape[1] if len(sc.shape) == 2 else -1
    _need(sc.shape == (n, groups) and sc.dtype == "float16",
          f"scales must be float16 [{n}, {groups}], got {sc.dtype}{list(sc.shape)}")
    if "zeros" in w:
        _need(w["zeros"].shape == sc.shape and w["zeros"].dtype == "uint8",
              f"zeros must be uint8 {list(sc.shape)}, got {w['zeros'].dtype}"
              f"{list(w['zeros'].shape)}")
    if "bias" in w:
        _need(w["bias"].shape == (n,), f"bias {w['bias'].shape} does not match [{n}]")
    return [(ins[0].dtype, (*ins[0].shape[:-1], n))]


def _qlinear_w8a8(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 1, {"qweight", "scales"}, {"bias"})
    qw, sc = w["qweight"], w["scales"]
    _need(qw.dtype == "int8" and len(qw.shape) == 2, f"qweight must be 2-D int8, got {qw.dtype}")
    n, k = qw.shape
    _need(ins[0].shape[-1] == k, f"input {ins[0]} does not match qweight [{n},{k}]")
    _need(sc.shape == (n,), f"scales must be [{n}], got {list(sc.shape)}")
    if "bias" in w:
        _need(w["bias"].shape == (n,), f"bias {w['bias'].shape} does not match [{n}]")
    return [(ins[0].dtype, (*ins[0].shape[:-1], n))]


def _w4a16_linear(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 1, {"qweight", "sz"}, {"perm", "bias"})
    qw, sz, k = w["qweight"], w["sz"], node.attr("in_features")
    _need(isinstance(k, int) and k > 0, f"in_features must be a positive int, got {k}")
    _need(ins[0].shape[-1] == k, f"input {ins[0]} does not match in_features {k}")
    _need(qw.dtype == "int32" and len(qw.shape) == 2,
          f"qweight must be 2-D int32, got {qw.dtype}{list(qw.shape)}")
    kp, n = qw.shape[0] * 8, qw.shape[1]
    _need(kp % 128 == 0 and kp >= k, f"qweight holds {kp} rows: not a multiple of 128 >= {k}")
    _need(sz.dtype == "int32" and len(sz.shape) == 2 and sz.shape[1] == n
          and kp % sz.shape[0] == 0,
          f"sz must be int32 [G, {n}] with G dividing {kp}, got {sz.dtype}{list(sz.shape)}")
    if "perm" in w:
        _need(w["perm"].shape == (kp,) and w["perm"].dtype == "int64",
              f"perm must be int64 [{kp}], got {w['perm'].dtype}{list(w['perm'].shape)}")
    if "bias" in w:
        _need(w["bias"].shape == (n,), f"bias {w['bias'].shape} does not match [{n}]")
    return [(ins[0].dtype, (*ins[0].shape[:-1], n))]


def _rope(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 2, set())
    x, pos = ins
    n, d = node.attr("n_heads"), node.attr("head_dim")
    _need(isinstance(n, int) and isinstance(d, int) and d % 2 == 0,
          f"n_heads/head_dim must be ints with even head_dim, got {n}/{d}")
    _need(x.shape[-1] == n * d, f"input {x} is not n_heads*head_dim = {n * d} wide")
    _need(pos.dtype == "int64" and pos.shape == x.shape[:1], f"positions {pos} vs input {x}")
    return [(x.dtype, x.shape)]


def _attention(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 4, set())
    q, k, v, pos = ins
    hq, hk, d = node.attr("n_heads"), node.attr("n_kv_heads"), node.attr("head_dim")
    _need(all(isinstance(a, int) and a > 0 for a in (hq, hk, d)), "bad head attributes")
    _need(hq % hk == 0, f"n_heads {hq} is not a multiple of n_kv_heads {hk}")
    _need(q.shape[-1] == hq * d, f"q {q} is not n_heads*head_dim = {hq * d} wide")
    _need(k.shape[-1] == hk * d and v.shape[-1] == hk * d,
          f"k {k} / v {v} are not n_kv_heads*head_dim = {hk * d} wide")
    _need(isinstance(node.attr("layer"), int), "missing int attribute layer (the cache slot)")
    _need(pos.dtype == "int64", f"positions must be int64, got {pos.dtype}")
    return [(q.dtype, q.shape)]


def _unary(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 1, set())
    return [(ins[0].dtype, ins[0].shape)]


def _binary(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 2, set())
    _need(ins[0].shape == ins[1].shape and ins[0].dtype == ins[1].dtype,
          f"operands differ: {ins[0]} vs {ins[1]}")
    return [(ins[0].dtype, ins[0].shape)]


def _split(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    sizes = node.attr("sizes")
    _need(isinstance(sizes, tuple) and len(sizes) > 0
          and all(isinstance(s, int) and s > 0 for s in sizes),
          f"sizes must be a non-empty tuple of positive ints, got {sizes!r}")
    _arity(node, 1, set(), n_out=len(sizes))
    x = ins[0]
    _need(x.shape[-1] == sum(sizes), f"sizes {sizes} do not add up to the width of {x}")
    return [(x.dtype, (*x.shape[:-1], s)) for s in sizes]


def _silu_mul(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 1, set())
    x = ins[0]
    _need(isinstance(x.shape[-1], int) and x.shape[-1] % 2 == 0,
          f"input {x} must have an even width [T, 2F]")
    return [(x.dtype, (*x.shape[:-1], x.shape[-1] // 2))]


def _add_rms_norm(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 2, {"weight"}, n_out=2)
    x, y = ins
    _need(x.shape == y.shape and x.dtype == y.dtype, f"operands differ: {x} vs {y}")
    _need(w["weight"].shape == (x.shape[-1],),
          f"weight {w['weight'].shape} does not match input {x}")
    _need(node.attr("eps") is not None, "missing attribute eps")
    return [(x.dtype, x.shape), (x.dtype, x.shape)]


def _rope_qk(node: Node, ins: list[Value], w: dict[str, WeightRef]) -> list[Signature]:
    _arity(node, 2, set())
    x, pos = ins
    hq, hk, d = node.attr("n_heads"), node.attr("n_kv_heads"), node.attr("head_dim")
    _need(all(isinstance(a, int) and a > 0 for a in (hq, hk, d)) and d % 2 == 0,
          f"n_heads/n_kv_heads/head_dim must be positive ints with even head_dim, "
          f"got {hq}/{hk}/{d}")
    _need(x.shape[-1] == (hq + 2 * hk) * d,
          f"input {x} is not (n_heads + 2*n_kv_heads)*head_dim = {(hq + 2 * hk) * d} wide")
    _need(pos.dtype == "int64" and pos.shape == x.shape[:1], f"positions {pos} vs input {x}")
    return [(x.dtype, x.shape)]


OPS: dict[str, Rule] = {
    "embedding": _embedding,
    "rms_norm": _rms_norm,
    "linear": _linear,
    "qlinear": _qlinear,
    "qlinear_w8a8": _qlinear_w8a8,
    "rope": _rope,
    "attention": _attention,
    "silu": _unary,
    "mul": _binary,
    "add": _binary,
    "split": _split,
    "silu_mul": _silu_mul,
    "silu_mul2": _binary,
    "add_rms_norm": _add_rms_norm,
    "rope_qk": _rope_qk,
    "w4a16_linear": _w4a16_linear,
}
