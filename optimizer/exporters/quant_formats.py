"""The checkpoint formats a quantized graph can be exported to, keyed by name.

Each entry states what it can hold (`problem` gives the reason a scheme or a linear does not
fit), the tensors of one linear in its layout, and its ``quantization_config``. The layouts
themselves are in `optimizer.formats.gptq_layout` / `awq_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from optimizer.formats import awq_layout, gptq_layout


@dataclass(frozen=True)
class Scheme:
    """What every quantized linear of an exported model shares."""

    bits: int
    group_size: int          # 0: one group per output channel
    sym: bool
    act_order: bool          # the linears carry a g_idx


@dataclass(frozen=True)
class Linear:
    """One quantized linear in our terms: codes [N, K], scales [N, G], zeros [N, G] (the
    symmetric zero 2^(b-1) filled in), g_idx [K] (k // group_size when the node has none)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    explicit_g_idx: bool


@dataclass(frozen=True)
class QuantFormat:
    name: str
    problem: Callable[[Scheme, int, int, int], str | None]       # scheme, k, n, groups
    shapes: Callable[[Scheme, int, int, int], dict[str, tuple[torch.dtype, tuple]]]
    tensors: Callable[[Scheme, Linear], dict[str, torch.Tensor]]  # ValueError: cannot hold
    config: Callable[[Scheme], dict[str, Any]]


def _gptq_problem(s: Scheme, k: int, n: int, groups: int) -> str | None:
    if groups != gptq_layout.n_groups(k, s.group_size):
        return (f"{groups} groups of scales, but GPTQ stores ceil({k} / {s.group_size}) = "
                f"{gptq_layout.n_groups(k, s.group_size)}")
    return gptq_layout.layout_problem(k, n, s.bits)


def _gptq_tensors(s: Scheme, lin: Linear) -> dict[str, torch.Tensor]:
    codes, zeros = gptq_layout.lift_zero_zeros(lin.codes, lin.zeros, lin.g_idx, s.bits)
    return gptq_layout.to_gptq(codes, lin.scales, zeros, lin.g_idx, s.bits)


def _gptq_config(s: Scheme) -> dict[str, Any]:
    return {"quant_method": "gptq", "bits": s.bits, "group_size": s.group_size or -1,
            "desc_act": s.act_order, "sym": s.sym, "checkpoint_format": "gptq"}


def _awq_problem(s: Scheme, k: int, n: int, groups: int) -> str | None:
    if s.sym:
        return "AWQ GEMM stores asymmetric zero points; this scheme is symmetric"
    return awq_layout.layout_problem(k, n, s.bits, s.group_size)


def _awq_tensors(s: Scheme, lin: Linear) -> dict[str, torch.Tensor]:
    if lin.explicit_g_idx and not torch.equal(
            lin.g_idx.long(), torch.arange(lin.g_idx.shape[0]) // s.group_size):
        raise ValueError("act-order g_idx (not k // group_size): AWQ has no g_idx")
    return awq_layout.to_awq(lin.codes, lin.scales, lin.zeros)


def _awq_config(s: Scheme) -> dict[str, Any]:
    return {"quant_method": "awq", "bits": s.bits, "group_size": s.group_size,
            "zero_point": True, "version": "gemm"}


FORMATS: Mapping[str, QuantFormat] = MappingProxyType({
    "gptq": QuantFormat("gptq", _gptq_problem,
                        lambda s, k, n, g: gptq_layout.shapes(k, n, g, s.bits),
                        _gptq_tensors, _gptq_config),
    "awq": QuantFormat("awq", _awq_problem, lambda s, k, n, g: awq_layout.shapes(k, n, g),
                       _awq_tensors, _awq_config),
})
