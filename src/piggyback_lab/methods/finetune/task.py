"""A finetuned task: the whole network's state (``model.*``), its classifier included."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.registry import TaskMethod
from piggyback_lab.models.surgery import is_parametrized
from piggyback_lab.taskfile import TaskFile, unprefixed
from piggyback_lab.utils.errors import UserError


class FinetuneTask(TaskMethod):
    name = "finetune"
    kind = "full"
    decathlon_recipe = (
        "Rebuffi et al. 2017's finetuning recipe, the baseline that defines E_max "
        "(srebuffi/residual_adapters, train_new_task_finetuning.py and README)"
    )

    def head_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        head = unprefixed(tf.tensors, f"model.{classifier}.")
        if "weight" not in head:
            raise UserError(f"task file {tf.path} has no classifier; re-export it")
        return head

    def task_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        """The trunk's whole state, the classifier left out (the host swaps it)."""
        trunk = unprefixed(tf.tensors, "model.")
        return {k: v for k, v in trunk.items() if not k.startswith(classifier + ".")}

    def fold(self, model: nn.Module, tf: TaskFile, classifier: str) -> nn.Module:
        if is_parametrized(model):
            raise ValueError("fold expects a plain backbone, not a masked model")
        return super().fold(model, tf, classifier)

    def storage(self, tf: TaskFile) -> dict:
        model = [t for k, t in tf.tensors.items() if k.startswith("model.")]
        n = sum(t.numel() for t in model)
        return {
            "masked_weights": None,
            "bits_per_weight": 8 * sum(t.numel() * t.element_size() for t in model) / n,
        }
