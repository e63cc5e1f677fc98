"""The artifact: manifest contents, byte-identical rebuilds, atomic replacement."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import optimizer
from optimizer.artifact import load_artifact
from optimizer.errors import InvalidInput
from optimizer.formats.safetensors_io import read_header
from tiny_models import save_tiny


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    save_tiny("qwen2", folder)
    return folder


def _build(source, out, passes=("dce",)):
    g = optimizer.PassManager(list(passes)).run(optimizer.import_model(source))
    return optimizer.save(g, out)


def test_manifest_lists_every_file_with_sha256(source, tmp_path) -> None:
    out = _build(source, tmp_path / "a", ("dce", "cast-weights:dtype=bfloat16"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "optimizer-artifact" and m["format_version"] == 1
    assert m["toolchain"]["version"] == optimizer.__version__
    assert set(m["files"]) == {"graph.json", "model.safetensors"}
    for name, rec in m["files"].items():
        data = (out / name).read_bytes()
        assert rec == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    srcs = {s["path"]: s for s in m["sources"]}
    assert set(srcs) == {"config.json", "model.safetensors"}
    cfg_bytes = (source / "config.json").read_bytes()
    assert srcs["config.json"]["sha256"] == hashlib.sha256(cfg_bytes).hexdigest()
    assert [p["name"] for p in m["pipeline"]] == ["dce", "cast-weights"]
    assert m["model"]["family"] == "qwen2" and m["model"]["qkv_bias"] is True
    tensors, _ = read_header(out / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {"BF16"}


def test_same_inputs_give_byte_identical_artifacts(source, tmp_path) -> None:
    a, b = _build(source, tmp_path / "a"), _build(source, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_rebuild_replaces_an_artifact_and_leaves_no_temporaries(source, tmp_path) -> None:
    out = _build(source, tmp_path / "a")
    _build(source, out, ("cast-weights:dtype=float16",))
    assert json.loads((out / "manifest.json").read_text())["pipeline"][0]["name"] == \
        "cast-weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_failure_while_writing_leaves_nothing(source, tmp_path) -> None:
    g = optimizer.import_model(source)
    name = "model.layers.0.mlp.up_proj.weight"
    bad = source.parent / "nan"
    save_tiny("qwen2", bad)
    from safetensors.torch import load_file, save_file
    tensors = load_file(bad / "model.safetensors")
    tensors[name][3, 5] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidInput, match=f"'{name}' has 1 NaN/Inf"):
        optimizer.save(optimizer.import_model(bad), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    # an existing artifact survives a failed rebuild untouched
    good = optimizer.save(g, tmp_path / "out")
    before = (good / "manifest.json").read_bytes()
    with pytest.raises(InvalidInput):
        optimizer.save(optimizer.import_model(bad), good)
    assert (good / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_to_overwrite_a_non_artifact_directory(source, tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="not an artifact"):
        _build(source, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_load_checks_files_against_manifest(source, tmp_path) -> None:
    out = _build(source, tmp_path / "a")
    graph, manifest = load_artifact(out)
    assert len(graph.weights) == len(optimizer.import_model(source).weights)
    with open(out / "model.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(InvalidInput, match="model.safetensors"):
        load_artifact(out)


def test_runtime_sampling_is_seeded(source, tmp_path) -> None:
    """Temperature/top-p sampling: same seed, same tokens; top_p tiny == greedy."""
    from optimizer.kernels.sampling.reference import sample
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    draw = [sample(logits, 1.0, 0.9, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draw[0] == draw[1]
    assert sample(logits, 1.0, 1e-6, torch.Generator().manual_seed(1)) == int(logits.argmax())
    counts = torch.zeros(50)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4000):
        counts[sample(logits, 1.0, 1.0, gen)] += 1
    expected = torch.softmax(logits, 0)
    assert (counts / 4000 - expected).abs().max() < 0.03
