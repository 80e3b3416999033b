"""Task files: what one task adds to a shared backbone, stored in safetensors.

The container every method stores its tasks in: named tensors (which ones is the method's
business: piggyback_lab/methods/<name>/), metadata naming the task's kind and tying it to the exact
backbone weights it was learned on (a SHA-256 fingerprint), and a digest over metadata and
tensors that detects truncated or edited files. Also the bit packing masks are stored in.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from piggyback_lab.models.surgery import plain_state_dict
from piggyback_lab.utils.atomic import atomic_write_bytes
from piggyback_lab.utils.errors import UserError

FORMAT = "piggyback-lab-task/1"


def backbone_fingerprint(model: nn.Module, classifier: str) -> str:
    """SHA-256 over the trunk's parameters and BN statistics (names, shapes, bytes).

    Masks, the task classifier and BN's batch counters are left out and a masked weight
    counts under its plain name, so the fingerprint of a masked model equals that of the
    plain backbone it wraps.
    """
    state = {
        key: tensor
        for key, tensor in plain_state_dict(model).items()
        if not key.startswith(classifier + ".") and not key.endswith("num_batches_tracked")
    }
    return state_digest(state)


def _update(digest: hashlib._Hash, key: str, tensor: torch.Tensor) -> None:
    """Feed a tensor's name, dtype, shape and raw bytes to a hash."""
    t = tensor.detach().to("cpu").contiguous()
    digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over named tensors: equal digests mean bit-identical states."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        _update(digest, key, tensors[key])
    return digest.hexdigest()


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of ceil(n/8) bytes (big-endian bit order)."""
    bits = mask.detach().to("cpu", torch.bool).flatten().numpy()
    return torch.from_numpy(np.packbits(bits))


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The bool tensor ``pack_bits`` packed."""
    return unpacked_bits(packed, shape).view(torch.bool)


def unpacked_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Packed bits as a uint8 tensor of 0s and 1s (numpy's unpack, no further copy)."""
    bits = np.unpackbits(packed.numpy(), count=int(np.prod(shape)))
    return torch.from_numpy(bits).reshape(shape)


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    return state_digest({"__meta__": _meta_tensor(meta), **tensors})


def _meta_tensor(meta: dict[str, str]) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(meta, sort_keys=True).encode()), dtype=torch.uint8)


@dataclass
class TaskFile:
    """A parsed, verified task file."""

    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def class_names(self) -> list[str]:
        return self.meta.get("class_names", [])


def write_task_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> int:
    """Write tensors + JSON-able metadata atomically; returns the file size in bytes."""
    if not isinstance(meta.get("kind"), str) or not meta["kind"]:
        raise ValueError(f"a task file's metadata names its kind (got {meta.get('kind')!r})")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    flat = {"format": FORMAT, "meta": json.dumps(meta, sort_keys=True)}
    flat["sha256"] = _digest(cpu, flat)
    data = st_save(cpu, metadata=flat)
    atomic_write_bytes(path, data)
    return len(data)


def read_task_file(path: str | os.PathLike) -> TaskFile:
    """Parse and verify a task file; a truncated, edited or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file {path} does not exist")
    data = path.read_bytes()
    broken = f"task file {path} is truncated or corrupt; re-export it from its training run"
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        flat = header.get("__metadata__") or {}
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own error types for any malformation
        raise UserError(broken) from err
    if flat.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a task file of this project (format {flat.get('format')!r})"
        )
    expected = flat.pop("sha256", None)
    if expected != _digest(tensors, flat):
        raise UserError(f"task file {path} was modified after it was written (digest mismatch)")
    for key, tensor in tensors.items():  # a task learned nothing that is not a number
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"task file {path}: tensor {key} holds NaN or infinite values; it cannot "
                "serve a prediction (was its training diverging?); re-train or re-export it"
            )
    return TaskFile(path=path, meta=json.loads(flat["meta"]), tensors=tensors)


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_compatible(task: TaskFile, backbone: str, fingerprint: str) -> None:
    """Refuse a task file learned on other backbone weights than the ones in hand."""
    if task.meta["backbone"] != backbone:
        raise UserError(
            f"task file {task.path} was made for backbone {task.meta['backbone']!r}, "
            f"not {backbone!r}; pass backbone={task.meta['backbone']}"
        )
    if task.meta["fingerprint"] != fingerprint:
        raise UserError(
            f"task file {task.path} was made for other {backbone} weights "
            f"(fingerprint {task.meta['fingerprint'][:12]}, these are {fingerprint[:12]}); "
            "load the backbone weights it was trained on"
        )
