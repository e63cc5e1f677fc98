"""Cast floating-point weights to one storage dtype (the artifact stores them so).

Only tensors read as a node's ``weight`` or ``bias`` are cast: quantization parameters
(qlinear's float16 ``scales``, qlinear_w8a8's ``scales``) keep the dtype their op requires."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from optimizer.ir import FLOAT_DTYPES, Graph, Transform
from optimizer.pass_api import graph_pass


@dataclass(frozen=True)
class CastOptions:
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype: expected one of {FLOAT_DTYPES}, got {self.dtype!r}")


@graph_pass("cast-weights", CastOptions)
def cast_weights(graph: Graph, opts: CastOptions) -> Graph:
    """Record a cast of every floating weight to ``dtype``; applied when weights are written.
    Activations stay in their dtype (the CPU runtime computes in float32)."""
    castable = {w for n in graph.nodes for role, w in n.weights if role in ("weight", "bias")}
    weights = {}
    for name, w in graph.weights.items():
        if name in castable and w.dtype in FLOAT_DTYPES and w.dtype != opts.dtype:
            w = dataclasses.replace(w, dtype=opts.dtype,
                                    transforms=w.transforms + (Transform("cast", (opts.dtype,)),))
        weights[name] = w
    return graph.replace(weights=weights)
