"""A LoRA task as stored: each adapted weight's A and B (``lora_A.<key>``, ``lora_B.<key>``),
the classifier, the norms when trained, and in the metadata r, lora_alpha and each layer's
shape.

Folding writes W + (lora_alpha / r) * B A once, the sum training computed at every step, so
the folded network gives the trained one's outputs. A MultiTaskModel computes that sum from
its kept copy of W on entering, and puts W back on leaving.
"""

from __future__ import annotations

import math

import torch

from piggyback_lab.methods.lora.layer import folded
from piggyback_lab.methods.registry import (
    WeightRewriteTask,
    check_trunk_weights,
    stored_bits_per_weight,
)
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError

PREFIXES = ("lora_A.", "lora_B.")


class LoRATask(WeightRewriteTask):
    name = "lora"
    kind = "lora"

    def check(self, tf: TaskFile) -> None:
        """Per layer: a shape, and A (r x fan-in) and B (out x r) that make it."""
        super().check(tf)
        check_trunk_weights(tf)
        layers, r = tf.meta.get("layers"), tf.meta.get("r")
        if not isinstance(layers, dict) or not layers or not isinstance(r, int) or r < 1:
            raise UserError(f"task file {tf.path} lists no adapted layers or no rank; corrupt")
        alpha = tf.meta.get("lora_alpha")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise UserError(f"task file {tf.path} has no positive lora_alpha; it is corrupt")
        for key, shape in layers.items():
            a, b = tf.tensors.get(f"lora_A.{key}"), tf.tensors.get(f"lora_B.{key}")
            if (
                not isinstance(shape, list)
                or a is None
                or b is None
                or list(a.shape) != [r, math.prod(shape[1:])]
                or list(b.shape) != [shape[0], r]
            ):
                raise UserError(f"task file {tf.path}: the LoRA update of {key} is corrupt")

    def scaling(self, tf: TaskFile) -> float:
        return tf.meta["lora_alpha"] / tf.meta["r"]

    def update(self, tf: TaskFile, key: str, weight: torch.Tensor) -> torch.Tensor:
        """The task's weight for ``key`` from the backbone's ``weight``."""
        a = tf.tensors[f"lora_A.{key}"].to(weight.device, weight.dtype)
        b = tf.tensors[f"lora_B.{key}"].to(weight.device, weight.dtype)
        return folded(weight, a, b, self.scaling(tf))

    def rewrites(self, tf: TaskFile) -> list[str]:
        return list(tf.meta["layers"])

    def fits(self, tf: TaskFile, key: str, weight: torch.Tensor) -> bool:
        return list(weight.shape) == tf.meta["layers"][key]

    def rewritten(self, tf: TaskFile, key: str, weight: torch.Tensor) -> torch.Tensor:
        return self.update(tf, key, weight)

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, PREFIXES)
