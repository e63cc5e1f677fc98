"""Calibration data and layer-by-layer activation streaming for the calibrated passes
(GPTQ, AWQ, SmoothQuant).

Data: ``calib`` names a text file (plain text, or jsonl with a ``text`` field per line),
tokenised with the model's own tokenizer and cut into ``samples`` windows of ``seq_len``
tokens; without a file the model writes its own calibration set (seeded sampling from the
unquantized model, each sample starting from a random ordinary token). Nothing is
downloaded.

Streaming: `LayerStream` holds the activations entering one decoder layer for every sample
and runs that layer's nodes with only that layer's weights materialised, so peak memory
does not grow with the number of layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from optimizer.errors import InvalidInput
from optimizer.interpreter import Interpreter
from optimizer.ir import Graph, Node
from optimizer.ir.weights import WeightStore
from optimizer.passes.quant_rewrite import check_finite, layer_of
from optimizer.progress import progress


@dataclass(frozen=True)
class CalibOptions:
    """Calibration options every calibrated pass accepts."""

    calib: str = ""          # text/jsonl file; empty: the model generates its own samples
    calib_samples: int = 128
    calib_seq_len: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.calib_samples < 1:
            raise ValueError(f"calib_samples: expected >= 1, got {self.calib_samples}")
        if self.calib_seq_len < 2:
            raise ValueError(f"calib_seq_len: expected >= 2, got {self.calib_seq_len}")
        if self.calib and not Path(self.calib).is_file():
            raise ValueError(f"calib: file '{self.calib}' not found")


def _tokenizer(graph: Graph):
    from tokenizers import Tokenizer
    text = graph.meta.get("tokenizer")
    if not text:
        raise InvalidInput(None, "calibration needs the model's tokenizer, and this model "
                                 "has none")
    return Tokenizer.from_str(text)


def read_calibration_text(path: Path) -> list[str]:
    """Documents of a text file, or of a jsonl file's ``text`` fields."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise InvalidInput(path, f"line {n} is not JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InvalidInput(path, f"line {n} has no string field 'text'")
            docs.append(obj["text"])
    else:
        docs = [raw]
    if not any(d.strip() for d in docs):
        raise InvalidInput(path, "no calibration text in the file")
    return docs


def samples_from_file(graph: Graph, opts: CalibOptions) -> list[torch.Tensor]:
    tok = _tokenizer(graph)
    ids: list[int] = []
    for doc in read_calibration_text(Path(opts.calib)):
        ids += tok.encode(doc, add_special_tokens=False).ids
    if len(ids) < 2:
        raise InvalidInput(opts.calib, "calibration text is shorter than 2 tokens")
    seq = min(opts.calib_seq_len, len(ids))
    starts = list(range(0, len(ids) - seq + 1, seq))
    if len(starts) > opts.calib_samples:   # spread the windows over the whole text
        gen = torch.Generator().manual_seed(opts.seed)
        pick = torch.randperm(len(starts), generator=gen)[: opts.calib_samples]
        starts = sorted(starts[i] for i in pick.tolist())
    return [torch.tensor(ids[s:s + seq]) for s in starts]


def samples_from_model(graph: Graph, opts: CalibOptions) -> list[torch.Tensor]:
    """The model writes ``calib_samples`` sequences of ``calib_seq_len`` tokens (all decoded
    together, one batch), sampling at temperature 1 with top-p 0.95, seeded."""
    from optimizer.kernels.sampling.reference import sample_batch

    tok = _tokenizer(graph)
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    vocab = graph.meta["model"]["vocab_size"]
    gen = torch.Generator().manual_seed(opts.seed)
    ordinary = torch.tensor([i for i in range(vocab) if i not in special])
    n, length = opts.calib_samples, opts.calib_seq_len
    seqs = [ordinary[torch.randint(len(ordinary), (n,), generator=gen)]]
    store = WeightStore()
    ex = Interpreter(graph, LazyWeights(graph, store))
    seq_ids = torch.arange(n)
    for pos in progress(range(length - 1), length - 1, "generating calibration samples"):
        logits = ex.step(seqs[-1], torch.full((n,), pos), seq_ids)
        seqs.append(sample_batch(logits, 1.0, 0.95, gen))
    return list(torch.stack(seqs, 1))


def calibration_samples(graph: Graph, opts: CalibOptions) -> list[torch.Tensor]:
    return samples_from_file(graph, opts) if opts.calib else samples_from_model(graph, opts)


class LazyWeights(dict):
    """A weight mapping that loads (memory-maps) each tensor when first used."""

    def __init__(self, graph: Graph, store: WeightStore) -> None:
        super().__init__()
        self.graph, self.store = graph, store

    def __missing__(self, name: str) -> torch.Tensor:
        t = self.store.load(self.graph.weights[name])
        self[name] = t
        return t


def layer_nodes(graph: Graph) -> dict[int | None, list[int]]:
    """Node indices by decoder layer (None: the nodes outside layers)."""
    out: dict[int | None, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        out.setdefault(layer_of(node), []).append(i)
    return out


class LayerStream:
    """Activations of every calibration sample, advanced one decoder layer at a time.

    ``env[s]`` maps value names to tensors for sample s; it starts with the embedding output
    and, after `advance`, holds the layer's output under its value name.
    """

    def __init__(self, graph: Graph, samples: list[torch.Tensor], chunk: int = 8) -> None:
        self.graph = graph
        self.samples = samples
        self.chunk = chunk
        self.layers = layer_nodes(graph)
        first = min(i for i in self.layers if i is not None)
        head = [graph.nodes[i] for i in range(self.layers[first][0])]
        store = WeightStore()
        ex = Interpreter(graph, LazyWeights(graph, store))
        self.envs: list[dict[str, torch.Tensor]] = []
        for ids in samples:
            env = {"tokens": ids, "positions": torch.arange(len(ids))}
            ex.run_nodes(tuple(head), env, keep=set())
            self.envs.append(env)

    def units(self, include_tail: bool) -> list[int | str]:
        """The decoder layers in order, then ``"tail"`` (final norm, lm_head) if asked."""
        layers = sorted(i for i in self.layers if i is not None)
        return layers + (["tail"] if include_tail else [])

    def nodes(self, layer: int | str) -> tuple[Node, ...]:
        if layer == "tail":
            last = max(i for k, v in self.layers.items() if k is not None for i in v)
            return tuple(n for i, n in enumerate(self.graph.nodes) if i > last)
        return tuple(self.graph.nodes[i] for i in self.layers[layer])

    def batches(self) -> Iterator[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]]:
        """Chunks of samples packed into one step: (sample indices, env, seq ids)."""
        for start in range(0, len(self.envs), self.chunk):
            idx = list(range(start, min(start + self.chunk, len(self.envs))))
            env = {k: torch.cat([self.envs[i][k] for i in idx]) for k in self.envs[idx[0]]}
            seqs = torch.cat([torch.full((len(self.envs[i]["positions"]),), j)
                              for j, i in enumerate(idx)])
            yield idx, env, seqs

    def run(self, layer: int | str, weights: dict[str, torch.Tensor], until: str | None = None,
            visit: Callable[[dict[str, torch.Tensor]], None] | None = None,
            commit: bool = False, nodes: tuple[Node, ...] | None = None,
            keep: set[str] = frozenset()) -> None:
        """Run layer ``layer`` (up to the node producing ``until``, or all of it; or the given
        ``nodes``, e.g. a layer already rewritten) over every sample with ``weights``
        (weight name -> tensor), calling ``visit(env)`` per chunk; values in ``keep`` stay
        in env for it. With ``commit`` the last node's output replaces the stream's
        activations."""
        nodes = nodes if nodes is not None else self.nodes(layer)
        if until is not None:   # (an input from outside the layer needs no nodes run)
            stop = next((j for j, n in enumerate(nodes) if until in n.outputs), -1)
            nodes = nodes[: stop + 1]
        ex = Interpreter(self.graph, weights)
        out_name = nodes[-1].outputs[0] if nodes else until
        for idx, env, seqs in self.batches():
            ex.reset()
            ex.run_nodes(nodes, env, seqs,
                         keep={out_name} | set(keep) | ({until} if until else set()))
            if visit:
                visit(env)
            if commit:
                sizes = [len(self.envs[i]["positions"]) for i in idx]
                for i, part in zip(idx, env[out_name].split(sizes)):
                    old = self.envs[i]
                    self.envs[i] = {"tokens": old["tokens"], "positions": old["positions"],
                                    out_name: part}

    def layer_weights(self, layer: int | str) -> dict[str, torch.Tensor]:
        """Float weights of one layer, checked finite (NaN/Inf is invalid input naming the
        tensor). A fresh store per layer, so earlier layers' file maps are released and
        only this layer's weights are held in memory."""
        store = WeightStore()
        out = {}
        for name in {w for n in self.nodes(layer) for _, w in n.weights}:
            ref = self.graph.weights[name]
            out[name] = store.load(ref).float()
            check_finite(ref, out[name])
        return out
