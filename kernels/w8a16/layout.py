"""W8A16 kernel layout: our 8-bit storage, passed through where it already suits the kernels.

Storage (kernels/qlinear/reference.py, bits=8): codes ``q[n, k]`` uint8 [N, K], float16
scales ``s[N, G]``, uint8 zeros ``z[N, G]`` or none (symmetric: z = 128), group ``g =
g_idx[k]`` (default ``k // group_size``; group_size 0: one group per output channel; the last
group may be partial). ``w[n, k] = (q[n, k] - z[n, g]) * s[n, g]``.

Rows n with K contiguous are what the kernels want (16-byte loads along K; the tensor cores'
K-major A operand), so for channels in order with group size 0, 32, 64 or a multiple of 128
`prepare` returns the storage tensors themselves (no copy: loading an artifact repacks
nothing). Otherwise (act-order, other group sizes) it sorts the input channels by group
(stable) and pads each group to GS layout rows, at build time. The dict:

    qweight    uint8 [N, KQ]   codes; column i is layout row i. In order: KQ = K. Regrouped:
                               KQ = G * GS, padding columns hold the zero code z[n, g].
    scales     float16 [N, G]  as stored.
    zeros      uint8 [N, G]    as stored; absent for symmetric codes (z = 128).
    perm       int32 [KQ]      regrouped only: layout row i reads input channel perm[i];
                               padding rows hold K (the kernels read x there as 0). The
                               kernels gather x through it: callers pass x unchanged.
    group_size int             layout rows per group (row i is in group i // group_size);
                               0: one group per output channel. A Python int, not a tensor
                               (store it as an attribute).
    locks      int32 [L]       zeros: the split-K kernels' arrival counters (left at zero).
                               Runtime scratch, not weight data; one stream at a time.
"""

from __future__ import annotations

import torch

SYM_ZERO = 128   # z of symmetric 8-bit codes


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def supported_group(gs: int) -> bool:
    """Group sizes the kernels take in place: a power-of-two K step then fits in a group."""
    return gs in (0, 32, 64) or (gs > 0 and gs % 128 == 0)


def n_locks(n: int) -> int:
    """Counters for up to 16 M tiles times ceil(N/16) N tiles (split-K is for small M)."""
    return 16 * -(-n // 16)


def _default_groups(k: int, group_size: int, device) -> torch.Tensor:
    if group_size > 0:
        return torch.arange(k, device=device) // group_size
    return torch.zeros(k, dtype=torch.int64, device=device)


def _check(qweight, scales, zeros, g_idx, group_size, k) -> torch.Tensor:
    """Validate the storage; the group index [K] of every input channel."""
    n, groups = scales.shape
    if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (n, k):
        raise ValueError(f"qweight: expected uint8 [{n}, {k}], got {qweight.dtype} "
                         f"{list(qweight.shape)}")
    if zeros is not None and (tuple(zeros.shape) != (n, groups) or zeros.dtype != torch.uint8):
        raise ValueError(f"zeros: expected uint8 [{n}, {groups}], got {zeros.dtype} "
                         f"{list(zeros.shape)}")
    if group_size < 0 or (group_size == 0 and groups != 1):
        raise ValueError(f"group_size: expected > 0, or 0 with one group per channel; got "
                         f"{group_size} with {groups} groups")
    made = -(-k // (group_size or max(k, 1)))
    if g_idx is None and made != groups:
        raise ValueError(f"scales: {groups} groups, but K={k} in groups of {group_size} "
                         f"makes {made}")
    g = (g_idx.to(device=qweight.device, dtype=torch.int64) if g_idx is not None
         else _default_groups(k, group_size, qweight.device))
    if g.numel() != k or (k and (int(g.min()) < 0 or int(g.max()) >= groups)):
        raise ValueError(f"g_idx: expected {k} entries in [0, {groups})")
    return g


def prepare(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
            g_idx: torch.Tensor | None, group_size: int, k: int) -> dict:
    """Our 8-bit storage -> the dict in the module docstring, on the tensors' device.

    qweight uint8 [N, K], scales float16 [N, G], zeros uint8 [N, G] or None, g_idx [K] or
    None, group_size (0: one group per output channel), k = K.
    """
    g = _check(qweight, scales, zeros, g_idx, group_size, k)
    n, groups = scales.shape
    dev = qweight.device
    out = {"scales": scales.to(torch.float16),
           "locks": torch.zeros(n_locks(n), dtype=torch.int32, device=dev)}
    if zeros is not None:
        out["zeros"] = zeros
    if groups == 1:                                        # one group: per output channel
        group_size = 0
        if g_idx is not None:
            g = _default_groups(k, 0, dev)
    in_order = torch.equal(g, _default_groups(k, group_size, dev))
    if in_order and supported_group(group_size):
        return {**out, "qweight": qweight.contiguous(), "group_size": group_size}

    order = torch.argsort(g, stable=True)                  # channels sorted by group
    counts = torch.bincount(g, minlength=groups)
    gs = _round_up(max(int(counts.max()), 1), 32)
    gs = gs if gs in (32, 64) else _round_up(gs, 128)
    rank = torch.arange(k, device=dev) - (torch.cumsum(counts, 0) - counts)[g[order]]
    src = torch.full((groups * gs,), k, dtype=torch.int64, device=dev)
    src[g[order] * gs + rank] = order                      # layout row -> input channel
    valid = src < k
    z = (zeros.to(torch.int32) if zeros is not None
         else torch.full((n, groups), SYM_ZERO, dtype=torch.int32, device=dev))
    zq = z[:, torch.arange(groups * gs, device=dev) // gs]                    # [N, KQ]
    q = qweight[:, src.clamp(max=max(k - 1, 0))].to(torch.int32)              # [N, KQ]
    codes = torch.where(valid[None, :], q, zq).to(torch.uint8).contiguous()
    return {**out, "qweight": codes, "perm": src.to(torch.int32), "group_size": gs}


def runtime_view(tensors: dict[str, torch.Tensor], group_size: int, k: int) -> dict:
    """The kernels' dict from a loaded node's tensors (roles qweight, scales, zeros?, g_idx?
    as stored, or prepare()'s qweight/scales/zeros?/perm with its group_size): views plus
    fresh split-K counters. Only act-order storage without a stored perm is regrouped here
    (a copy of the weight); write prepare()'s tensors at build time to avoid it."""
    if "perm" in tensors:
        n = tensors["qweight"].shape[0]
        out = {r: tensors[r] for r in ("qweight", "scales", "zeros", "perm") if r in tensors}
        out["locks"] = torch.zeros(n_locks(n), dtype=torch.int32,
                                   device=tensors["qweight"].device)
        return {**out, "group_size": group_size}
    return prepare(tensors["qweight"], tensors["scales"], tensors.get("zeros"),
                   tensors.get("g_idx"), group_size, k)


def dequantize(prepared: dict, k: int) -> torch.Tensor:
    """Float32 [N, K] weight, input channels in their original order (CPU reference, tests)."""
    q = prepared["qweight"].float()                        # [N, KQ]
    gs = prepared["group_size"]
    rg = torch.arange(q.shape[1], device=q.device) // (gs or max(q.shape[1], 1))
    s = prepared["scales"].float()[:, rg]                  # [N, KQ]
    z = prepared["zeros"].float()[:, rg] if "zeros" in prepared else float(SYM_ZERO)
    w = (q - z) * s                                        # [N, KQ], padding rows exactly 0
    if "perm" not in prepared:
        return w[:, :k].contiguous()
    perm = prepared["perm"].long()
    keep = perm < k
    out = torch.zeros(w.shape[0], k, dtype=torch.float32, device=w.device)
    out[:, perm[keep]] = w[:, keep]
    return out
