"""The GPTQ checkpoint layout ("gptq" v1 format) <-> our codes, scales, zeros and g_idx.

One quantized linear (K inputs, N outputs, b bits, G = ceil(K / group_size) groups, the last
possibly partial) is stored, as AutoGPTQ's ``QuantLinear.pack`` and GPTQModel write it and
transformers/optimum/vLLM load it, under ``<module>.{qweight,qzeros,scales,g_idx}``::

    qweight  int32   [K*b/32, N]  column n = codes q[n, 0..K) packed along K
    qzeros   int32   [G, N*b/32]  row g = (z[0..N, g] - 1) mod 2^b packed along N
    scales   float16 [G, N]
    g_idx    int32   [K]          group of input channel k (k // group_size without
                                  act-order; any grouping with act-order / desc_act)

Packing (`int32_words`): LSB-first bit streams cut into 32-bit words; for b = 4 word j of a
column holds codes 8j..8j+7 with code 8j in bits 0-3 (codes 0..7 -> 0x76543210); for b = 3,
32 codes fill 3 words (codes 10 and 21 straddle words). Needs K*b and N*b divisible by 32.

Math: ``w[n, k] = (q[n, k] - z[n, g_idx[k]]) * s[n, g_idx[k]]``, exactly ours. "v1" stores
``z - 1`` per field: loaders add 1 back (GPTQModel converts to its internal v2 by adding 1).
Symmetric schemes store z = 2^(b-1) (0x77777777 at 4 bits). A zero point of 0 is stored as
2^b - 1, which not every loader decodes (some add 1 without wrapping); `lift_zero_zeros`
removes such zeros where that is exact.
"""

from __future__ import annotations

import torch

from optimizer.formats.int32_words import WORD, pack_words, unpack_words

BITS = (2, 3, 4, 8)
ROLES = ("qweight", "qzeros", "scales", "g_idx")


def n_groups(k: int, group_size: int) -> int:
    """G for a group size (0 or -1: one group per output channel)."""
    return -(-k // group_size) if group_size > 0 else 1


def layout_problem(k: int, n: int, bits: int) -> str | None:
    """Why a [N, K] linear of ``bits`` cannot be stored in this layout, or None."""
    if bits not in BITS:
        return f"{bits}-bit codes are not a GPTQ layout (supported: {BITS})"
    if k * bits % WORD or n * bits % WORD:
        return (f"in_features {k} and out_features {n} times {bits} bits must be multiples "
                f"of 32 (whole int32 words)")
    return None


def shapes(k: int, n: int, groups: int, bits: int) -> dict[str, tuple[torch.dtype, tuple]]:
    """Role -> (dtype, shape) of the stored tensors."""
    return {"qweight": (torch.int32, (k * bits // WORD, n)),
            "qzeros": (torch.int32, (groups, n * bits // WORD)),
            "scales": (torch.float16, (groups, n)),
            "g_idx": (torch.int32, (k,))}


def to_gptq(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
            g_idx: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """codes [N, K], scales [N, G], integer zeros [N, G] in [0, 2^b), g_idx [K] -> the
    stored tensors (role -> tensor)."""
    mask = (1 << bits) - 1
    z = zeros.round().to(torch.int64)
    return {"qweight": pack_words(codes, bits).t().contiguous(),            # [K*b/32, N]
            "qzeros": pack_words(((z - 1) & mask).t(), bits),               # [G, N*b/32]
            "scales": scales.t().to(torch.float16).contiguous(),            # [G, N]
            "g_idx": g_idx.to(torch.int32).contiguous()}


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
              g_idx: torch.Tensor, bits: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `to_gptq`: (codes int64 [N, K], scales float16 [N, G], zeros int64
    [N, G], g_idx int64 [K]). Shapes are the caller's to check (see `shapes`)."""
    mask = (1 << bits) - 1
    codes = unpack_words(qweight.t().contiguous(), bits)                    # [N, K]
    zeros = (unpack_words(qzeros, bits) + 1) & mask                         # [G, N]
    return codes, scales.t().contiguous(), zeros.t().contiguous(), g_idx.to(torch.int64)


def lift_zero_zeros(codes: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
                    bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite groups whose zero point is 0 as zero 1 with every code + 1 (the same weights),
    so that no loader has to decode a wrapped ``z - 1``. Raises ValueError naming the first
    (row, group) where a code is already 2^b - 1 (no exact rewrite exists)."""
    z = zeros.round().to(torch.int64)
    lift = z == 0                                                           # [N, G]
    if not bool(lift.any()):
        return codes, z
    per_code = lift[:, g_idx.long()]                                        # [N, K]
    stuck = per_code & (codes == (1 << bits) - 1)
    if bool(stuck.any()):
        row, col = (int(i) for i in stuck.nonzero()[0])
        raise ValueError(f"row {row} group {int(g_idx[col])} has zero point 0 and code "
                         f"{(1 << bits) - 1}")
    return codes + per_code.to(codes.dtype), z + lift.to(torch.int64)
