"""`export_hf_quantized`: a quantized graph as a Hugging Face GPTQ or AWQ checkpoint.

The directory holds ``config.json`` (the model's HF config rebuilt from
``graph.meta["model"]``, ``torch_dtype`` float16, plus the format's ``quantization_config``),
``model.safetensors`` (float weights as float16 under their HF names; each quantized linear
as ``<module>.{qweight,qzeros,scales[,g_idx]}`` in the format's layout, ``<module>.bias``
float16) and ``tokenizer.json`` when the graph has a tokenizer. It is written atomically
(temporary directory beside the target, fsync, rename).

Preconditions, each refused with `InvalidInput` naming the node: every ``linear`` but the
lm_head is a ``qlinear`` (the lm_head stays float16), all with one scheme (bits, group_size,
symmetric or not, g_idx or not) that the format can hold for every linear's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from optimizer.atomic_dir import json_bytes, replace_dir, write_bytes
from optimizer.errors import InvalidInput
from optimizer.exporters.hf_config import hf_config
from optimizer.exporters.quant_formats import FORMATS, Linear, QuantFormat, Scheme
from optimizer.formats.safetensors_io import write_safetensors
from optimizer.ir import FLOAT_DTYPES, Graph, Node, verify
from optimizer.ir.weights import WeightStore
from optimizer.kernels.qlinear.reference import group_index, unpack_bits
from optimizer.models.config import ModelConfig
from optimizer.models.llama import expected_weights

WEIGHTS_FILE = "model.safetensors"
OUR_FILES = {"config.json", WEIGHTS_FILE, "tokenizer.json"}
QUANT_ROLES = ("qweight", "scales", "zeros", "g_idx")


@dataclass(frozen=True)
class _Target:
    """One qlinear to write: its node, HF module name and shape."""

    node: Node
    label: str
    prefix: str
    k: int
    n: int
    groups: int


def _label(node: Node) -> str:
    return f"node %{node.outputs[0]} ({node.op})"


def _show(s: Scheme) -> str:
    return (f"bits={s.bits} group_size={s.group_size} sym={s.sym} "
            f"g_idx={'yes' if s.act_order else 'no'}")


def _model_config(graph: Graph) -> ModelConfig:
    if not graph.meta.get("model"):
        raise InvalidInput(None, "the graph has no model config (meta['model']) to export")
    return ModelConfig.from_json(graph.meta["model"])


def _plan(graph: Graph, cfg: ModelConfig, fmt: QuantFormat) -> tuple[list[_Target], Scheme]:
    """The qlinears to write and their shared scheme; InvalidInput naming a node that the
    format cannot hold."""
    modules = {n.removesuffix(".weight") for n in expected_weights(cfg)
               if n.endswith("_proj.weight")}
    targets: list[_Target] = []
    scheme, first = None, ""
    for node in graph.nodes:
        label, head = _label(node), any(o in graph.outputs for o in node.outputs)
        if node.op == "linear" and not head:
            raise InvalidInput(None, f"{label} is not quantized; a {fmt.name} checkpoint "
                                     "needs every linear but the lm_head as qlinear")
        if node.op.startswith("qlinear") and (head or node.op != "qlinear"):
            why = "the lm_head stays float16" if head else f"{fmt.name} holds no {node.op}"
            raise InvalidInput(None, f"{label} cannot be exported as {fmt.name}: {why}")
        if node.op != "qlinear":
            continue
        s = Scheme(node.attr("bits"), node.attr("group_size"), node.weight("zeros") is None,
                   node.weight("g_idx") is not None)
        if scheme is None:
            scheme, first = s, label
        elif s != scheme:
            raise InvalidInput(None, f"{label} is quantized with {_show(s)} but {first} with "
                                     f"{_show(scheme)}; a {fmt.name} checkpoint holds one")
        prefix = node.weight("qweight").removesuffix(".qweight")
        if prefix not in modules:
            raise InvalidInput(None, f"{label}: weight '{node.weight('qweight')}' names no "
                                     f"{cfg.family} module (expected <module>.qweight)")
        n = graph.weights[node.weight("qweight")].shape[0]
        k, groups = node.attr("in_features"), graph.weights[node.weight("scales")].shape[1]
        problem = fmt.problem(s, k, n, groups)
        if problem:
            raise InvalidInput(None, f"{label} cannot be exported as {fmt.name}: {problem}")
        targets.append(_Target(node, label, prefix, k, n, groups))
    if scheme is None:
        raise InvalidInput(None, f"the graph has no qlinear nodes to export as {fmt.name}")
    return targets, scheme


def _linear(store: WeightStore, graph: Graph, t: _Target, s: Scheme) -> Linear:
    def load(role: str) -> torch.Tensor | None:
        name = t.node.weight(role)
        return store.load(graph.weights[name]) if name else None

    zeros, g_idx = load("zeros"), load("g_idx")
    scales = load("scales")
    return Linear(codes=unpack_bits(load("qweight"), s.bits, t.k),
                  scales=scales,
                  zeros=zeros.long() if zeros is not None else
                  torch.full(scales.shape, 1 << (s.bits - 1), dtype=torch.int64),
                  g_idx=g_idx.long() if g_idx is not None else group_index(t.k, s.group_size),
                  explicit_g_idx=g_idx is not None)


def _check_target(out: Path) -> None:
    if out.exists() and not (out.is_dir() and {p.name for p in out.iterdir()} <= OUR_FILES):
        raise InvalidInput(out, "exists and is not an exported checkpoint directory; "
                                "refusing to overwrite")


def _write(graph: Graph, fmt: QuantFormat, targets: list[_Target], scheme: Scheme,
           config: dict, tmp: Path) -> None:
    store = WeightStore()
    quant = {t.node.weight(r) for t in targets for r in QUANT_ROLES if t.node.weight(r)}
    floats = sorted(n for n in graph.weights if n not in quant)
    for name in floats:
        if graph.weights[name].dtype not in FLOAT_DTYPES:
            raise InvalidInput(None, f"weight '{name}' is {graph.weights[name].dtype}, not "
                                     "float, and belongs to no qlinear")
    entries = [(n, torch.float16, graph.weights[n].shape) for n in floats]
    float_names = set(floats)
    by_prefix = {t.prefix: t for t in targets}
    for t in targets:
        entries += [(f"{t.prefix}.{role}", dtype, shape) for role, (dtype, shape)
                    in fmt.shapes(scheme, t.k, t.n, t.groups).items()]
    cache: dict[str, dict[str, torch.Tensor]] = {}   # one module at a time (names sorted)

    def produce(name: str) -> torch.Tensor:
        if name in float_names:     # (our qlinear roles may share the layout's names)
            w = store.load(graph.weights[name]).to(torch.float16)
            if not bool(torch.isfinite(w).all()):
                raise InvalidInput(None, f"weight '{name}' is not finite in float16")
            return w.contiguous()
        prefix, role = name.rsplit(".", 1)
        if prefix not in cache:
            t = by_prefix[prefix]
            try:
                tensors = fmt.tensors(scheme, _linear(store, graph, t, scheme))
            except ValueError as e:
                raise InvalidInput(None, f"{t.label} cannot be exported as {fmt.name}: "
                                         f"{e}") from None
            cache.clear()
            cache[prefix] = tensors
        return cache[prefix][role]

    write_safetensors(tmp / WEIGHTS_FILE, entries, produce, metadata={"format": "pt"})
    write_bytes(tmp / "config.json", json_bytes(config))
    if graph.meta.get("tokenizer"):
        write_bytes(tmp / "tokenizer.json", graph.meta["tokenizer"].encode())


def export_hf_quantized(graph: Graph, out_dir: str | Path, fmt: str) -> Path:
    """Write ``graph`` as a Hugging Face ``fmt`` ("gptq" or "awq") checkpoint directory at
    ``out_dir`` (replacing an earlier export there) and return its path."""
    if fmt not in FORMATS:
        raise InvalidInput(None, f"unknown checkpoint format {fmt!r} "
                                 f"(supported: {', '.join(FORMATS)})")
    out, form = Path(out_dir), FORMATS[fmt]
    verify(graph)
    cfg = _model_config(graph)
    targets, scheme = _plan(graph, cfg, form)
    try:
        config = hf_config(cfg)
    except ValueError as e:
        raise InvalidInput(None, f"the model config cannot be written as a HF config: {e}")
    config["quantization_config"] = form.config(scheme)
    _check_target(out)
    return replace_dir(out, lambda tmp: _write(graph, form, targets, scheme, config, tmp))
