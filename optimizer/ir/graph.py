"""The intermediate representation: values, lazy weight handles, nodes and the graph.

Everything here is immutable. A pass builds a new `Graph` (usually with `Graph.replace`)
instead of mutating one; nodes change through `dataclasses.replace`.

Shapes hold ints or symbolic dimension names (``"T"`` is the number of tokens in a step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

Dim = int | str
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
DTYPES = FLOAT_DTYPES + ("int64", "int32", "int8", "uint8")


@dataclass(frozen=True, slots=True)
class Value:
    """An activation flowing between nodes: name, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True, slots=True)
class Transform:
    """A recorded weight transform, applied when the weight is materialised.

    ``op`` is one of: ``"unpermute_qk"`` (args: (n_heads,)) undoing llama.cpp's rotary
    permutation of Q/K rows; ``"cast"`` (args: (dtype,)).
    """

    op: str
    args: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return f"{self.op}({', '.join(str(a) for a in self.args)})"


@dataclass(frozen=True, slots=True)
class WeightRef:
    """A lazy handle to a tensor stored in a file; nothing is read until `load_weight`.

    ``dtype``/``shape`` describe the tensor after ``transforms``. ``fmt`` is
    ``"safetensors"`` or ``"gguf"``; ``key`` is the tensor's name inside ``file``.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    key: str
    fmt: str
    transforms: tuple[Transform, ...] = ()

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]


DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
               "int8": 1, "uint8": 1}


@dataclass(frozen=True, slots=True)
class Node:
    """One operation: ``outputs = op(inputs; weights; attrs)``.

    ``weights`` and ``attrs`` are sorted tuples of pairs so nodes stay hashable and
    print the same way every time.
    """

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[tuple[str, str], ...] = ()
    attrs: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def make(op: str, inputs: Iterable[str], outputs: Iterable[str],
             weights: Mapping[str, str] | None = None,
             attrs: Mapping[str, Any] | None = None) -> "Node":
        return Node(op, tuple(inputs), tuple(outputs),
                    tuple(sorted((weights or {}).items())),
                    tuple(sorted((attrs or {}).items())))

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def weight(self, role: str) -> str | None:
        for k, v in self.weights:
            if k == role:
                return v
        return None


@dataclass(frozen=True)
class Graph:
    """A whole model: graph inputs, nodes in topological order, outputs, weights, metadata.

    ``values`` maps every value name (graph inputs included) to its `Value`.
    ``meta`` holds JSON-serialisable model facts (``model`` config, ``tokenizer`` JSON
    text, ``sources``, ``pipeline``, per-pass ``quantization`` reports).
    ``resources`` keeps alive what the weight handles point into (e.g. a pass's scratch
    directory of computed tensors); it travels with `replace` and is never serialised.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]
    values: Mapping[str, Value]
    weights: Mapping[str, WeightRef]
    meta: Mapping[str, Any] = field(default_factory=dict)
    resources: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("values", "weights", "meta"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def replace(self, **changes: Any) -> "Graph":
        return dataclasses.replace(self, **changes)

    def with_meta(self, **entries: Any) -> "Graph":
        return self.replace(meta={**self.meta, **entries})

    def users(self) -> dict[str, list[int]]:
        """Value name -> indices of the nodes that read it."""
        out: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                out.setdefault(name, []).append(i)
        return out

    @property
    def weight_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights.values())

    @property
    def n_params(self) -> int:
        return sum(w.numel for w in self.weights.values())
