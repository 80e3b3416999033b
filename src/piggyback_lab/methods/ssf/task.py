"""An SSF task as stored: each adapted Conv/Linear/attention weight's per-channel scale
(``ssf_scale.<key>``; folded as scale * W), the folded biases and norm parameters
(``ssf_state.<state key>``: scale * b + shift, as training computed them) and the classifier.

Folding writes scale * W once and copies the state, so the folded network gives the trained
one's outputs; a MultiTaskModel computes scale * W from its kept copy on entering.
"""

from __future__ import annotations

import torch

from piggyback_lab.methods.registry import (
    WeightRewriteTask,
    check_trunk_weights,
    stored_bits_per_weight,
)
from piggyback_lab.methods.ssf.layer import folded_weight
from piggyback_lab.taskfile import TaskFile, unprefixed
from piggyback_lab.utils.errors import UserError


class SSFTask(WeightRewriteTask):
    name = "ssf"
    kind = "ssf"

    def check(self, tf: TaskFile) -> None:
        super().check(tf)
        check_trunk_weights(tf)
        if not self.task_state(tf, ""):
            raise UserError(f"task file {tf.path} holds no SSF state; it is corrupt")
        if any(t.ndim != 1 for t in self.scales(tf).values()):
            raise UserError(f"task file {tf.path}: an SSF scale is not a vector; corrupt")

    def scales(self, tf: TaskFile) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, "ssf_scale.")

    def task_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, "ssf_state.")

    def rewrites(self, tf: TaskFile) -> list[str]:
        return list(self.scales(tf))

    def fits(self, tf: TaskFile, key: str, weight: torch.Tensor) -> bool:
        return weight.shape[0] == self.scales(tf)[key].numel()

    def rewritten(self, tf: TaskFile, key: str, weight: torch.Tensor) -> torch.Tensor:
        return folded_weight(weight, self.scales(tf)[key].to(weight))

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, ("ssf_scale.", "ssf_state."))
