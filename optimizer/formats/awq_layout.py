"""The AWQ GEMM checkpoint layout (``version: "gemm"``) <-> our codes, scales and zeros.

One 4-bit quantized linear (K inputs, N outputs, G = K / group_size groups, all full) is
stored, as AutoAWQ's ``WQLinear_GEMM.from_linear`` writes it and transformers/vLLM load it,
under ``<module>.{qweight,qzeros,scales}``::

    qweight  int32   [K, N/8]   row k = codes q[0..N, k] packed along N, interleaved
    qzeros   int32   [G, N/8]   row g = zero points z[0..N, g], same packing (no offset)
    scales   float16 [G, N]

Packing: word j of a row holds output channels 8j..8j+7, nibble i (bits 4i..4i+3) holding
channel ``8j + AWQ_ORDER[i]`` with ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``; channels 0..7
holding codes 0..7 give 0x75316420. Loaders undo it with the inverse order
``[0, 4, 1, 5, 2, 6, 3, 7]`` (AutoAWQ ``dequantize_gemm``).

Math: ``w[n, k] = (q[n, k] - z[n, k // group_size]) * s[n, k // group_size]``: zero points
are always stored (asymmetric), there is no g_idx (no act-order), no partial last group.
"""

from __future__ import annotations

import torch

from optimizer.formats.int32_words import pack_words, unpack_words

BITS = 4
PACK = 8                                    # codes per int32 word
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
ROLES = ("qweight", "qzeros", "scales")


def layout_problem(k: int, n: int, bits: int, group_size: int) -> str | None:
    """Why a [N, K] linear of ``bits`` in groups of ``group_size`` cannot be stored, or None."""
    if bits != BITS:
        return f"AWQ GEMM holds 4-bit codes only, not {bits}-bit"
    if group_size <= 0:
        return "AWQ GEMM needs a group size > 0 (no per-channel scheme)"
    if k % group_size:
        return (f"in_features {k} is not a multiple of group_size {group_size} (AWQ has no "
                f"partial last group)")
    if n % PACK:
        return f"out_features {n} is not a multiple of {PACK}"
    return None


def shapes(k: int, n: int, groups: int) -> dict[str, tuple[torch.dtype, tuple]]:
    """Role -> (dtype, shape) of the stored tensors."""
    return {"qweight": (torch.int32, (k, n // PACK)),
            "qzeros": (torch.int32, (groups, n // PACK)),
            "scales": (torch.float16, (groups, n))}


def _interleave(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Permute the last dim within each run of 8: out[..., 8j + i] = t[..., 8j + order[i]]."""
    rows, cols = t.shape
    return t.reshape(rows, cols // PACK, PACK)[..., list(order)].reshape(rows, cols)


def to_awq(codes: torch.Tensor, scales: torch.Tensor,
           zeros: torch.Tensor) -> dict[str, torch.Tensor]:
    """codes [N, K], scales [N, G], integer zeros [N, G] -> the stored tensors."""
    z = zeros.round().to(torch.int64)
    return {"qweight": pack_words(_interleave(codes.t(), AWQ_ORDER), BITS),   # [K, N/8]
            "qzeros": pack_words(_interleave(z.t(), AWQ_ORDER), BITS),       # [G, N/8]
            "scales": scales.t().to(torch.float16).contiguous()}             # [G, N]


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `to_awq`: (codes int64 [N, K], scales float16 [N, G], zeros int64 [N, G])."""
    codes = _interleave(unpack_words(qweight, BITS), AWQ_REVERSE_ORDER)      # [K, N]
    zeros = _interleave(unpack_words(qzeros, BITS), AWQ_REVERSE_ORDER)       # [G, N]
    return codes.t().contiguous(), scales.t().contiguous(), zeros.t().contiguous()
