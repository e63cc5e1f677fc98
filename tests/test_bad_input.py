"""Bad input to the `optimize` CLI: one `error: FILE: problem` line, exit 2, nothing written.

The contract: every malformed or unsupported input is refused with exactly one line on stderr
starting with "error: " that names the offending file and the problem, exit code 2, no
traceback (unless --debug), no output directory and no `.OUT.tmp-*` left behind, in bounded
time and memory. A tiny valid Llama checkpoint is built once; each test copies it and breaks
one thing.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from optimizer.cli import main

MAX_SECONDS = 3.0  # per refused case (the valid tiny model builds in well under a second)
MAX_RSS_GROWTH = 256 << 20  # bytes of peak-RSS growth a refused case may cause
ST = "model.safetensors"
INDEX = "model.safetensors.index.json"


# --------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny valid Llama checkpoint, single-file and sharded (built once per module)."""
    import transformers

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    assert (root / "single" / ST).is_file()
    assert (root / "sharded" / INDEX).is_file()
    return {"single": root / "single", "sharded": root / "sharded"}


@pytest.fixture
def model(models: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the single-file checkpoint."""
    return Path(shutil.copytree(models["single"], tmp_path / "model"))


@pytest.fixture
def sharded(models: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the sharded checkpoint."""
    return Path(shutil.copytree(models["sharded"], tmp_path / "model"))


# ---------------------------------------------------------------------------------- helpers

def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with (size, mtime_ns): what 'nothing written' compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *, names: tuple[str, ...],
            keywords: tuple[str, ...], root: Path, out: Path | None = None,
            debug: bool = False) -> str:
    """Run main(argv) in-process and check the bad-input contract; return the error line.

    `names` must all appear in the error line (the offending file), `keywords` at least one
    (case-insensitive; the problem). `root` is snapshotted: nothing under it may change.
    """
    before = _tree(root)
    capsys.readouterr()
    rss = _peak_rss()
    start = time.perf_counter()
    rc = main((["--debug"] if debug else []) + argv)
    seconds = time.perf_counter() - start
    grown = _peak_rss() - rss
    captured = capsys.readouterr()
    err = captured.err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    context = f"argv={argv}\nstderr:\n{err}"
    assert rc == 2, context
    assert len(errors) == 1, context
    line = errors[0]
    assert lines[-1] == line, f"the error line should come last\n{context}"
    if debug:
        assert "Traceback" in err, context
    else:
        assert "Traceback" not in err, context
        # Besides the error line only the progress of a successful import may appear (a
        # NaN weight is found while writing, after the import and passes reported).
        assert all(ln.startswith(("imported ", "pass ", "writing weights"))
                   for ln in lines[:-1]), context
    for name in names:
        assert name in line, f"{name!r} not named\n{context}"
    assert any(k.lower() in line.lower() for k in keywords), \
        f"none of {keywords} in the message\n{context}"
    assert seconds < MAX_SECONDS, f"took {seconds:.1f} s\n{context}"
    assert grown < MAX_RSS_GROWTH, f"peak RSS grew by {grown >> 20} MiB\n{context}"
    if out is not None:
        assert not out.exists() or out.name in before, f"{out} was written\n{context}"
        leftovers = sorted(p.name for p in out.parent.glob(f".{out.name}.*"))
        assert not leftovers, f"temporary directories left: {leftovers}\n{context}"
    assert _tree(root) == before, f"files under {root} changed\n{context}"
    return line


def build_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path | str,
                  names: tuple[str, ...], keywords: tuple[str, ...],
                  extra: list[str] | None = None, debug: bool = False) -> str:
    """`optimize MODEL -o tmp_path/out` must be refused and write nothing."""
    out = tmp_path / "out"
    return refused(capsys, [str(model), "-o", str(out), *(extra or [])], names=names,
                   keywords=keywords, root=tmp_path, out=out, debug=debug)


def read_st(path: Path) -> tuple[dict[str, Any], bytes]:
    """(parsed header, data region) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st_raw(path: Path, header_text: bytes, data: bytes) -> None:
    header_text += b" " * (-len(header_text) % 8)
    path.write_bytes(struct.pack("<Q", len(header_text)) + header_text + data)


def edit_header(path: Path, edit: Callable[[dict[str, Any], int], None]) -> None:
    """Rewrite a safetensors header through `edit(header, data_len)`; data kept as is."""
    header, data = read_st(path)
    edit(header, len(data))
    write_st_raw(path, json.dumps(header).encode(), data)


def tensors_of(header: dict[str, Any]) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def edit_config(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg, indent=2))


def edit_weights(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Rewrite a safetensors file with the official library after `edit(tensors)`."""
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def gguf_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_header(version: int = 3, tensor_count: int = 0, kv_count: int = 0,
                magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, tensor_count, kv_count)


# ----------------------------------------------------------------------- model.safetensors

def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _truncated(p: Path) -> None:
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    p.write_bytes(raw[:8 + n + (len(raw) - 8 - n) // 2])


def _header_len_beyond(p: Path) -> None:
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", len(raw) + 100) + raw[8:])


def _header_not_json(p: Path) -> None:
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    p.write_bytes(raw[:8] + b"{this is not json".ljust(n, b" ") + raw[8 + n:])


def _overlap(p: Path) -> None:
    def edit(h: dict[str, Any], data_len: int) -> None:
        a, b = [k for k in tensors_of(h) if k.endswith("input_layernorm.weight")][:2]
        begin, end = h[a]["data_offsets"]
        h[b]["data_offsets"] = [begin + 4, end + 4]
    edit_header(p, edit)


def _offsets_out_of_range(p: Path) -> None:
    def edit(h: dict[str, Any], data_len: int) -> None:
        name = tensors_of(h)[0]
        begin, end = h[name]["data_offsets"]
        h[name]["data_offsets"] = [data_len, data_len + end - begin]
    edit_header(p, edit)


def _length_mismatch(p: Path) -> None:
    def edit(h: dict[str, Any], data_len: int) -> None:
        name = "model.norm.weight"
        h[name]["shape"] = [h[name]["shape"][0] + 1]
    edit_header(p, edit)


def _unknown_dtype(p: Path) -> None:
    def edit(h: dict[str, Any], data_len: int) -> None:
        h["model.norm.weight"]["dtype"] = "F7"
    edit_header(p, edit)


def _duplicate_name(p: Path) -> None:
    header, data = read_st(p)
    items = [(k, header[k]) for k in tensors_of(header)]
    pairs = [*items, items[0]]  # the first tensor's key once more
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    write_st_raw(p, text.encode(), data)


@pytest.mark.parametrize("corrupt, keywords", [
    (_empty, ("0 bytes", "empty", "too small")),
    (_truncated, ("exceed", "beyond", "past the end", "truncated")),
    (_header_len_beyond, ("header length",)),
    (_header_not_json, ("not valid JSON",)),
    (_overlap, ("overlap",)),
    (_offsets_out_of_range, ("exceed", "out of range", "beyond")),
    (_length_mismatch, ("needs", "bytes")),
    (_unknown_dtype, ("unknown dtype",)),
    (_duplicate_name, ("duplicate",)),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_corrupt_safetensors(capsys, tmp_path, model, corrupt, keywords):
    corrupt(model / ST)
    build_refused(capsys, tmp_path, model, (ST,), keywords)


# --------------------------------------------------------------------------------- sharded

def _weight_map(folder: Path) -> dict[str, str]:
    return json.loads((folder / INDEX).read_text())["weight_map"]


def _edit_index(folder: Path, edit: Callable[[dict[str, str]], None]) -> None:
    index = json.loads((folder / INDEX).read_text())
    edit(index["weight_map"])
    (folder / INDEX).write_text(json.dumps(index, indent=2))


def test_shard_missing(capsys, tmp_path, sharded):
    shard = sorted(set(_weight_map(sharded).values()))[1]
    (sharded / shard).unlink()
    build_refused(capsys, tmp_path, sharded, (shard,), ("missing",))


def test_index_names_tensor_not_in_shard(capsys, tmp_path, sharded):
    shard = sorted(set(_weight_map(sharded).values()))[0]
    _edit_index(sharded, lambda wm: wm.__setitem__("model.layers.0.mlp.ghost.weight", shard))
    build_refused(capsys, tmp_path, sharded, (INDEX, "ghost"), ("does not hold",))


def test_index_moves_tensor_to_wrong_shard(capsys, tmp_path, sharded):
    shards = sorted(set(_weight_map(sharded).values()))

    def edit(wm: dict[str, str]) -> None:
        wm["model.norm.weight"] = next(s for s in shards if s != wm["model.norm.weight"])
    _edit_index(sharded, edit)
    build_refused(capsys, tmp_path, sharded, (INDEX, "model.norm.weight"), ("does not hold",))


def test_shard_name_with_path(capsys, tmp_path, sharded):
    (tmp_path / "x.safetensors").write_bytes((sharded / sorted(
        set(_weight_map(sharded).values()))[0]).read_bytes())
    _edit_index(sharded, lambda wm: wm.__setitem__("model.norm.weight", "../x.safetensors"))
    build_refused(capsys, tmp_path, sharded, (INDEX, "../x.safetensors"),
                  ("plain file name",))


# ----------------------------------------------------------------------------- config.json

def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg.pop(key)


def _yarn_v5(cfg: dict[str, Any]) -> None:
    cfg["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 2048}


def _yarn_v4(cfg: dict[str, Any]) -> None:
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = 10000.0
    cfg["rope_scaling"] = {"type": "yarn", "factor": 4.0}


@pytest.mark.parametrize("edit, keywords", [
    pytest.param(_drop("hidden_size"), ("missing", "hidden_size"), id="missing-hidden_size"),
    pytest.param(_set("hidden_size", "32"), ("hidden_size",), id="string-hidden_size"),
    pytest.param(_set("hidden_size", -32), ("hidden_size",), id="negative-hidden_size"),
    pytest.param(_set("num_hidden_layers", 0), ("num_hidden_layers",), id="zero-layers"),
    pytest.param(_set("vocab_size", True), ("vocab_size",), id="bool-vocab_size"),
    pytest.param(_set("model_type", "gpt2"), ("unsupported model_type",), id="gpt2"),
    pytest.param(_set("auto_map", {"AutoModelForCausalLM": "modeling_x.X"}), ("auto_map",),
                 id="auto_map"),
    pytest.param(_set("trust_remote_code", True), ("trust_remote_code",),
                 id="trust_remote_code"),
    pytest.param(_yarn_v5, ("yarn",), id="rope-yarn-v5"),
    pytest.param(_yarn_v4, ("yarn",), id="rope-yarn-v4"),
])
def test_bad_config(capsys, tmp_path, model, edit, keywords):
    edit_config(model, edit)
    build_refused(capsys, tmp_path, model, ("config.json",), keywords)


def test_config_not_json(capsys, tmp_path, model):
    (model / "config.json").write_text('{"model_type": "llama", ')
    build_refused(capsys, tmp_path, model, ("config.json",), ("not valid JSON",))


def test_config_duplicate_key(capsys, tmp_path, model):
    text = (model / "config.json").read_text()
    assert text.lstrip().startswith("{") and '"hidden_size"' in text
    (model / "config.json").write_text('{"hidden_size": 64, ' + text.lstrip()[1:])
    build_refused(capsys, tmp_path, model, ("config.json",), ("duplicate key 'hidden_size'",))


# --------------------------------------------------------------- weights vs. config.json

def test_weights_disagree_with_config(capsys, tmp_path, model):
    edit_config(model, _set("intermediate_size", 64))
    build_refused(capsys, tmp_path, model, (ST,), ("shape",))


def test_missing_tensor(capsys, tmp_path, model):
    edit_weights(model / ST, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    build_refused(capsys, tmp_path, model, (ST, "model.layers.1.mlp.up_proj.weight"),
                  ("missing",))


def test_unexpected_tensor(capsys, tmp_path, model):
    edit_weights(model / ST, lambda t: t.__setitem__("model.layers.0.extra.weight",
                                                      torch.zeros(4)))
    build_refused(capsys, tmp_path, model, (ST, "model.layers.0.extra.weight"),
                  ("unexpected",))


def test_int32_weight(capsys, tmp_path, model):
    name = "model.norm.weight"
    edit_weights(model / ST, lambda t: t.__setitem__(name, t[name].to(torch.int32)))
    build_refused(capsys, tmp_path, model, (ST, name), ("I32",))


def test_nan_weight(capsys, tmp_path, model):
    name = "model.layers.1.self_attn.v_proj.weight"

    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = t[name].clone()
        t[name][3, 5] = float("nan")
    edit_weights(model / ST, edit)
    build_refused(capsys, tmp_path, model, (ST, name), ("NaN",))


# ------------------------------------------------------------------- pickle / bare files

PICKLE_MARKER = "pickle-was-loaded"


def _hostile_pickle(path: Path) -> Path:
    """A pickle that, if ever unpickled, creates a marker directory beside it."""
    marker = path.parent / PICKLE_MARKER
    path.write_bytes(b"cos\nmkdir\n(V" + str(marker).encode() + b"\ntR.")
    return marker


def test_directory_with_only_pickle(capsys, tmp_path, model):
    folder = tmp_path / "picklemodel"
    folder.mkdir()
    shutil.copy(model / "config.json", folder / "config.json")
    marker = _hostile_pickle(folder / "pytorch_model.bin")
    build_refused(capsys, tmp_path, folder, ("picklemodel",), ("pickle",))
    assert not marker.exists()


def test_bare_pickle_file(capsys, tmp_path, model):
    marker = _hostile_pickle(model / "x.bin")
    build_refused(capsys, tmp_path, model / "x.bin", ("x.bin",), ("pickle",))
    assert not marker.exists()


def test_bare_safetensors_without_config(capsys, tmp_path, model):
    lone = tmp_path / "lonely"
    lone.mkdir()
    shutil.copy(model / ST, lone / "weights.safetensors")
    line = build_refused(capsys, tmp_path, lone / "weights.safetensors", ("config.json",),
                         ("not found",))
    assert "--config" in line


# ------------------------------------------------------------------------------------ GGUF

def _gguf_bad_magic(p: Path) -> None:
    p.write_bytes(gguf_header(magic=b"GGML") + bytes(64))


def _gguf_version_99(p: Path) -> None:
    p.write_bytes(gguf_header(version=99) + bytes(64))


def _gguf_tensor_count(p: Path) -> None:
    p.write_bytes(gguf_header(tensor_count=2**40) + bytes(64))


def _gguf_kv_count(p: Path) -> None:
    p.write_bytes(gguf_header(kv_count=2**40) + bytes(64))


def _gguf_huge_key(p: Path) -> None:
    p.write_bytes(gguf_header(kv_count=1) + struct.pack("<Q", 2**62) + b"general." + bytes(56))


@pytest.mark.parametrize("make, keywords", [
    (_gguf_bad_magic, ("magic",)),
    (_gguf_version_99, ("version 99",)),
    (_gguf_tensor_count, ("tensor_count",)),
    (_gguf_kv_count, ("kv_count",)),
    (_gguf_huge_key, ("past the end",)),
], ids=lambda v: v.__name__[6:] if callable(v) else None)
def test_bad_gguf(capsys, tmp_path, make, keywords):
    path = tmp_path / "broken.gguf"
    make(path)
    build_refused(capsys, tmp_path, path, ("broken.gguf",), keywords)


def test_gguf_unsupported_architecture(capsys, tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(2)
    w.add_context_length(64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    build_refused(capsys, tmp_path, path, ("gpt2.gguf",), ("architecture",))


# ------------------------------------------------------------------- paths and directories

def test_nonexistent_path(capsys, tmp_path):
    build_refused(capsys, tmp_path, tmp_path / "no-such-model", ("no-such-model",),
                  ("no such file",))


def test_directory_not_a_model(capsys, tmp_path):
    folder = tmp_path / "holiday-photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model\n")
    build_refused(capsys, tmp_path, folder, ("holiday-photos",), ("no model.safetensors",))


def test_output_is_foreign_directory(capsys, tmp_path, model):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete\n")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00" * 10)
    line = refused(capsys, [str(model), "-o", str(out)], names=("precious",),
                   keywords=("refusing", "not an artifact"), root=tmp_path, out=out)
    assert "overwrite" in line
    assert (out / "thesis.txt").read_text() == "do not delete\n"


def test_run_on_non_artifact(capsys, tmp_path, model):
    refused(capsys, ["run", str(model), "--prompt", "hi"], names=("model",),
            keywords=("not an artifact",), root=tmp_path)


# ------------------------------------------------------------------------------------ passes

@pytest.mark.parametrize("spec, keywords", [
    ("nosuchpass", ("unknown pass 'nosuchpass'",)),
    ("dce:foo=1", ("no option 'foo'",)),
    ("dce:foo", ("expected key=value",)),
])
def test_bad_pass_spec(capsys, tmp_path, model, spec, keywords):
    build_refused(capsys, tmp_path, model, (), keywords, extra=["--passes", spec])


# ------------------------------------------------------------------------- --debug, process

def test_debug_shows_traceback(capsys, tmp_path, model):
    _truncated(model / ST)
    build_refused(capsys, tmp_path, model, (ST,), ("exceed",), debug=True)


def test_subprocess_exit_code_and_no_traceback(tmp_path, model):
    _header_len_beyond(model / ST)
    out = tmp_path / "out"
    before = _tree(tmp_path)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "optimizer.cli", str(model), "-o", str(out)],
                          capture_output=True, text=True, timeout=60, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and ST in errors[0] and "header length" in errors[0], proc.stderr
    assert proc.stdout == ""
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert _tree(tmp_path) == before
