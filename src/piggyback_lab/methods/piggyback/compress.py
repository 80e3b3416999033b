"""Lossless mask compression below 1 bit per weight (beyond the paper).

A Piggyback mask stores one bit per weight, but a learned mask is often far from 50%
dense, so its binary entropy H(p) is well below 1 bit. This codes the gaps between the
positions of the rarer symbol with a Rice (power-of-two Golomb) code, which is within a
few percent of H(p) for independent bits and is fully vectorised with numpy. The unary
quotients and the k-bit remainders go to two separate streams, so decoding needs no bit
by bit scan. When Rice coding would not beat the packed bits (density near 50%), the
packed bits are stored as they are, so a mask never costs more than 1 bit + a header.
"""

from __future__ import annotations

import lzma
import math
import struct
import zlib

import numpy as np
import torch

RICE = b"PBR1"
RAW = b"PBB1"
_HEADER = struct.Struct("<4sQQQBB")  # magic, n bits, n rare, unary bits, rare symbol, k
_RAW_HEADER = struct.Struct("<4sQ")  # magic, n bits


def binary_entropy(p: float) -> float:
    """H(p) in bits: the least bits per weight any code can reach for i.i.d. mask bits."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _best_k(gaps: np.ndarray) -> int:
    """The Rice parameter with the fewest total bits (exact count, tried over all useful k)."""
    top = int(gaps.max()).bit_length() if gaps.size else 0
    costs = [int((gaps >> k).sum()) + gaps.size * (1 + k) for k in range(top + 1)]
    return int(np.argmin(costs))


def encode_bits(bits: np.ndarray) -> bytes:
    """Encode a flat bool array; the shorter of Rice-coded gaps and the packed bits."""
    bits = np.asarray(bits, dtype=bool).ravel()
    n = bits.size
    raw = _RAW_HEADER.pack(RAW, n) + np.packbits(bits).tobytes()
    rare = int(np.count_nonzero(bits) * 2 <= n)  # code the positions of the rarer symbol
    positions = np.flatnonzero(bits == bool(rare)).astype(np.int64)
    gaps = np.diff(positions, prepend=-1) - 1
    k = _best_k(gaps)
    quotients = gaps >> k
    unary_len = int(quotients.sum()) + gaps.size
    if (unary_len + gaps.size * k) // 8 + _HEADER.size >= len(raw):
        return raw
    unary = np.ones(unary_len, dtype=bool)
    unary[np.cumsum(quotients + 1) - 1] = False  # q ones, then a terminating zero
    shifts = np.arange(k - 1, -1, -1, dtype=np.int64)
    remainders = ((gaps[:, None] >> shifts) & 1).astype(bool)
    header = _HEADER.pack(RICE, n, gaps.size, unary_len, rare, k)
    return header + np.packbits(remainders).tobytes() + np.packbits(unary).tobytes()


def decode_bits(data: bytes) -> np.ndarray:
    """Inverse of ``encode_bits``: the flat bool array, exactly."""
    magic = data[:4]
    if magic == RAW:
        (_, n) = _RAW_HEADER.unpack_from(data)
        packed = np.frombuffer(data, np.uint8, offset=_RAW_HEADER.size)
        return np.unpackbits(packed, count=n).astype(bool)
    if magic != RICE:
        raise ValueError("not a compressed mask (unknown magic)")
    _, n, count, unary_len, rare, k = _HEADER.unpack_from(data)
    offset = _HEADER.size
    rem_bytes = (count * k + 7) // 8
    rem_bits = np.unpackbits(np.frombuffer(data, np.uint8, rem_bytes, offset), count=count * k)
    unary = np.unpackbits(np.frombuffer(data, np.uint8, offset=offset + rem_bytes), count=unary_len)
    ends = np.flatnonzero(unary == 0)
    quotients = np.diff(ends, prepend=-1) - 1
    weights = np.int64(1) << np.arange(k - 1, -1, -1, dtype=np.int64)
    remainders = rem_bits.reshape(count, k).astype(np.int64) @ weights if k else 0
    gaps = (quotients << k) | remainders
    bits = np.full(n, not rare, dtype=bool)
    bits[np.cumsum(gaps + 1) - 1] = bool(rare)
    return bits


def encode_mask(packed: torch.Tensor, n: int) -> bytes:
    """Compress a task file's packed mask tensor (``numpy.packbits`` of ``n`` bits)."""
    return encode_bits(np.unpackbits(packed.numpy(), count=n).astype(bool))


def coded_sizes(packed: torch.Tensor, n: int) -> dict[str, int]:
    """Bytes of one packed bit stream of ``n`` bits under each coding: Rice (this module),
    zlib and lzma (level 9) of the packed bytes."""
    raw = packed.numpy().tobytes()
    return {
        "rice": len(encode_mask(packed, n)),
        "zlib": len(zlib.compress(raw, 9)),
        "lzma": len(lzma.compress(raw, preset=9)),
    }
