"""Classifier-only baseline: the backbone is a frozen feature extractor."""

from __future__ import annotations

import torch
from torch import nn

from src.masking.taskfile import prefixed
from src.methods.base import TaskModule
from src.methods.classifier_only.task import ClassifierOnlyTask


class ClassifierOnly(TaskModule):
    task_method = ClassifierOnlyTask

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        kwargs["train_bn"] = False
        super().__init__(model, classifier, **kwargs)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(classifier + "."))

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.head.parameters())}]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        return prefixed(self.head.state_dict(), "classifier.")
