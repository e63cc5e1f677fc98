"""W8A16 GPU layout, prepared once at build time (on CPU) from our 8-bit storage format.

Storage (kernels/qlinear/reference.py, bits=8): codes ``q[n, k]`` uint8 [N, K], float16
scales ``s[N, G]``, uint8 zeros ``z[N, G]`` or none (symmetric: z = 128), group ``g =
g_idx[k]`` (default ``k // group_size``; group_size 0: one group per output channel; the last
group may be partial). ``w[n, k] = (q[n, k] - z[n, g]) * s[n, g]``.

The storage rows are already what the kernels want (row n = output channel, K contiguous:
16-byte loads along K, the tensor cores' K-major A operand), so the layout keeps them and only
pads K and, for act-order, reorders the columns. The dict `prepare` returns:

    qweight uint8 [N, KP]   codes; column i is layout row i. KP is a multiple of 128 and of GS.
                            Padding columns hold the zero code z[n, g] (weight exactly 0).
    sz      int32 [GP, N]   bits 0-15: the float16 scale s[n, g]; bits 16-23: the zero z[n, g]
                            (128 for symmetric). One load gives both. GP = 1 means one group
                            per output channel (GS = KP); else GS = KP / GP is 32, 64 or a
                            multiple of 128 and layout rows [g*GS, (g+1)*GS) form group g.
    perm    int32 [KP]      only for act-order (or a grouping other than k // gs with a
                            supported gs): layout row i reads input channel perm[i]; padding
                            rows hold K (the kernels read x there as 0). The kernels gather
                            x through it themselves: the caller passes x unchanged.
    locks   int32 [L]       zeros: the split-K kernels' arrival counters (left at zero).
                            Runtime scratch, not weight data; one stream at a time.

Without act-order the rows are the input channels in order; the tail [K, KP) is padding and
whole padding groups past the G real ones have s = 0, z = 0 (codes 0). With act-order the
channels are sorted by group (stable) and each group is padded to GS rows.
"""

from __future__ import annotations

import torch

BLOCK = 128      # KP is a multiple of it (the kernels' largest common K step)
SYM_ZERO = 128   # z of symmetric 8-bit codes


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def group_rows(gs: int) -> int:
    """The supported group size (32, 64 or a multiple of 128) for groups of gs rows."""
    return gs if gs in (32, 64) else _round_up(gs, BLOCK)


def n_locks(n: int) -> int:
    """Counters for up to 16 M tiles times ceil(N/16) N tiles (split-K is for small M)."""
    return 16 * -(-n // 16)


def _check(qweight, scales, zeros, k) -> tuple[int, int]:
    n, groups = scales.shape
    if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (n, k):
        raise ValueError(f"qweight: expected uint8 [{n}, {k}], got {qweight.dtype} "
                         f"{list(qweight.shape)}")
    if zeros is not None and (tuple(zeros.shape) != (n, groups) or zeros.dtype != torch.uint8):
        raise ValueError(f"zeros: expected uint8 [{n}, {groups}], got {zeros.dtype} "
                         f"{list(zeros.shape)}")
    return n, groups


def _rows(g: torch.Tensor, default: torch.Tensor, group_size: int, groups: int, k: int):
    """(src [R] input channel of each layout row, valid [R], gs, permuted) before padding."""
    if torch.equal(g, default) and (group_size <= 0 or group_rows(group_size) == group_size):
        gs = group_size if group_size > 0 else _round_up(max(k, 1), BLOCK)
        if -(-k // gs) != groups:
            raise ValueError(f"scales: {groups} groups, but K={k} in groups of {gs} makes "
                             f"{-(-k // gs)}")
        src = torch.arange(groups * gs)
        return src, src < k, gs, False
    order = torch.argsort(g, stable=True)                  # channels sorted by group
    counts = torch.bincount(g, minlength=groups)
    gs = group_rows(_round_up(max(int(counts.max()), 1), 32))
    rank = torch.arange(k) - (torch.cumsum(counts, 0) - counts)[g[order]]
    rows = g[order] * gs + rank                            # layout row of channel order[i]
    src = torch.full((groups * gs,), k, dtype=torch.int64)
    src[rows] = order
    return src, src < k, gs, True


def prepare(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
            g_idx: torch.Tensor | None, group_size: int, k: int) -> dict[str, torch.Tensor]:
    """Our 8-bit storage -> the layout in the module docstring (CPU tensors in, CPU out).

    qweight uint8 [N, K], scales float16 [N, G], zeros uint8 [N, G] or None, g_idx [K] or
    None, group_size (0: one group per output channel), k = K.
    """
    n, groups = _check(qweight, scales, zeros, k)
    qweight, scales = qweight.cpu(), scales.cpu()
    z = (zeros.cpu().to(torch.int32) if zeros is not None
         else torch.full((n, groups), SYM_ZERO, dtype=torch.int32))            # [N, G]
    default = (torch.arange(k) // group_size if group_size > 0
               else torch.zeros(k, dtype=torch.int64))
    g = g_idx.cpu().to(torch.int64) if g_idx is not None else default
    if g.numel() != k or (k and (int(g.min()) < 0 or int(g.max()) >= groups)):
        raise ValueError(f"g_idx: expected {k} entries in [0, {groups})")
    if group_size <= 0 and groups != 1:
        raise ValueError(f"scales: group_size 0 means one group per channel, got {groups}")

    src, valid, gs, permuted = _rows(g, default, group_size, groups, k)
    kp = _round_up(max(groups * gs, 1), BLOCK)
    s16 = scales.to(torch.float16)
    if group_size <= 0:                                    # per channel: one group of KP
        gs = kp
    elif kp > groups * gs:                                 # whole padding groups: s = z = 0
        pad_g = kp // gs - groups
        z = torch.cat([z, torch.zeros(n, pad_g, dtype=torch.int32)], 1)
        s16 = torch.cat([s16, torch.zeros(n, pad_g, dtype=torch.float16)], 1)
    pad = kp - src.numel()
    src = torch.cat([src, torch.full((pad,), k, dtype=torch.int64)])
    valid = torch.cat([valid, torch.zeros(pad, dtype=torch.bool)])
    zq = z[:, torch.arange(kp) // gs]                      # [N, KP] zero of each layout row
    q = qweight[:, src.clamp(max=max(k - 1, 0))].to(torch.int32)   # [N, KP]
    codes = torch.where(valid[None, :], q, zq)
    s_bits = s16.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    out = {"qweight": codes.to(torch.uint8).contiguous(),
           "sz": (s_bits | (z << 16)).T.contiguous(),      # [GP, N]
           "locks": torch.zeros(n_locks(n), dtype=torch.int32)}
    if permuted:
        out["perm"] = src.to(torch.int32)
    return out


def group_size_of(prepared: dict[str, torch.Tensor]) -> int:
    """Layout rows per group (KP for one group per output channel)."""
    return prepared["qweight"].shape[1] // prepared["sz"].shape[0]


def scales_zeros(prepared: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(float16 scales [GP, N], int32 zeros [GP, N]) from the packed ``sz``."""
    sz = prepared["sz"]
    return (sz & 0xFFFF).to(torch.int16).view(torch.float16), (sz >> 16) & 0xFF


def dequantize(prepared: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Float32 [N, K] weight, input channels in their original order (CPU reference, tests)."""
    q = prepared["qweight"].float()                        # [N, KP]
    s, z = scales_zeros(prepared)
    kp = q.shape[1]
    rg = torch.arange(kp, device=q.device) // group_size_of(prepared)
    w = (q - z.float().T[:, rg]) * s.float().T[:, rg]      # [N, KP], padding rows exactly 0
    if "perm" not in prepared:
        return w[:, :k].contiguous()
    perm = prepared["perm"].long()
    keep = perm < k
    out = torch.zeros(w.shape[0], k, dtype=torch.float32, device=w.device)
    out[:, perm[keep]] = w[:, keep]
    return out
