"""An affine-mask task as stored: a Piggyback task (one bit per masked weight, the
classifier, the norms when trained) plus each layer's (k0, k1, k2) as ``affine.<layer>``.

Folding writes W * (k0 + k1 * M) + k2 with the arithmetic training used, so the folded
network gives the trained one's outputs; a MultiTaskModel writes it from its kept copy of
W on entering and puts W back on leaving (every weight of a layer may change).
"""

from __future__ import annotations

import torch

from piggyback_lab.methods.affine_masks.layer import affine_masked
from piggyback_lab.methods.piggyback.task import PiggybackTask
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError

BITS_PER_LAYER = 3 * 32  # (k0, k1, k2) in float32


class AffineMaskTask(PiggybackTask):
    name = "affine_masks"
    kind = "affine_masks"
    decathlon_recipe = "no published Decathlon recipe; Piggyback's fine-grained recipe"

    def check(self, tf: TaskFile) -> None:
        """A Piggyback task whose every masked layer also has three finite k's."""
        super().check(tf)
        for name in tf.meta["layers"]:
            k = tf.tensors.get(f"affine.{name}")
            if k is None or list(k.shape) != [3] or not k.is_floating_point():
                raise UserError(f"task file {tf.path}: layer {name} has no (k0, k1, k2); corrupt")
            if not bool(torch.isfinite(k).all()):
                raise UserError(f"task file {tf.path}: layer {name}'s k's are not finite; corrupt")

    def masked(
        self, tensors: dict, key: str, source: torch.Tensor, mask: torch.Tensor, out: torch.Tensor
    ) -> None:
        affine_masked(source, mask, tensors[f"affine.{key}"].to(source.device), out=out)

    def changes(self, tensors: dict, key: str, mask: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(mask, dtype=torch.bool)

    def storage(self, tf: TaskFile) -> dict:
        """Piggyback's mask bits per weight, plus the k's."""
        report = super().storage(tf)
        extra = BITS_PER_LAYER * len(tf.meta["layers"]) / report["masked_weights"]
        for key in ("bits_per_weight", "compressed_bits_per_weight"):
            report[key] += extra
        return report
