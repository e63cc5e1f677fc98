"""W4A16 GPU layout, prepared once at build time from our storage format.

Storage (kernels/qlinear/reference.py): codes ``q[n, k]`` in [0, 16) packed LSB-first along K
(uint8 [N, ceil(K/2)]), float16 scales ``s[N, G]``, uint8 zeros ``z[N, G]`` or none
(symmetric: z = 8), group ``g = g_idx[k]`` (default ``k // group_size``; the last group may be
partial). ``w[n, k] = (q[n, k] - z[n, g]) * s[n, g]``.

Layout (the dict `prepare` returns; every entry a tensor on the weights' device):

    qweight int32 [KP/8, N]  (the IR's shape); its memory is [KP/128, N, 16]: K in blocks of
                             128 layout rows, and per block and output column n the 16 words
                             of that column contiguous (64 bytes). Word r = 4t + c (t, c < 4)
                             holds in bits [4i, 4i+4) (i = 2s + h + 4e; s, h, e < 2) the code
                             of block row kk = 32c + 16s + 8h + 2t + e (`row_of_nibble`).
                             Why: ``(w >> 4j) & 0x000F000F`` (j < 4) gives the codes of rows
                             kk and kk + 1 in the low and high half of one register, which is
                             how a tensor-core A operand (rows 2t, 2t+1 and 2t+8, 2t+9 of each
                             16-row K step held by lane t of a quad) wants its pairs: the
                             kernel turns 4 words (one 16-byte load) into 32 operand values
                             with 7 integer ops and no shuffles. 32-row chunk c (a group of
                             32 rows) is word c of every quad lane.
    sz      int32 [G, N]     bits 0-15: the float16 scale s[n, g]; bits 16-23: the zero
                             z[n, g] (8 for symmetric). One load gives both.
    perm    int64 [KP]       only for act-order (or a grouping other than k // gs with a
                             supported gs): layout row i reads input channel perm[i] (the
                             kernel gathers ``x[:, perm]``, or the caller does).
    locks   int32 [L]        zeros: the split-K kernel's arrival counters (it leaves them at
                             zero). Runtime scratch, not weight data; one stream at a time.

Groups: layout rows [g*GS, (g+1)*GS) belong to group g, GS = KP / G with GS in (32, 64) or a
multiple of 128, so a 32-row chunk never straddles two groups and a 128-row block holds whole
groups (or lies inside one). KP is a multiple of 128. Without act-order the rows are the input
channels in order: the tail [K, G0*GS) of a partial last group is padding, and whole padding
groups past the G0 real ones (up to a multiple of 128 rows) have s = 0, z = 0. With act-order
the channels are sorted by group (stable) and each group is padded to GS rows. Padding rows
hold code z, so their weight is exactly (z - z) * s = 0 and whatever x meets them (zero columns
past K, or x[:, 0] through perm) adds nothing.
"""

from __future__ import annotations

import torch

BLOCK = 128      # layout rows per block of 16 words; KP is a multiple of it
TILE = 16        # words per column and block (16 bytes x 4: one column of a block)


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def group_rows(gs: int) -> int:
    """The supported group size (32, 64 or a multiple of 128) for groups of gs rows."""
    return gs if gs in (32, 64) else _round_up(gs, BLOCK)


def unpack_codes(qweight: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [N, ceil(K/2)] (byte j = code 2j | code 2j+1 << 4) -> int32 [N, K], any device."""
    p = qweight.to(torch.int32)
    return torch.stack([p & 15, p >> 4], dim=-1).reshape(p.shape[0], -1)[:, :k]


def n_locks(n: int) -> int:
    """Counters for up to 16 M tiles times ceil(N/16) N tiles (split-K is used for small M)."""
    return 16 * -(-n // 16)


def prepare(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
            g_idx: torch.Tensor | None, group_size: int, k: int) -> dict[str, torch.Tensor]:
    """Our 4-bit storage -> the GPU layout described in the module docstring.

    qweight uint8 [N, ceil(K/2)], scales float16 [N, G], zeros uint8 [N, G] or None,
    g_idx [K] or None, group_size (0: one group per output channel), k = K.
    """
    n, groups = scales.shape
    dev = qweight.device
    if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (n, (k + 1) // 2):
        raise ValueError(f"qweight: expected uint8 [{n}, {(k + 1) // 2}], got "
                         f"{qweight.dtype} {list(qweight.shape)}")
    if zeros is not None and tuple(zeros.shape) != (n, groups):
        raise ValueError(f"zeros: expected [{n}, {groups}], got {list(zeros.shape)}")
    q = unpack_codes(qweight, k)                                      # [N, K]
    z = (zeros.to(torch.int32) if zeros is not None
         else torch.full((n, groups), 8, dtype=torch.int32, device=dev))  # [N, G]
    default = (torch.arange(k, device=dev) // group_size if group_size > 0
               else torch.zeros(k, dtype=torch.int64, device=dev))
    g = g_idx.to(device=dev, dtype=torch.int64) if g_idx is not None else default
    if g.numel() != k or (k and (int(g.min()) < 0 or int(g.max()) >= groups)):
        raise ValueError(f"g_idx: expected {k} entries in [0, {groups})")

    in_order = torch.equal(g, default) and (group_size <= 0
                                            or group_rows(group_size) == group_size)
    if in_order:
        gs = group_size if group_size > 0 else _round_up(max(k, 1), BLOCK)
        if -(-k // gs) != groups:
            raise ValueError(f"scales: {groups} groups, but K={k} in groups of {gs} "
                             f"makes {-(-k // gs)}")
        src = torch.arange(groups * gs, device=dev)                  # layout row -> channel
        valid = src < k
        perm = None
    else:   # act-order or odd grouping: sort channels by group, pad each group to GS rows
        order = torch.argsort(g, stable=True)
        counts = torch.bincount(g, minlength=groups)
        gs = group_rows(_round_up(max(int(counts.max()), 1), 32))
        starts = torch.cumsum(counts, 0) - counts                   # first sorted index
        rank = torch.arange(k, device=dev) - starts[g[order]]        # index inside group
        rows = g[order] * gs + rank                                  # layout row of order[i]
        src = torch.zeros(groups * gs, dtype=torch.int64, device=dev)
        valid = torch.zeros(groups * gs, dtype=torch.bool, device=dev)
        src[rows] = order
        valid[rows] = True
        perm = src.clone()
    kp = _round_up(groups * gs, BLOCK)
    g_all = kp // gs                                                 # groups incl. padding
    pad_g = g_all - groups
    s16 = scales.to(torch.float16)
    if pad_g:   # whole padding groups: s = 0, z = 0, code 0 -> weight 0
        z = torch.cat([z, torch.zeros(n, pad_g, dtype=torch.int32, device=dev)], 1)
        s16 = torch.cat([s16, torch.zeros(n, pad_g, dtype=torch.float16, device=dev)], 1)
        src = torch.cat([src, torch.zeros(kp - groups * gs, dtype=src.dtype, device=dev)])
        valid = torch.cat([valid, torch.zeros(kp - groups * gs, dtype=torch.bool,
                                              device=dev)])
        if perm is not None:
            perm = src.clone()
    row_group = torch.arange(kp, device=dev) // gs                   # [KP]
    zq = z[:, row_group]                                             # [N, KP]
    codes = torch.where(valid[None, :], q[:, src.clamp(max=max(k - 1, 0))], zq)  # [N, KP]

    words = pack_words(codes)                                        # [KP/8, N]
    s_bits = s16.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    sz = (s_bits | (z << 16)).T.contiguous()                         # [G, N]
    out = {"qweight": words.contiguous(), "sz": sz,
           "locks": torch.zeros(n_locks(n), dtype=torch.int32, device=dev)}
    if perm is not None:
        out["perm"] = perm
    return out


def row_of_nibble(device: torch.device | str = "cpu") -> torch.Tensor:
    """int64 [16, 8]: the block row (0..127) held by nibble i of word r (module docstring)."""
    r = torch.arange(16, device=device)[:, None]
    i = torch.arange(8, device=device)[None, :]
    t, c, e, s, h = r >> 2, r & 3, i >> 2, (i >> 1) & 1, i & 1
    return 32 * c + 16 * s + 8 * h + 2 * t + e


def pack_words(codes: torch.Tensor) -> torch.Tensor:
    """Codes [N, KP] (layout row order, values < 16) -> int32 [KP/8, N] words, memory
    [KP/128, N, 16] as in the module docstring."""
    n, kp = codes.shape
    rows = row_of_nibble(codes.device)                               # [16, 8]
    blocks = codes.to(torch.int64).reshape(n, kp // BLOCK, BLOCK)[:, :, rows]  # [N, B, 16, 8]
    shifts = 4 * torch.arange(8, device=codes.device, dtype=torch.int64)
    words = (blocks << shifts).sum(-1)                               # [N, B, 16]
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return words.permute(1, 0, 2).contiguous().reshape(kp // 8, n)


def layout_codes(prepared: dict[str, torch.Tensor]) -> torch.Tensor:
    """int32 [KP, N]: the code of every layout row (inverse of `pack_words`)."""
    w = prepared["qweight"]
    kp, n = w.shape[0] * 8, w.shape[1]
    w = w.reshape(kp // BLOCK, n, TILE).to(torch.int64) & 0xFFFFFFFF  # [B, N, 16]
    shifts = 4 * torch.arange(8, device=w.device, dtype=torch.int64)
    q = (w[..., None] >> shifts) & 15                                # [B, N, 16, 8]
    out = torch.empty(kp // BLOCK, n, BLOCK, dtype=torch.int64, device=w.device)
    out[:, :, row_of_nibble(w.device).reshape(-1)] = q.reshape(kp // BLOCK, n, BLOCK)
    return out.permute(0, 2, 1).reshape(kp, n).to(torch.int32)


def scales_zeros(prepared: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(float16 scales [G, N], int32 zeros [G, N]) from the packed ``sz``."""
    sz = prepared["sz"]
    s = (sz & 0xFFFF).to(torch.int16).view(torch.float16)
    return s, (sz >> 16) & 0xFF


def dequantize(prepared: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Float32 [N, K] weight, input channels in their original order (for tests)."""
    q = layout_codes(prepared).float()                               # [KP, N]
    s, z = scales_zeros(prepared)
    kp, groups = q.shape[0], s.shape[0]
    rg = torch.arange(kp, device=q.device) // (kp // groups)
    w = ((q - z.float()[rg]) * s.float()[rg]).T.contiguous()         # [N, KP], pad rows = 0
    if "perm" not in prepared:
        return w[:, :k].contiguous()
    out = torch.zeros(w.shape[0], k, dtype=torch.float32, device=w.device)
    return out.index_add_(1, prepared["perm"], w)                    # pad rows add 0 to x[0]
