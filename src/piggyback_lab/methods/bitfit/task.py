"""A BitFit task as stored: every trunk bias (``bias.<state key>``) and the classifier.

Folding copies the biases into a plain backbone; a MultiTaskModel swaps them in as state,
so entering and leaving a task is exact. Storage is counted per prunable trunk weight (the
count is in the metadata, ``trunk_weights``), the unit the other methods' figures use.
"""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.registry import TaskMethod, check_trunk_weights, stored_bits_per_weight
from piggyback_lab.taskfile import TaskFile, unprefixed
from piggyback_lab.utils.errors import UserError


def trunk_biases(model: nn.Module, classifier: str) -> dict[str, nn.Parameter]:
    """Every bias outside the classifier: conv, linear, attention and norm biases."""
    return {
        name: p
        for name, p in model.named_parameters()
        if name.rpartition(".")[2].endswith("bias") and not name.startswith(classifier + ".")
    }


class BitFitTask(TaskMethod):
    name = "bitfit"
    kind = "bitfit"

    def check(self, tf: TaskFile) -> None:
        super().check(tf)
        if not self.task_state(tf, str(tf.meta.get("classifier", ""))):
            raise UserError(f"task file {tf.path} holds no biases; it is corrupt")
        check_trunk_weights(tf)

    def task_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, "bias.")

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, ("bias.",))
