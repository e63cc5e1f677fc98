"""W8A8 kernel layout: SmoothQuant's storage, passed through (it already suits the kernels).

Storage (passes/smoothquant.py, kernels/w8a8/reference.py): ``w_q`` int8 [N, K] (row n =
output channel, K contiguous), float32 scales ``s_w`` [N]; ``w[n, k] = w_q[n, k] * s_w[n]``.
int8 wgmma wants both operands K-major, which rows of x_q [M, K] and of w_q are, so nothing
moves. The dict `prepare` returns:

    qweight int8 [N, K]     the stored tensor itself (made contiguous).
    scales  float32 [N]     the stored scales (converted if stored in another float dtype).
    locks   int32 [L]       zeros: the split-K kernel's arrival counters (left at zero).
                            Runtime scratch, not weight data; one stream at a time.
"""

from __future__ import annotations

import torch


def n_locks(n: int) -> int:
    """Counters for up to 16 M tiles times ceil(N/16) N tiles (split-K is for small M)."""
    return 16 * -(-n // 16)


def prepare(qweight: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """int8 [N, K] weight codes and [N] scales -> the dict above, on the tensors' device."""
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise ValueError(f"qweight: expected int8 [N, K], got {qweight.dtype} "
                         f"{list(qweight.shape)}")
    n = qweight.shape[0]
    if tuple(scales.shape) != (n,) or not scales.is_floating_point():
        raise ValueError(f"scales: expected float [{n}], got {scales.dtype} "
                         f"{list(scales.shape)}")
    return {"qweight": qweight.contiguous(), "scales": scales.to(torch.float32).contiguous(),
            "locks": torch.zeros(n_locks(n), dtype=torch.int32, device=qweight.device)}


def runtime_view(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The kernels' dict from a loaded node's tensors (roles qweight, scales): views plus
    fresh split-K counters."""
    return prepare(tensors["qweight"], tensors["scales"])


def dequantize(prepared: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Float32 [N, K] = w_q * s_w (for tests)."""
    return prepared["qweight"][:, :k].float() * prepared["scales"].float()[:, None]
