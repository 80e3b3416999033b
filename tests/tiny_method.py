"""A method defined outside src/ (as a user's own package would be): it trains the biases
and the classifier, and its task stores just those. Importing this module registers it."""

from __future__ import annotations

import torch
from torch import nn

from src.masking.taskfile import TaskFile, prefixed, unprefixed
from src.methods.base import TaskModule
from src.methods.registry import TaskMethod, register


def biases(model: nn.Module, classifier: str) -> dict[str, nn.Parameter]:
    return {
        name: p
        for name, p in model.named_parameters()
        if name.endswith("bias") and not name.startswith(classifier + ".")
    }


class TinyBiasTask(TaskMethod):
    name = "tiny_bias"
    kind = "tiny_bias"

    def task_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, "bias.")


class TinyBias(TaskModule):
    task_method = TinyBiasTask

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        super().__init__(model, classifier, **kwargs)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in [*biases(model, classifier).values(), *self.head.parameters()]:
            p.requires_grad_(True)

    def param_groups(self) -> list[dict]:
        trunk = list(biases(self.model, self.classifier).values())
        return [{"params": trunk}, {"params": list(self.head.parameters())}]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        state = {k: p.detach() for k, p in biases(self.model, self.classifier).items()}
        return {**prefixed(self.head.state_dict(), "classifier."), **prefixed(state, "bias.")}


register(TinyBiasTask())
