"""Hugging Face checkpoints: a directory with config.json and model.safetensors (or shards
listed in model.safetensors.index.json), or a bare .safetensors file with a config.json.

Only safetensors is read; pickle checkpoints (``*.bin``, ``*.pt``) are refused.
"""

from __future__ import annotations

from pathlib import Path

from optimizer.errors import InvalidInput
from optimizer.formats.safetensors_io import SafetensorsFile
from optimizer.importers.common import check_weights
from optimizer.importers.hf_config import config_from_hf
from optimizer.importers.hf_quant_config import quant_config_from_hf
from optimizer.importers.hf_quantized import import_quantized
from optimizer.importers.jsonfile import read_json_object
from optimizer.ir import Graph, WeightRef
from optimizer.models.llama import build_graph

DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
QUANT_DTYPES = {**DTYPES, "I32": "int32"}   # GPTQ/AWQ checkpoints
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _shards(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise InvalidInput(index, "'weight_map' must map tensor names to shard file names")
        names = sorted(set(weight_map.values()))
        for name in names:
            if "/" in name or "\\" in name or name in (".", ".."):
                raise InvalidInput(index, f"shard name '{name}' must be a plain file name")
            if not (folder / name).is_file():
                raise InvalidInput(folder / name, "shard named in "
                                   "model.safetensors.index.json is missing")
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    if any(any(folder.glob(p)) for p in ("*.bin", "*.pt", "*.pth", "*.ckpt")):
        raise InvalidInput(folder, "only safetensors checkpoints are supported; pickle files "
                                   "(.bin/.pt) are never loaded")
    raise InvalidInput(folder, "no model.safetensors or model.safetensors.index.json")


def _weight_refs(files: list[Path], index: Path | None,
                 dtypes: dict[str, str] = DTYPES) -> dict[str, WeightRef]:
    refs: dict[str, WeightRef] = {}
    for path in files:
        st = SafetensorsFile(path)
        for name, info in st.tensors.items():
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if name in refs:
                raise InvalidInput(path, f"tensor '{name}' is also in {Path(refs[name].file).name}")
            if info.dtype not in dtypes:
                raise InvalidInput(path, f"tensor '{name}' has dtype {info.dtype}; weights must "
                                         f"be one of {', '.join(dtypes)}")
            refs[name] = WeightRef(name, dtypes[info.dtype], info.shape, str(path), name,
                                   "safetensors")
        st.close()
    if index is not None:
        weight_map = read_json_object(index)["weight_map"]
        for name, shard in weight_map.items():
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if name not in refs or Path(refs[name].file).name != shard:
                raise InvalidInput(index, f"tensor '{name}' is listed in shard '{shard}' "
                                          "but that shard does not hold it")
    return refs


def read_tokenizer(path: Path) -> str:
    """tokenizer.json's text, after checking the `tokenizers` library can load it."""
    from tokenizers import Tokenizer
    try:
        text = path.read_text(encoding="utf-8")
        Tokenizer.from_str(text)
    except Exception as e:  # the library raises bare Exceptions
        raise InvalidInput(path, f"not a valid tokenizer file ({str(e).splitlines()[0]})") from None
    return text


def import_hf(path: Path, config: Path | None = None) -> Graph:
    """Import a HF directory or a bare .safetensors file (config beside it or given)."""
    if path.is_dir():
        folder = path
        files = _shards(folder)
        index = folder / "model.safetensors.index.json"
        index_or_none = index if index.is_file() else None
    else:
        folder, files, index_or_none = path.parent, [path], None
    config = config or folder / "config.json"
    if not config.is_file():
        raise InvalidInput(config, "config.json not found (pass one with --config)")
    raw = read_json_object(config)
    cfg, quant = config_from_hf(raw, config), quant_config_from_hf(raw, config)
    gen = folder / "generation_config.json"
    if not cfg.eos_token_ids and gen.is_file():
        eos = read_json_object(gen).get("eos_token_id")
        ids = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
        cfg = type(cfg).from_json({**cfg.to_json(), "eos_token_ids": ids})
    refs = _weight_refs(files, index_or_none, QUANT_DTYPES if quant else DTYPES)
    if cfg.tie_word_embeddings:
        refs.pop("lm_head.weight", None)
    if not quant:
        check_weights(cfg, refs, str(config))
    tok = folder / "tokenizer.json"
    meta = {"sources": [str(config)] + [str(f) for f in files],
            "tokenizer": read_tokenizer(tok) if tok.is_file() else None}
    if tok.is_file():
        meta["sources"].append(str(tok))
    if quant:   # GPTQ / AWQ: decoder linears become qlinear nodes
        return import_quantized(cfg, quant, refs, str(config), meta)
    return build_graph(cfg, refs, meta)
