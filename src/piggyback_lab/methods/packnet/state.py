"""PackNet's pruning core: one owner index per weight, magnitude pruning, task views, storage.

Every prunable weight of the trunk (src/piggyback_lab/models/surgery.py) has an owner: 0 = free
(pruned), 1 = the base network, k + 1 = the k-th task of the sequence (k = 1, 2, ...). A
task trains only free weights, prunes part of them back, and freezes the rest; evaluating
task k uses the weights owned by the base through task k and zeroes the others, so earlier
tasks are reproduced exactly. With T owners (base + tasks) the indices fit in ceil(log2(T +
1)) bits per weight; the state file stores them packed at that width. Nothing here knows
Lightning.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from piggyback_lab.models import build_backbone, classifier_name
from piggyback_lab.models.surgery import (
    linear_from_state,
    norm_layers,
    prunable_biases,
    prunable_weights,
    replace_module,
)
from piggyback_lab.taskfile import (
    TaskFile,
    backbone_fingerprint,
    prefixed,
    read_task_file,
    unprefixed,
    write_task_file,
)
from piggyback_lab.utils.errors import UserError

FREE, BASE = 0, 1
KIND = "packnet"
MAX_OWNER = 255  # owners are stored as uint8 in memory


def task_owner(position: int) -> int:
    """Owner index of the task at 0-based ``position`` in the sequence (the base is 1)."""
    return position + 2


def owner_bits(num_owners: int) -> int:
    """Bits per weight for owner indices 0..num_owners (0 = free): ceil(log2(T + 1))."""
    return max(1, math.ceil(math.log2(num_owners + 1)))


def init_owners(model: nn.Module, classifier: str) -> dict[str, torch.Tensor]:
    """Every prunable weight owned by the base."""
    return {
        name: torch.full_like(weight, BASE, dtype=torch.uint8)
        for name, weight in prunable_weights(model, classifier).items()
    }


def owners_from_weights(model: nn.Module, classifier: str) -> dict[str, torch.Tensor]:
    """Owners of an already pruned base: non-zero weights belong to the base, zeros are free."""
    return {
        name: weight.detach().ne(0).to(torch.uint8)
        for name, weight in prunable_weights(model, classifier).items()
    }


@torch.no_grad()
def prune_owner(
    model: nn.Module,
    owners: dict[str, torch.Tensor],
    classifier: str,
    owner: int,
    fraction: float,
) -> dict[str, int]:
    """Free the ``fraction`` of ``owner``'s weights with the smallest magnitude, per layer.

    Freed weights are set to exactly zero and their owner to FREE. Returns the number freed
    per layer: ``fraction * owned`` rounded half up, as the official prune.py's
    ``round(prune_perc * numel)`` does under the Python 2 it ran on (Python 3's ``round``
    takes halves to even); ties in magnitude broken by position, so the count is exact.
    """
    freed = {}
    for name, stored in prunable_weights(model, classifier).items():
        flat_owner = owners[name].view(-1)
        owned = flat_owner.eq(owner).nonzero().squeeze(1)
        k = math.floor(fraction * owned.numel() + 0.5)
        freed[name] = k
        if k == 0:
            continue
        weight = stored.data.view(-1)
        order = torch.argsort(weight[owned].abs(), stable=True)
        drop = owned[order[:k]]
        weight[drop] = 0.0
        flat_owner[drop] = FREE
    return freed


def claim_free(owners: dict[str, torch.Tensor], owner: int) -> int:
    """Give every free weight to ``owner`` (the task about to train); returns how many."""
    count = 0
    for tensor in owners.values():
        free = tensor.eq(FREE)
        count += int(free.sum())
        tensor[free] = owner
    return count


@torch.no_grad()
def apply_view(
    model: nn.Module, owners: dict[str, torch.Tensor], classifier: str, owner: int
) -> None:
    """Zero, in place, every weight that is free or owned by a task after ``owner``."""
    for name, weight in prunable_weights(model, classifier).items():
        own = owners[name].to(weight.device)
        weight.masked_fill_(own.eq(FREE) | own.gt(owner), 0.0)


def owner_shares(
    owners: dict[str, torch.Tensor], names: dict[int, str]
) -> dict[str, dict[str, float]]:
    """Per layer, the share of weights each owner holds ({layer: {owner name: share}})."""
    shares = {}
    for layer, tensor in owners.items():
        counts = torch.bincount(tensor.flatten().long().cpu(), minlength=MAX_OWNER + 1)
        n = tensor.numel()
        shares[layer] = {label: float(counts[idx]) / n for idx, label in names.items()}
    return shares


def bias_bn_state(model: nn.Module, classifier: str) -> dict[str, torch.Tensor]:
    """Copies of the prunable weights' biases and all norm state (the per-task extras)."""
    state = {k: b.detach().clone() for k, b in prunable_biases(model, classifier).items()}
    for name, norm in norm_layers(model).items():
        state.update({f"{name}.{k}": v.detach().clone() for k, v in norm.state_dict().items()})
    return state


@torch.no_grad()
def load_bias_bn(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy per-task biases/BN state (from ``bias_bn_state``) into ``model`` in place."""
    target = model.state_dict()
    for key, value in state.items():
        target[key].copy_(value)


def pack_owners(owners: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 owner indices -> ceil(n * bits / 8) bytes, each index as ``bits`` big-endian bits."""
    flat = owners.detach().to("cpu", torch.uint8).flatten().numpy()
    if flat.size and int(flat.max()) >= 1 << bits:
        raise ValueError(f"owner index {int(flat.max())} does not fit in {bits} bits")
    planes = np.unpackbits(flat[:, None], axis=1)[:, 8 - bits :]
    return torch.from_numpy(np.packbits(planes.reshape(-1)))


def unpack_owners(packed: torch.Tensor, shape: tuple[int, ...], bits: int) -> torch.Tensor:
    """Inverse of ``pack_owners``."""
    n = math.prod(shape)
    planes = np.unpackbits(packed.numpy(), count=n * bits).reshape(n, bits)
    full = np.zeros((n, 8), dtype=np.uint8)
    full[:, 8 - bits :] = planes
    return torch.from_numpy(np.packbits(full, axis=1).reshape(shape))


def packed_size(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


@dataclass
class PackNetState:
    """One shared network, the owner of each weight, and what each finished task adds.

    ``task_order`` is the planned sequence (it fixes owner indices and the bit width);
    ``tasks`` lists the finished ones. ``heads`` holds each task's classifier state,
    ``task_extras`` each task's biases/BN when they are trained per task. ``base_task``
    names the base network's own task when it is scored as one (the Visual Decathlon's
    imagenet12): it owns the base's weights and is a finished task once its head is added.
    """

    backbone: str
    classifier: str
    model: nn.Module
    owners: dict[str, torch.Tensor]
    task_order: list[str]
    base_task: str | None = None
    tasks: list[str] = field(default_factory=list)
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    task_extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    class_names: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.task_order) + 1 > MAX_OWNER:
            raise UserError(f"PackNet supports at most {MAX_OWNER - 1} tasks in one sequence")

    @property
    def bits(self) -> int:
        return owner_bits(len(self.task_order) + 1)

    def owner(self, task: str) -> int:
        return BASE if task == self.base_task else task_owner(self.task_order.index(task))

    def owner_names(self) -> dict[int, str]:
        return {FREE: "free", BASE: "base", **{self.owner(t): t for t in self.task_order}}

    def shares(self) -> dict[str, dict[str, float]]:
        return owner_shares(self.owners, self.owner_names())

    def add_task(
        self,
        task: str,
        head: nn.Module,
        class_names: list[str],
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Record a finished task: its classifier (and per-task biases/BN)."""
        self.tasks.append(task)
        self.heads[task] = {k: v.detach().to("cpu").clone() for k, v in head.state_dict().items()}
        self.class_names[task] = list(class_names)
        if extras is not None:
            self.task_extras[task] = {k: v.detach().to("cpu") for k, v in extras.items()}

    def view(self, task: str) -> nn.Module:
        """A plain copy of the network as task ``task`` sees it (later tasks' weights zeroed)."""
        model = copy.deepcopy(self.model)
        apply_view(model, self.owners, self.classifier, self.owner(task))
        head = linear_from_state(self.heads[task])
        replace_module(model, self.classifier, head.to(next(model.parameters()).device))
        if task in self.task_extras:
            load_bias_bn(model, self.task_extras[task])
        return model

    def tensors(self) -> dict[str, torch.Tensor]:
        """Trunk weights, packed owners, classifiers and per-task extras, as stored."""
        head = self.classifier + "."
        trunk = {k: v for k, v in self.model.state_dict().items() if not k.startswith(head)}
        tensors = prefixed(trunk, "backbone.")
        for name, own in self.owners.items():
            tensors[f"owners.{name}"] = pack_owners(own, self.bits)
        for task in self.tasks:
            tensors.update(prefixed(self.heads[task], f"classifier.{task}."))
            tensors.update(prefixed(self.task_extras.get(task, {}), f"extra.{task}."))
        return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def save(self, path: str | os.PathLike) -> int:
        """Write the whole state atomically, with the task-file digest; returns its bytes."""
        meta = {
            **self.meta,
            "kind": KIND,
            "backbone": self.backbone,
            "classifier": self.classifier,
            "fingerprint": backbone_fingerprint(self.model, self.classifier),
            "task_order": self.task_order,
            "base_task": self.base_task,
            "tasks": self.tasks,
            "class_names": self.class_names,
            "owner_bits": self.bits,
            "layers": {n: list(o.shape) for n, o in self.owners.items()},
        }
        return write_task_file(path, self.tensors(), meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PackNetState:
        """Read and verify a state written by ``save`` (digest, kind, shapes)."""
        return cls.from_task_file(read_task_file(path))

    @classmethod
    def from_task_file(cls, stored: TaskFile) -> PackNetState:
        """The state a verified task file holds (kind and shapes checked)."""
        path = stored.path
        meta = dict(stored.meta)
        if meta.get("kind") != KIND:
            raise UserError(f"{path} is a {meta.get('kind')!r} task file, not a PackNet state")
        model = build_backbone(meta["backbone"], None, num_classes=1)
        trunk = unprefixed(stored.tensors, "backbone.")
        missing, unexpected = model.load_state_dict(trunk, strict=False)
        missing = [k for k in missing if not k.startswith(meta["classifier"] + ".")]
        if missing or unexpected:
            raise UserError(f"PackNet state {path} does not fit {meta['backbone']}; it is corrupt")
        owners = {}
        for name, shape in meta["layers"].items():
            packed = stored.tensors[f"owners.{name}"]
            if packed.numel() != packed_size(math.prod(shape), meta["owner_bits"]):
                raise UserError(f"owner indices of layer {name} in {path} have the wrong size")
            owners[name] = unpack_owners(packed, tuple(shape), meta["owner_bits"])
        state = cls(
            backbone=meta.pop("backbone"),
            classifier=meta.pop("classifier"),
            model=model,
            owners=owners,
            task_order=meta.pop("task_order"),
            base_task=meta.pop("base_task", None),
        )
        for task in meta.pop("tasks"):
            state.tasks.append(task)
            state.heads[task] = unprefixed(stored.tensors, f"classifier.{task}.")
            extras = unprefixed(stored.tensors, f"extra.{task}.")
            if extras:
                state.task_extras[task] = extras
        state.class_names = meta.pop("class_names")
        for key in ("kind", "fingerprint", "owner_bits", "layers"):
            meta.pop(key)
        state.meta = meta
        return state


def load_pruned_base(path: str | os.PathLike, backbone: str) -> tuple[nn.Module, dict]:
    """An already pruned base given as a weights file: (model, owners); zeros are free.

    A safetensors file that names its backbone in its metadata must name ``backbone``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pruned base file {path} does not exist (method.base_weights)")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as fh:
                named = (fh.metadata() or {}).get("backbone")
        except Exception as err:
            raise UserError(f"pruned base file {path} is not a readable safetensors file") from err
        if named and named != backbone:
            raise UserError(
                f"pruned base file {path} is for backbone {named!r}, not {backbone!r}; "
                f"pass backbone={named} or a base pruned from {backbone}"
            )
    try:
        model = build_backbone(backbone, str(path), num_classes=1)
    except UserError as err:
        raise UserError(f"pruned base file {path} is not a {backbone} network: {err}") from None
    owners = owners_from_weights(model, classifier_name(backbone))
    if all(bool(o.all()) for o in owners.values()):
        raise UserError(
            f"base file {path} is not pruned (no zero weights), so no weights are free for new "
            "tasks; set method.base_weights=null to prune it by method.base_prune"
        )
    return model, owners
