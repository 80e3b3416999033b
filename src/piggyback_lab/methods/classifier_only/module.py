"""Classifier-only baseline: the backbone is a frozen feature extractor."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.classifier_only.task import ClassifierOnlyTask


class ClassifierOnly(TaskModule):
    """Only the classifier is optimised. With ``train_bn`` the norm layers run in train
    mode, so their running statistics follow the task's data (the official ``--train_bn``
    with ``--finetune_layers classifier``) and the task stores them."""

    task_method = ClassifierOnlyTask

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        super().__init__(model, classifier, **kwargs)
        self.train_only((), norms=False)

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.head.parameters())}]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        return {**self.head_tensors(), **self.trained_norm_tensors()}
