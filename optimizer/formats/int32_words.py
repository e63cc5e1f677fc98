"""Bit-packing integer codes into int32 words, the storage unit of GPTQ and AWQ checkpoints.

Along the last dim, ``codes [R, C]`` (each in ``[0, 2^b)``) form one little-endian bit stream
per row: code c occupies bits ``[c*b, (c+1)*b)`` and word j holds bits ``[32j, 32j+32)``,
lowest bits first. For b in (2, 4, 8) word j holds codes ``j*32/b ... (j+1)*32/b - 1``; for
b = 3, 32 codes fill 3 words and codes 10 and 21 straddle a word boundary (AutoGPTQ's
3-bit layout). Words are stored as int32 (two's complement of the unsigned word).

Precondition: ``C * b`` is a multiple of 32 (``C`` a multiple of ``32 / gcd(b, 32)``).
"""

from __future__ import annotations

import math

import torch

WORD = 32
_MASK32 = (1 << WORD) - 1


def block(bits: int) -> tuple[int, int]:
    """(codes, words) of the smallest run of codes that fills whole words."""
    codes = WORD // math.gcd(bits, WORD)
    return codes, codes * bits // WORD


def _fields(bits: int) -> list[tuple[int, int, int]]:
    """(code index in the block, word index, bit offset) of each code of a block."""
    n, _ = block(bits)
    return [(i, i * bits // WORD, i * bits % WORD) for i in range(n)]


def pack_words(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes int [R, C] in [0, 2^bits) -> int32 [R, C*bits/32] (LSB-first along C)."""
    rows, cols = codes.shape
    n, nw = block(bits)
    if cols % n:
        raise ValueError(f"{cols} codes of {bits} bits do not fill whole 32-bit words "
                         f"(need a multiple of {n})")
    c = codes.to(torch.int64).reshape(rows, cols // n, n)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits})")
    words = torch.zeros(rows, cols // n, nw, dtype=torch.int64)
    for i, w, off in _fields(bits):
        words[..., w] += (c[..., i] << off) & _MASK32
        if off + bits > WORD:                       # the code spills into the next word
            words[..., w + 1] += c[..., i] >> (WORD - off)
    words = words.reshape(rows, -1)
    return (words - ((words >> (WORD - 1)) << WORD)).to(torch.int32)


def unpack_words(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_words`: int32 [R, W] -> int64 codes [R, W*32/bits]."""
    rows, cols = words.shape
    n, nw = block(bits)
    if cols % nw:
        raise ValueError(f"{cols} words of {bits}-bit codes are not whole blocks of {nw}")
    u = (words.to(torch.int64) & _MASK32).reshape(rows, cols // nw, nw)
    mask = (1 << bits) - 1
    out = torch.empty(rows, cols // nw, n, dtype=torch.int64)
    for i, w, off in _fields(bits):
        v = u[..., w] >> off
        if off + bits > WORD:
            v = v | (u[..., w + 1] << (WORD - off))
        out[..., i] = v & mask
    return out.reshape(rows, -1)
