"""Graph passes. Each module holds one pass (or one rule set); `registry()` lists them."""

from __future__ import annotations

from optimizer.pass_api import GraphPass


def registry() -> dict[str, GraphPass]:
    """Every pass by name. Add a new pass here."""
    from optimizer.passes.awq import awq
    from optimizer.passes.cast_weights import cast_weights
    from optimizer.passes.cuda_layout import cuda_layout
    from optimizer.passes.dce import dce
    from optimizer.passes.fuse_add_rmsnorm import fuse_add_rmsnorm
    from optimizer.passes.fuse_gate_up import fuse_gate_up
    from optimizer.passes.fuse_qkv import fuse_qkv
    from optimizer.passes.fuse_rope_qk import fuse_rope_qk
    from optimizer.passes.gptq import gptq
    from optimizer.passes.quantize_rtn import quantize_rtn
    from optimizer.passes.smoothquant import smoothquant

    return {p.name: p for p in (dce, cast_weights, quantize_rtn, gptq, awq, smoothquant,
                                fuse_qkv, fuse_rope_qk, fuse_gate_up, fuse_add_rmsnorm,
                                cuda_layout)}
