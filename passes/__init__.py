"""Graph passes. Each module holds one pass (or one rule set); `registry()` lists them."""

from __future__ import annotations

from optimizer.pass_api import GraphPass


def registry() -> dict[str, GraphPass]:
    """Every pass by name. Add a new pass here."""
    from optimizer.passes.cast_weights import cast_weights
    from optimizer.passes.dce import dce
    from optimizer.passes.gptq import gptq
    from optimizer.passes.quantize_rtn import quantize_rtn

    return {p.name: p for p in (dce, cast_weights, quantize_rtn, gptq)}
