"""Build a `tokenizers.Tokenizer` from the tokenizer a GGUF file describes in its metadata.

A GGUF carries no tokenizer.json; llama.cpp stores the vocabulary under `tokenizer.ggml.*`:
`model` (the algorithm), `pre` (the pre-tokenizer), `tokens` (id -> string), `token_type`
(1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte), `merges` ("a b" strings,
byte-level BPE only), `scores` (SentencePiece only) and the special token ids.

Supported:

* model 'gpt2' -- byte-level BPE. `pre` picks the pre-tokenizer: 'smollm' (digits split one by
  one, then the GPT-2 regex), 'llama-bpe' (Llama 3's split regex; whole words found in the
  vocabulary are taken as-is, like llama.cpp's `ignore_merges`) and 'default'/'gpt2' (the
  GPT-2 regex).
* model 'llama' -- SentencePiece BPE as in Llama 2 / TinyLlama: merges are recovered from the
  token scores, '\u2581' stands for a space, a space is prepended to each run of text when
  `add_space_prefix` (default true), and characters outside the vocabulary fall back to the
  <0xNN> byte tokens.

Control tokens (type 3, and the unknown token for 'llama') become special added tokens and
user-defined tokens (type 4) plain added tokens; both are always matched whole in the text.
BOS (EOS) is added by a TemplateProcessing post-processor only when `add_bos_token`
(`add_eos_token`) says so; absent the key, BOS is added for 'llama' and 'llama-bpe' as
llama.cpp does, and not otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

from optimizer.errors import InvalidInput

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4

LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRE = frozenset({"llama-bpe", "llama3", "llama-v3"})
_GPT2_PRE = frozenset({"default", "gpt2", "gpt-2"})
_SMOLLM_PRE = frozenset({"smollm"})

_SPECIAL_KEYS = (
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
)


def special_token_ids(meta: dict[str, Any]) -> dict[str, int | None]:
    """`{"bos", "eos", "unk", "pad"}` -> the id in `tokenizer.ggml.<name>_token_id`, or None.

    Raises `InvalidInput` (without a path) when an id present is not a non-negative integer.
    """
    out: dict[str, int | None] = {}
    for name, key in _SPECIAL_KEYS:
        value = meta.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise InvalidInput(None, f"{key} is {value!r}, not a non-negative integer")
        out[name] = value
    return out


def _str_list(meta: dict[str, Any], key: str, path: str | Path) -> list[str]:
    value = meta.get(key)
    if value is None:
        raise InvalidInput(path, f"metadata has no {key}")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(path, f"{key} is not an array of strings")
    return value


def _num_list(meta: dict[str, Any], key: str, n: int, path: str | Path) -> list[Any] | None:
    """`meta[key]` as a list of n numbers, or None when absent."""
    value = meta.get(key)
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise InvalidInput(path, f"{key} is not an array of numbers")
    if arr.shape[0] != n:
        raise InvalidInput(path, f"{key} has {arr.shape[0]} entries but there are {n} tokens")
    return arr.tolist()


def _flag(meta: dict[str, Any], key: str, default: bool, path: str | Path) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(path, f"{key} is {value!r}, not a bool")
    return value


def _vocab(tokens: Sequence[str]) -> dict[str, int]:
    """token -> id; where a string repeats, the last id wins (as in llama.cpp's token_to_id)."""
    return {tok: i for i, tok in enumerate(tokens)}


def _bpe_merges(meta: dict[str, Any], vocab: dict[str, int], path: str | Path) -> list[
    tuple[str, str]
]:
    merges: list[tuple[str, str]] = []
    for i, merge in enumerate(_str_list(meta, "tokenizer.ggml.merges", path)):
        parts = merge.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise InvalidInput(path, f"merge {i} {merge!r} is not two tokens joined by a space")
        for part in parts:
            if part not in vocab:
                raise InvalidInput(path, f"merge {i} {merge!r} uses {part!r}, not in the vocab")
        if parts[0] + parts[1] not in vocab:
            raise InvalidInput(path, f"merge {i} {merge!r} makes a token not in the vocab")
        merges.append((parts[0], parts[1]))
    return merges


def sentencepiece_merges(
    tokens: Sequence[str], scores: Sequence[float], mergeable: Sequence[bool]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece BPE's score-driven merging.

    SentencePiece (and llama.cpp's SPM tokenizer) repeatedly merges the adjacent pair whose
    concatenation is the vocabulary piece of highest score. As BPE ranks: every split
    (left, right) of each mergeable token t with both halves mergeable tokens is a merge, ranked
    by score(t) descending, then len(left) descending, then len(right) descending, and within
    one token by (id(left), id(right)) -- the order transformers' `generate_merges` produces.
    Only normal tokens take part (`mergeable`); control, byte and user-defined ones never result
    from merging text.
    """
    vocab = {tok: i for i, tok in enumerate(tokens) if mergeable[i]}
    ranked: list[tuple[float, int, int, str, str]] = []
    for tok, tid in vocab.items():
        local = [
            (vocab[tok[:k]], vocab[tok[k:]], tok[:k], tok[k:])
            for k in range(1, len(tok))
            if tok[:k] in vocab and tok[k:] in vocab
        ]
        local.sort()
        score = float(scores[tid])
        ranked.extend((score, len(left), len(right), left, right) for _, _, left, right in local)
    ranked.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)
    return [(left, right) for _, _, _, left, right in ranked]


def _gpt2_tokenizer(
    meta: dict[str, Any], tokens: list[str], path: str | Path
) -> tuple[Tokenizer, bool]:
    """Byte-level BPE; returns the tokenizer and llama.cpp's default for add_bos_token."""
    pre = meta.get("tokenizer.ggml.pre", "default")
    if not isinstance(pre, str):
        raise InvalidInput(path, f"tokenizer.ggml.pre is {pre!r}, not a string")
    vocab = _vocab(tokens)
    merges = _bpe_merges(meta, vocab, path)
    add_bos_default = False
    if pre in _SMOLLM_PRE:
        pre_tok = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        ignore_merges = False
    elif pre in _LLAMA3_PRE:
        pre_tok = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        ignore_merges = True
        add_bos_default = True
    elif pre in _GPT2_PRE:
        pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        ignore_merges = False
    else:
        supported = sorted(_SMOLLM_PRE | _LLAMA3_PRE | _GPT2_PRE)
        raise InvalidInput(
            path, f"pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported "
            f"(supported: {', '.join(supported)})"
        )
    model = BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    return tok, add_bos_default


def _llama_tokenizer(
    meta: dict[str, Any], tokens: list[str], types: list[int] | None, unk: int | None,
    path: str | Path,
) -> Tokenizer:
    """SentencePiece BPE with byte fallback, as llama.cpp's SPM tokenizer."""
    scores = _num_list(meta, "tokenizer.ggml.scores", len(tokens), path)
    if scores is None:
        raise InvalidInput(path, "tokenizer model 'llama' needs tokenizer.ggml.scores")
    mergeable = [True] * len(tokens) if types is None else [t == _NORMAL for t in types]
    merges = sentencepiece_merges(tokens, scores, mergeable)
    unk_token = tokens[unk] if unk is not None else None
    model = BPE(
        vocab=_vocab(tokens), merges=merges, unk_token=unk_token, fuse_unk=True,
        byte_fallback=True,
    )
    tok = Tokenizer(model)
    add_space_prefix = _flag(meta, "tokenizer.ggml.add_space_prefix", True, path)
    # llama.cpp: text = (" " if add_space_prefix and the fragment starts the text or follows a
    # special token) + fragment, then " " -> "\u2581". The normalizer runs per fragment between
    # added tokens, so Prepend reproduces that exactly (Metaspace would not double a leading
    # space).
    steps: list[normalizers.Normalizer] = []
    if add_space_prefix:
        steps.append(normalizers.Prepend("\u2581"))
    steps.append(normalizers.Replace(" ", "\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    dec: list[decoders.Decoder] = [
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()
    ]
    if add_space_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def tokenizer_from_gguf(meta: dict[str, Any], path: str | Path) -> Tokenizer:
    """The tokenizer described by GGUF metadata `meta` (from `read_gguf(path).metadata`).

    `path` only names the file in errors. Raises `InvalidInput` for an unsupported
    `tokenizer.ggml.model` or `tokenizer.ggml.pre`, or malformed tokenizer metadata (missing
    tokens/merges/scores, arrays of the wrong length, special ids out of range, merges that
    name tokens not in the vocabulary).
    """
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise InvalidInput(path, "metadata has no tokenizer.ggml.model")
    tokens = _str_list(meta, "tokenizer.ggml.tokens", path)
    if not tokens:
        raise InvalidInput(path, "tokenizer.ggml.tokens is empty")
    raw_types = _num_list(meta, "tokenizer.ggml.token_type", len(tokens), path)
    types = None if raw_types is None else [int(t) for t in raw_types]
    try:
        ids = special_token_ids(meta)
    except InvalidInput as exc:
        raise InvalidInput(path, exc.problem) from None
    for name, tid in ids.items():
        if tid is not None and tid >= len(tokens):
            raise InvalidInput(
                path, f"{name} token id {tid} is outside the vocabulary of {len(tokens)} tokens"
            )

    special_types = {_CONTROL}
    if model == "gpt2":
        tok, add_bos_default = _gpt2_tokenizer(meta, tokens, path)
    elif model == "llama":
        tok = _llama_tokenizer(meta, tokens, types, ids["unk"], path)
        add_bos_default = True
        special_types.add(_UNKNOWN)
    else:
        raise InvalidInput(
            path, f"tokenizer model {model!r} (tokenizer.ggml.model) is not supported "
            "(supported: gpt2, llama)"
        )

    if types is not None:
        special = [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, types, strict=True) if ty in special_types
        ]
        user = [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types, strict=True) if ty == _USER_DEFINED
        ]
        if special:
            tok.add_special_tokens(special)
        if user:
            tok.add_tokens(user)

    add_bos = _flag(meta, "tokenizer.ggml.add_bos_token", add_bos_default, path)
    add_eos = _flag(meta, "tokenizer.ggml.add_eos_token", False, path)
    specials: dict[str, int] = {}
    head: list[str] = []
    tail: list[str] = []
    for flag, name, where in ((add_bos, "bos", head), (add_eos, "eos", tail)):
        if not flag:
            continue
        tid = ids[name]
        if tid is None:
            raise InvalidInput(
                path, f"tokenizer.ggml.add_{name}_token is true but there is no {name} token id"
            )
        where.append(tokens[tid])
        specials[tokens[tid]] = tid
    if specials:
        tok.post_processor = processors.TemplateProcessing(
            single=[*head, "$A:0", *tail],
            pair=[*head, "$A:0", *tail, *head, "$B:1", *tail],
            special_tokens=list(specials.items()),
        )
    return tok
