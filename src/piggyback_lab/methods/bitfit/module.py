"""BitFit: the frozen backbone's biases and a new classifier are all that train."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.masking.taskfile import prefixed
from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.bitfit.task import BitFitTask, trunk_biases
from piggyback_lab.models.surgery import prunable_weight_count


class BitFit(TaskModule):
    """Norm layers stay in eval mode (their statistics are the backbone's); their biases
    train with every conv, linear and attention bias."""

    task_method = BitFitTask

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        super().__init__(model, classifier, **kwargs)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in [*trunk_biases(model, classifier).values(), *self.head.parameters()]:
            p.requires_grad_(True)

    def param_groups(self) -> list[dict]:
        classifier_lr = self.hparams.classifier_lr or self.hparams.lr
        biases = list(trunk_biases(self.model, self.classifier).values())
        return [{"params": biases}, {"params": list(self.head.parameters()), "lr": classifier_lr}]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        biases = {k: p.detach() for k, p in trunk_biases(self.model, self.classifier).items()}
        return {**prefixed(self.head.state_dict(), "classifier."), **prefixed(biases, "bias.")}

    def task_meta(self) -> dict:
        return {"trunk_weights": prunable_weight_count(self.model, self.classifier)}
