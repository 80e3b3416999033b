"""A GPS task as stored: for each weight it selected from, the columns chosen per row
(``columns.<key>``: rows x k, int16 where a row is narrower than 32768, else int32; the row
is the position) and the learned change there (``delta.<key>``: rows x k), the classifier,
the norms when trained, and in the metadata k and each layer's shape.

Folding adds each delta at its positions (``sparse_added``, the sum training computed at
every step), so the folded network gives the trained one's outputs. A MultiTaskModel
computes that sum from its kept copy of W0 on entering and puts W0 back on leaving (or,
with the restore strategy, saves and restores only the selected positions).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from piggyback_lab.methods.gps.layer import sparse_added
from piggyback_lab.methods.registry import (
    NO_MASKS,
    HostedTask,
    WeightRewriteTask,
    check_trunk_weights,
    stored_bits_per_weight,
)
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError

PREFIXES = ("columns.", "delta.")
INDEX_TYPES = (torch.int16, torch.int32)


def index_dtype(fan_in: int) -> torch.dtype:
    """The narrowest stored type for column indices below ``fan_in``."""
    return torch.int16 if fan_in <= torch.iinfo(torch.int16).max else torch.int32


def check_layer(tf: TaskFile, key: str, shape: Any) -> None:
    """One layer's columns and delta: rows x k (1 <= k <= the row's width), integer columns
    strictly increasing along each row (so in range and distinct), finite float deltas."""
    columns, delta = tf.tensors.get(f"columns.{key}"), tf.tensors.get(f"delta.{key}")
    fine = (
        isinstance(shape, list)
        and len(shape) >= 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
        and columns is not None
        and delta is not None
        and columns.dtype in INDEX_TYPES
        and delta.is_floating_point()
        and columns.ndim == 2
        and columns.shape == delta.shape
        and columns.shape[0] == shape[0]
        and 1 <= columns.shape[1] <= math.prod(shape[1:])
    )
    if not fine:
        raise UserError(f"task file {tf.path}: the GPS update of {key} is corrupt")
    cols = columns.long()
    if cols.min() < 0 or cols.max() >= math.prod(shape[1:]) or (cols.diff(dim=1) <= 0).any():
        raise UserError(
            f"task file {tf.path}: the GPS columns of {key} are out of range or repeated; corrupt"
        )
    if not torch.isfinite(delta).all():
        raise UserError(f"task file {tf.path}: the GPS update of {key} is not finite; corrupt")


class GPSTask(WeightRewriteTask):
    name = "gps"
    kind = "gps"

    def check(self, tf: TaskFile) -> None:
        super().check(tf)
        check_trunk_weights(tf)
        layers = tf.meta.get("layers")
        if not isinstance(layers, dict) or not layers:
            raise UserError(f"task file {tf.path} lists no selected layers; it is corrupt")
        for key, shape in layers.items():
            check_layer(tf, key, shape)

    def rewrites(self, tf: TaskFile) -> list[str]:
        return list(tf.meta["layers"])

    def fits(self, tf: TaskFile, key: str, weight: torch.Tensor) -> bool:
        return list(weight.shape) == tf.meta["layers"][key]

    def rewritten(self, tf: TaskFile, key: str, weight: torch.Tensor) -> torch.Tensor:
        columns = tf.tensors[f"columns.{key}"].to(weight.device, torch.long)
        delta = tf.tensors[f"delta.{key}"].to(weight.device, weight.dtype)
        return sparse_added(weight, columns, delta)

    def hosted(self, tf: TaskFile, host: Any, name: str | None = None) -> list[HostedTask]:
        """As every weight rewrite, but only the selected positions change."""
        (task,) = super().hosted(tf, host, name)

        def changed(key: str) -> torch.Tensor:
            weight = host.weights[key]
            columns = tf.tensors[f"columns.{key}"].to(weight.device, torch.long)
            rows = torch.zeros(weight.shape[0], weight[0].numel(), dtype=torch.bool)
            return rows.to(weight.device).scatter_(1, columns, True).view(weight.shape)

        task.changed = changed
        return [task]

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, PREFIXES)

    def state_facts(self, tf: TaskFile) -> dict[str, Any]:
        selected = sum(t.numel() for k, t in tf.tensors.items() if k.startswith("delta."))
        return {**NO_MASKS, "selected_weights": selected}
