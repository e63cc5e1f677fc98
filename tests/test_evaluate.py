"""Sliding-window perplexity (`optimizer.evaluate`) and `optimize eval`.

The reference is written independently, the way the Hugging Face guide "Perplexity of
fixed-length models" does it (labels masked with -100, shifted by one), running
`transformers` in float64 on the same windows. Tolerance: 1e-4 relative on perplexity.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import optimizer
from optimizer.cli import main
from optimizer.evaluate import perplexity, sliding_windows, tokenize_text
from tiny_models import save_tiny

TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(95)]   # + [UNK] = 96 = the tiny model's vocab


def _save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over WORDS, so the tiny model has a tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny Llama (float64 transformers model), its HF dir, our artifact and runtime."""
    root = tmp_path_factory.mktemp("tiny")
    model = save_tiny("llama", root / "src")
    _save_tokenizer(root / "src")
    optimizer.save(optimizer.import_model(root / "src"), root / "art")
    return {"model": model.double(), "src": root / "src", "art": root / "art",
            "rt": optimizer.runtime.load(root / "art")}


def _reference(model: torch.nn.Module, ids: list[int], context: int,
               stride: int) -> tuple[float, int]:
    """(ppl, tokens scored) the Hugging Face guide's way, in float64."""
    x = torch.tensor(ids)[None]
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        trg_len = end - prev_end
        inputs = x[:, begin:end]
        labels = inputs.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(inputs).logits.to(torch.float64)
        logp = torch.log_softmax(logits[0, :-1], dim=-1)
        target = labels[0, 1:]
        keep = target != -100
        nll_sum -= logp[keep].gather(1, target[keep][:, None]).sum().item()
        n_scored += int(keep.sum())
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll_sum / n_scored), n_scored


def _ids(n: int, seed: int = 3) -> list[int]:
    return torch.randint(0, 96, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("n, context, stride", [
    (150, 32, 12),   # overlapping windows, last one partial
    (96, 32, 16),    # the last window ends exactly at the end
    (150, 32, 32),   # stride == context: disjoint windows
    (20, 32, 8),     # shorter than one window
    (2, 2, 1),       # the smallest case
])
def test_perplexity_matches_reference(tiny: dict, n: int, context: int, stride: int) -> None:
    ids = _ids(n)
    calls: list[tuple[int, int]] = []
    got = perplexity(tiny["rt"], ids, context, stride, progress=lambda i, k: calls.append((i, k)))
    ref_ppl, ref_n = _reference(tiny["model"], ids, context, stride)
    assert abs(got.ppl / ref_ppl - 1) < TOL
    assert got.n_tokens == ref_n
    assert math.isclose(got.ppl, math.exp(got.nll))
    assert calls == [(i, got.n_windows) for i in range(1, got.n_windows + 1)]
    if stride < context:
        assert got.n_tokens == n - 1
    else:   # each window's first token has no context in that window
        assert got.n_tokens == n - got.n_windows
    if n <= context:
        assert got.n_windows == 1


@pytest.mark.parametrize("n, context, stride", [
    (150, 32, 12), (96, 32, 16), (150, 32, 32), (20, 32, 8), (1000, 512, 256), (513, 512, 1),
])
def test_each_token_scored_at_most_once(n: int, context: int, stride: int) -> None:
    windows = sliding_windows(n, context, stride)
    scored = [t for w in windows for t in range(w.score_from, w.end)]
    assert len(scored) == len(set(scored))
    assert all(w.begin < w.score_from < w.end <= w.begin + context for w in windows)
    assert windows[-1].end == n
    if stride < context:
        assert sorted(scored) == list(range(1, n))


@pytest.mark.parametrize("kwargs, word", [
    (dict(context=1), "context"), (dict(stride=0), "stride"),
    (dict(context=8, stride=9), "stride"), (dict(ids=[5]), "ids"), (dict(ids=[]), "ids"),
])
def test_bad_arguments(tiny: dict, kwargs: dict, word: str) -> None:
    args = {"ids": _ids(10), "context": 8, "stride": 4, **kwargs}
    with pytest.raises(ValueError, match=word):
        perplexity(tiny["rt"], **args)


def test_tokenize_text(tiny: dict) -> None:
    assert tokenize_text(tiny["rt"], "w0 w5 w94 nope") == [1, 6, 95, 0]


def _table(out: str) -> dict[str, list[str]]:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["model", "perplexity", "tokens", "seconds", "vs", "first"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_cli_compares_models(tiny: dict, tmp_path: Path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i}" for i in _ids(80, seed=4)) + "\n")
    rc = main(["eval", str(tiny["src"]), str(tiny["art"]), "--text", str(text),
               "--context", "16", "--stride", "8", "--max-tokens", "60"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = _table(out)
    expected = perplexity(tiny["rt"], tokenize_text(tiny["rt"], text.read_text())[:60], 16, 8)
    for name in (str(tiny["src"]), str(tiny["art"])):
        assert float(rows[name][0]) == pytest.approx(expected.ppl, abs=1e-4)
        assert int(rows[name][1]) == 59
    assert rows[str(tiny["src"])][3] == "+0.0%"
    assert re.fullmatch(r"[+-]\d+\.\d%", rows[str(tiny["art"])][3])
    progress = [line for line in err.splitlines() if "window" in line]
    assert 0 < len(progress) <= 20   # not a terminal: at most ~10 lines per model


@pytest.mark.slow
def test_cli_smollm2(smollm2_gguf: Path, capsys) -> None:
    rc = main(["eval", "smollm2", "--text", str(ROOT / "bench" / "eval.txt"),
               "--max-tokens", "300", "--context", "128", "--stride", "64"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    ppl, n_tokens = _table(out)["smollm2"][:2]
    assert math.isfinite(float(ppl)) and 2 < float(ppl) < 100
    assert int(n_tokens) == 299


def _bad(args: list[str], capsys) -> str:
    rc = main(["eval", *args])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_text_file(tmp_path: Path, capsys) -> None:
    line = _bad(["smollm2", "--text", str(tmp_path / "nope.txt")], capsys)
    assert "nope.txt" in line


def test_empty_text_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    line = _bad(["smollm2", "--text", str(tmp_path / "empty.txt")], capsys)
    assert "empty.txt" in line and "empty" in line


def test_text_too_short(tiny: dict, tmp_path: Path, capsys) -> None:
    (tmp_path / "one.txt").write_text("w1\n")
    line = _bad([str(tiny["art"]), "--text", str(tmp_path / "one.txt")], capsys)
    assert "one.txt" in line and "1 token" in line
