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

import argparse
import lzma
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from src.masking.taskfile import TaskFile, read_task_file
from src.utils.errors import UserError, exit_on_user_error

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


def decode_mask(data: bytes) -> torch.Tensor:
    """The packed uint8 mask tensor, byte for byte as the task file stores it."""
    return torch.from_numpy(np.packbits(decode_bits(data)))


def mask_report(task: TaskFile) -> dict:
    """Bits per weight of each coding of a Piggyback task's masks, against the entropy bound.

    Per layer and overall: density, H(density), Rice (this module), zlib and lzma of the
    packed bits (level 9), all in bits per weight; a ternary mask's sign bits count too.
    """
    layers, totals = {}, {"n": 0, "entropy": 0.0, "rice": 0, "zlib": 0, "lzma": 0}
    for name, entry in task.meta.get("layers", {}).items():
        n = math.prod(entry["shape"])
        streams = [t for key in (f"mask.{name}", f"sign.{name}") if (t := task.tensors.get(key))
                   is not None]  # fmt: skip
        density = float(np.unpackbits(streams[0].numpy(), count=n).mean())
        entropy = sum(
            binary_entropy(float(np.unpackbits(s.numpy(), count=n).mean())) for s in streams
        )
        sizes = {
            "rice": sum(len(encode_mask(s, n)) for s in streams),
            "zlib": sum(len(zlib.compress(s.numpy().tobytes(), 9)) for s in streams),
            "lzma": sum(len(lzma.compress(s.numpy().tobytes(), preset=9)) for s in streams),
        }
        layers[name] = {
            "n": n,
            "density": density,
            "entropy_bpw": entropy,
            **{f"{c}_bpw": 8 * b / n for c, b in sizes.items()},
        }
        totals["n"] += n
        totals["entropy"] += entropy * n
        for codec, size in sizes.items():
            totals[codec] += size
    n = totals["n"]
    overall = {"n": n, "entropy_bpw": totals["entropy"] / n if n else None}
    overall.update({f"{c}_bpw": 8 * totals[c] / n if n else None for c in ("rice", "zlib", "lzma")})
    return {"layers": layers, "overall": overall}


TASK_SUFFIX = ".safetensors"
_HOW = f"pass task files (*{TASK_SUFFIX}) or a folder of them"
_TRAIN = "make train writes one to results/tasks"


def task_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The task files named by files and folders (a folder: its *.safetensors, sorted)."""
    files: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.glob(f"*{TASK_SUFFIX}") if p.is_file())
            if not found:
                raise UserError(
                    f"folder {path} holds no task files (*{TASK_SUFFIX}); train a task first "
                    f"({_TRAIN}), or {_HOW}"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path} does not exist; {_HOW} ({_TRAIN})")
    return files


def _read(path: Path) -> TaskFile:
    """``read_task_file`` whose refusal also says what the command takes."""
    if path.suffix != TASK_SUFFIX:
        raise UserError(f"{path} is not a task file (not *{TASK_SUFFIX}); {_HOW}")
    try:
        return read_task_file(path)
    except UserError as err:
        raise UserError(f"{err}; {_HOW}") from None


def task_names(files: list[Path]) -> list[str]:
    """Each file's task name (its stem); the paths themselves when two stems collide."""
    stems = [f.stem for f in files]
    return stems if len(set(stems)) == len(stems) else [str(f) for f in files]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.masking.compress",
        description="Report the bits per weight the compressed mask coding reaches per task file.",
    )
    parser.add_argument(
        "tasks", nargs="+", help="Piggyback task files, or folders of them (e.g. results/tasks)"
    )
    args = parser.parse_args(argv)
    files = task_files(args.tasks)
    tasks = [_read(f) for f in files]  # refuse a bad file before printing anything
    names = task_names(files)
    w = max(len("task"), *map(len, names))
    print(f"{'task':{w}s} {'weights':>10s} {'H(p)':>7s} {'rice':>7s} {'zlib':>7s} {'lzma':>7s}")
    for name, task in zip(names, tasks, strict=True):
        o = mask_report(task)["overall"]
        if not o["n"]:
            print(f"{name:{w}s} no masks (a {task.kind} task, not a Piggyback task)")
            continue
        print(
            f"{name:{w}s} {o['n']:>10d} {o['entropy_bpw']:7.4f} {o['rice_bpw']:7.4f} "
            f"{o['zlib_bpw']:7.4f} {o['lzma_bpw']:7.4f}"
        )


if __name__ == "__main__":
    main()
