"""Which output tile and which K blocks a program of the Triton GEMMs takes (w4a16, w8a16,
w8a8 triton_gemm.py): `grouped_tile`, the grouped order of output tiles, and `split_blocks`,
one split-K slice's K blocks. Triton inlines both. When the lines moved here from each
kernel, 13 of 14 configs compiled for sm_90 gave the same SASS as before; the 14th (W8A16
MMA, split-K, act-order) differed in register assignment and one moved instruction."""

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n, tiles_n) of program ``pid`` over a grid of cdiv(M, BM) x cdiv(N, BN)
    tiles: programs run down GROUP_M row tiles before moving one column tile on, so the
    programs resident together share W's column tiles in L2."""
    tiles_m = tl.cdiv(M, BM)
    tiles_n = tl.cdiv(N, BN)
    in_group = GROUP_M * tiles_n
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    return pid_m, pid_n, tiles_n


@triton.jit
def split_blocks(blocks, SPLIT_K, pid_k):
    """[b_lo, b_hi): the K blocks of split ``pid_k`` of SPLIT_K, cdiv(blocks, SPLIT_K) each
    (the last ones may get fewer, or none)."""
    per_split = tl.cdiv(blocks, SPLIT_K)
    b_lo = pid_k * per_split
    b_hi = tl.minimum(b_lo + per_split, blocks)
    return b_lo, b_hi
