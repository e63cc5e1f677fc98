"""The CUDA engine: a ``--target cuda`` artifact run with our GPU kernels.

- Weights go straight from the artifact's safetensors file into GPU memory; the int4
  weights are already in the kernel layout (passes/cuda_layout.py), so nothing is repacked.
- The KV cache is preallocated: per attention layer k, v [B, S, Hk, D] for B sequence slots
  of S positions (grown, by reallocating, only when a call needs more).
- Prefill runs one sequence's prompt op by op (GEMMs at M = prompt length, SDPA).
- Decode runs one token for each of B sequences, each at its own position, captured once per
  B in a CUDA graph and replayed (greedy: the argmax and the position increment are inside
  the graph, so a step needs no host work beyond the replay).

The op table is `cuda_ops.OPS`; the CPU reference interpreter is the yardstick
(tests/test_cuda_runtime_gpu.py compares the two on the same artifact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optimizer.errors import InvalidInput
from optimizer.ir import Graph
from optimizer.ir.weights import WeightStore
from optimizer.kernels.rope.reference import inv_freq
from optimizer.kernels.sampling.reference import greedy_step as greedy_reference
from optimizer.runtime.cuda_ops import OPS, Step, group_nodes


class KVCache:
    """k, v [B, S, Hk, D] per attention layer, in the engine's dtype."""

    def __init__(self, layers: dict[int, tuple[int, int]], batch: int, seq: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.batch, self.seq = batch, seq
        self.k = {i: torch.zeros(batch, seq, hk, d, dtype=dtype, device=device)
                  for i, (hk, d) in layers.items()}
        self.v = {i: torch.zeros_like(t) for i, t in self.k.items()}
        # the decode attention's arrival counters (one per sequence and kv head, kept zero)
        self.locks = torch.zeros(batch * max((hk for hk, _ in layers.values()), default=1),
                                 dtype=torch.int32, device=device)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]

    @property
    def nbytes(self) -> int:
        return sum(2 * t.numel() * t.element_size() for t in self.k.values())


@dataclass
class Captured:
    """A decode step for B sequences captured in a CUDA graph, with its static buffers."""

    graph: torch.cuda.CUDAGraph | None
    tokens: torch.Tensor      # [B] int64: this step's input tokens (the argmax after replay)
    positions: torch.Tensor   # [B] int64: this step's positions (incremented after replay)
    logits: torch.Tensor | None   # [B, V] the step's logits (the graph's output; None until
                                  # the first step)
    lengths: torch.Tensor     # [B] int32: positions + 1, kept so by the step itself
    counters: torch.Tensor    # [B] int32 zeros: the greedy kernel's arrival counters

    def set_positions(self, values: torch.Tensor | int) -> None:
        """Set the next step's positions (and with them the attention lengths)."""
        if isinstance(values, int):
            self.positions.fill_(values)
        else:
            self.positions.copy_(values)
        self.lengths.copy_(self.positions + 1)


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


class CudaEngine:
    def __init__(self, graph: Graph, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                 use_graphs: bool = True) -> None:
        missing = sorted({n.op for n in graph.nodes} - set(OPS))
        if missing:
            raise InvalidInput(None, f"the CUDA runtime has no kernel for ops {missing}")
        self.graph = graph
        self.nodes = group_nodes(list(graph.nodes), tuple(graph.outputs))   # the schedule
        self.device = torch.device(device)
        self.dtype = dtype
        self.use_graphs = use_graphs and self.device.type == "cuda"
        self.weights = self._load_weights(graph)
        self.prepared = self._prepare(graph)
        self.layers = {n.attr("layer"): (n.attr("n_kv_heads"), n.attr("head_dim"))
                       for n in graph.nodes if n.op == "attention"}
        self._freqs: dict[tuple, torch.Tensor] = {}
        self.cache: KVCache | None = None
        self.captured: dict[int, Captured] = {}
        self.vocab = graph.meta["model"]["vocab_size"]

    # ---- loading -----------------------------------------------------------------------

    def _load_weights(self, graph: Graph) -> dict[str, torch.Tensor]:
        """Every weight on the device; float weights in the engine's dtype (a --target cuda
        artifact stores them so already), quantization tensors as stored."""
        store = WeightStore()
        scales = {w for n in graph.nodes for role, w in n.weights if role == "scales"}
        out = {}
        for name, ref in graph.weights.items():
            t = store.load(ref)
            if t.is_floating_point() and name not in scales:
                t = t.to(self.dtype)
            out[name] = t.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out

    def _prepare(self, graph: Graph) -> dict[str, dict[str, torch.Tensor]]:
        """Per quantized node (by its output name) the dict its kernel takes: views of the
        loaded tensors plus runtime scratch (split-K arrival counters), never a repack."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for node in graph.nodes:
            if node.op == "w4a16_linear":
                from optimizer.kernels.w4a16.layout import n_locks
                p = {r: self.weights[node.weight(r)] for r in ("qweight", "sz", "perm")
                     if node.weight(r)}
                p["locks"] = torch.zeros(n_locks(p["qweight"].shape[1]), dtype=torch.int32,
                                         device=self.device)
                out[node.outputs[0]] = p
            elif node.op == "qlinear" and node.attr("bits") == 8:
                from optimizer.kernels.w8a16.layout import runtime_view
                out[node.outputs[0]] = runtime_view(
                    {r: self.weights[w] for r, w in node.weights if r != "bias"},
                    node.attr("group_size"), node.attr("in_features"))
            elif node.op == "qlinear_w8a8":
                from optimizer.kernels.w8a8.layout import runtime_view as w8a8_view
                out[node.outputs[0]] = w8a8_view(
                    {r: self.weights[w] for r, w in node.weights if r != "bias"})
        return out

    def freqs_of(self, node) -> torch.Tensor:
        key = (node.attr("head_dim"), node.attr("theta"), node.attr("scaling"))
        if key not in self._freqs:
            self._freqs[key] = inv_freq(key[0], key[1], dict(key[2]) if key[2] else None).to(
                self.device)
        return self._freqs[key]

    # ---- the cache ---------------------------------------------------------------------

    def ensure_cache(self, batch: int, seq: int) -> None:
        """Make room for ``batch`` sequences of ``seq`` positions (reallocating drops the
        captured graphs, which point into the old cache)."""
        c = self.cache
        if c is not None and c.batch >= batch and c.seq >= seq:
            return
        batch = max(batch, c.batch if c else 1)
        seq = _round_up(max(seq, c.seq if c else 0, 256), 256)
        self.cache, self.captured = None, {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.cache = KVCache(self.layers, batch, seq, self.dtype, self.device)

    # ---- forward passes ----------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, step: Step) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {"tokens": tokens, "positions": step.positions}
        last_use = {name: i for i, n in enumerate(self.nodes) for name in n.inputs}
        keep = set(self.graph.outputs)
        for i, node in enumerate(self.nodes):
            out = OPS[node.op](self, node, [env[n] for n in node.inputs], step)
            for name, t in zip(node.outputs, out if isinstance(out, tuple) else (out,)):
                env[name] = t
            for name in node.inputs:
                if last_use.get(name) == i and name not in keep:
                    env.pop(name, None)
        return env[self.graph.outputs[0]]

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """Run a fresh sequence's tokens ids [T] into cache slot ``slot``; logits [T, V]."""
        t = int(ids.numel())
        self.ensure_cache(slot + 1, t)
        tokens = ids.to(self.device, torch.int64)
        positions = torch.arange(t, device=self.device)
        return self._forward(tokens, Step(prefill=True, positions=positions, slot=slot))

    def _decode(self, cap: Captured) -> None:
        logits = self._forward(cap.tokens, Step(False, cap.positions, lengths=cap.lengths))
        cap.logits = logits                  # under capture: the graph's static output
        if logits.is_cuda:                   # argmax, positions + 1, lengths: one launch
            from optimizer.kernels.sampling.triton_greedy import greedy_step
            greedy_step(logits, cap.tokens, cap.positions, cap.lengths, cap.counters)
        else:
            tokens, positions, lengths = greedy_reference(logits, cap.positions)
            cap.tokens.copy_(tokens)
            cap.positions.copy_(positions)
            cap.lengths.copy_(lengths)

    def decoder(self, batch: int) -> Captured:
        """The decode step for sequences 0..batch-1 (captured in a CUDA graph on first use).
        Capture runs the step twice on garbage inputs first (warm-up: kernel compilation),
        writing cache row 0 of each slot: callers prefill after asking for the decoder."""
        if batch in self.captured:
            return self.captured[batch]
        if self.cache is None or self.cache.batch < batch:
            raise RuntimeError("ensure_cache(batch, ...) must come before decoder(batch)")
        dev = self.device
        cap = Captured(None, torch.zeros(batch, dtype=torch.int64, device=dev),
                       torch.zeros(batch, dtype=torch.int64, device=dev), None,
                       torch.ones(batch, dtype=torch.int32, device=dev),
                       torch.zeros(batch, dtype=torch.int32, device=dev))
        with torch.inference_mode():
            if self.use_graphs:
                side = torch.cuda.Stream(dev)
                side.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        cap.set_positions(0)
                        self._decode(cap)
                torch.cuda.current_stream(dev).wait_stream(side)
                cap.set_positions(0)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._decode(cap)
                cap.graph = graph
        self.captured[batch] = cap
        return cap

    def step(self, cap: Captured) -> None:
        """One decode step: reads cap.tokens/positions, leaves the argmax and position + 1
        there and the logits in cap.logits."""
        if cap.graph is not None:
            cap.graph.replay()
        else:
            with torch.inference_mode():
                self._decode(cap)
