"""GPTQ and AWQ checkpoints (a HF directory whose config.json has a ``quantization_config``)
-> an IR graph whose decoder linears are ``qlinear`` nodes.

Every decoder linear must be stored quantized as ``<module>.{qweight,qzeros,scales}`` (plus
``g_idx`` for GPTQ; layouts in `optimizer.formats.gptq_layout` / `awq_layout`), every other
weight as a float tensor. Shapes and dtypes are checked against config.json and the bits
before anything is read. The tensors are converted into our qlinear storage (LSB-first
packed uint8 codes, float16 scales [N, G], uint8 zeros unless symmetric, int32 g_idx only
for act-order; the conventions of passes/quant_rewrite.py) and written to a `ScratchDir`,
one file per decoder layer, which the graph keeps in ``resources``.
"""

from __future__ import annotations

import torch

from optimizer.errors import InvalidInput
from optimizer.formats import awq_layout, gptq_layout
from optimizer.importers.common import check_weights
from optimizer.importers.hf_quant_config import QuantConfig
from optimizer.ir import FLOAT_DTYPES, Graph, Node, WeightRef
from optimizer.ir.scratch import DTYPE_NAMES, ScratchDir
from optimizer.ir.weights import WeightStore
from optimizer.kernels.qlinear.reference import group_index, pack_bits
from optimizer.models.config import ModelConfig
from optimizer.models.llama import build_graph, expected_weights

Module = tuple[int, int, dict[str, WeightRef]]          # k, n, role -> stored tensor


def _stored_shapes(q: QuantConfig, k: int, n: int) -> tuple[dict, str | None]:
    """Role -> (dtype, shape) the layout needs for a [N, K] linear, and why it cannot."""
    if q.method == "gptq":
        groups = gptq_layout.n_groups(k, q.group_size)
        return (gptq_layout.shapes(k, n, groups, q.bits),
                gptq_layout.layout_problem(k, n, q.bits))
    return (awq_layout.shapes(k, n, k // q.group_size),
            awq_layout.layout_problem(k, n, q.bits, q.group_size))


def _take_module(q: QuantConfig, name: str, k: int, n: int, rest: dict[str, WeightRef],
                 config_file: str) -> dict[str, WeightRef]:
    """Pop ``name``'s quantized tensors from ``rest``, checking dtypes and shapes."""
    shapes, problem = _stored_shapes(q, k, n)
    where = next(iter(rest.values())).file if rest else config_file
    if name + ".weight" in rest:
        raise InvalidInput(rest[name + ".weight"].file, f"tensor '{name}.weight' is not "
                           f"quantized; this {q.method} checkpoint must quantize every linear")
    if problem:
        raise InvalidInput(config_file, f"module '{name}' [{n}, {k}]: {problem}")
    got = {}
    for role, (dtype, shape) in shapes.items():
        ref = rest.pop(f"{name}.{role}", None)
        if ref is None:
            raise InvalidInput(where, f"tensor '{name}.{role}' is missing (a {q.bits}-bit "
                                      f"{q.method} checkpoint of this config needs it)")
        if (ref.dtype, ref.shape) != (DTYPE_NAMES[dtype], shape):
            raise InvalidInput(ref.file, f"tensor '{ref.key}' is {ref.dtype}{list(ref.shape)}"
                                         f" but a {q.bits}-bit {q.method} linear [{n}, {k}] "
                                         f"needs {DTYPE_NAMES[dtype]}{list(shape)}")
        got[role] = ref
    return got


def _convert(store: WeightStore, q: QuantConfig, k: int,
             refs: dict[str, WeightRef]) -> dict[str, torch.Tensor]:
    """One module's stored tensors -> our qlinear storage (role -> tensor)."""
    t = {role: store.load(ref) for role, ref in refs.items()}
    qw = refs["qweight"]
    if q.method == "gptq":
        codes, scales, zeros, g_idx = gptq_layout.from_gptq(
            t["qweight"], t["qzeros"], t["scales"], t["g_idx"], q.bits)
    else:
        codes, scales, zeros = awq_layout.from_awq(t["qweight"], t["qzeros"], t["scales"])
        g_idx = group_index(k, q.group_size)
    if not bool(torch.isfinite(scales).all()):
        raise InvalidInput(qw.file, f"tensor '{refs['scales'].key}' has NaN/Inf values")
    out = {"qweight": pack_bits(codes, q.bits), "scales": scales.contiguous()}
    if q.sym:
        if not bool((zeros == 1 << (q.bits - 1)).all()):
            raise InvalidInput(qw.file, f"tensor '{refs['qzeros'].key}': sym is true but the "
                                        f"zero points are not all {1 << (q.bits - 1)}")
    else:
        out["zeros"] = zeros.to(torch.uint8)
    if not torch.equal(g_idx, group_index(k, q.group_size)):
        key = refs["g_idx"].key
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= scales.shape[1]:
            raise InvalidInput(qw.file, f"tensor '{key}' has groups outside "
                                        f"[0, {scales.shape[1]})")
        if not q.desc_act:
            raise InvalidInput(qw.file, f"tensor '{key}' is not k // group_size but desc_act "
                                        "is false")
        out["g_idx"] = g_idx.to(torch.int32)
    return out


def _qlinear(node: Node, roles: dict[str, str], q: QuantConfig, k: int) -> Node:
    """The qlinear replacing ``node`` (attributes as passes/quant_rewrite.py's)."""
    weights = dict(roles)
    if node.weight("bias"):
        weights["bias"] = node.weight("bias")
    return Node.make("qlinear", node.inputs, node.outputs, weights,
                     {"bits": q.bits, "group_size": q.group_size, "in_features": k,
                      "sym": q.sym, "method": q.method})


def _quantize_nodes(graph: Graph, q: QuantConfig, modules: dict[str, Module]) -> Graph:
    """Swap each module's placeholder linear for a qlinear over converted tensors."""
    store, scratch = WeightStore(), ScratchDir(prefix="optimizer-import-")
    index = {n.weight("weight"): i for i, n in enumerate(graph.nodes) if n.op == "linear"}
    by_layer: dict[str, list[str]] = {}
    for name in modules:
        by_layer.setdefault(name.split(".")[2], []).append(name)
    nodes, new_refs = list(graph.nodes), {}
    for names in by_layer.values():
        tensors = {name: _convert(store, q, modules[name][0], modules[name][2])
                   for name in names}
        new_refs.update(scratch.write({f"{m}.{r}": t for m, d in tensors.items()
                                       for r, t in d.items()}))
        for name in names:
            i = index[name + ".weight"]
            roles = {r: f"{name}.{r}" for r in tensors[name]}
            nodes[i] = _qlinear(nodes[i], roles, q, modules[name][0])
    weights = {**graph.weights, **new_refs}
    used = {w for n in nodes for _, w in n.weights}
    report = {"source": f"{q.method} checkpoint", "bits": q.bits,
              "group_size": q.group_size, "sym": q.sym, "desc_act": q.desc_act}
    return graph.replace(nodes=tuple(nodes),
                         weights={n: w for n, w in weights.items() if n in used},
                         resources=graph.resources + (scratch,),
                         meta={**graph.meta, "quantization": [report]})


def import_quantized(cfg: ModelConfig, q: QuantConfig, refs: dict[str, WeightRef],
                     config_file: str, meta: dict[str, object]) -> Graph:
    """The graph of a GPTQ/AWQ checkpoint whose tensors are ``refs`` (by stored name)."""
    expected = expected_weights(cfg)
    rest, modules = dict(refs), {}
    for name, (n, k) in ((w.removesuffix(".weight"), s) for w, s in expected.items()
                         if w.endswith("_proj.weight")):
        modules[name] = (k, n, _take_module(q, name, k, n, rest, config_file))
    for name, (k, n, _) in modules.items():   # placeholders: the float graph's linears
        rest[name + ".weight"] = WeightRef(name + ".weight", "float16", (n, k), config_file,
                                           name + ".weight", "safetensors")
    check_weights(cfg, rest, config_file)
    for ref in rest.values():
        if ref.dtype not in FLOAT_DTYPES:
            raise InvalidInput(ref.file, f"tensor '{ref.key}' is {ref.dtype}; weights outside "
                                         "the quantized linears must be float")
    return _quantize_nodes(build_graph(cfg, rest, meta), q, modules)
