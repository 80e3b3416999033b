"""Finetuning baseline: one whole network per task (the paper's "individual networks")."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.finetune.task import FinetuneTask
from piggyback_lab.taskfile import prefixed


class Finetune(TaskModule):
    """The whole network trains: every parameter still trainable once ``TaskModule`` has
    frozen the norms (without ``train_bn``)."""

    task_method = FinetuneTask

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        super().__init__(model, classifier, **kwargs)
        self.train_only([p for p in model.parameters() if p.requires_grad])

    def param_groups(self) -> list[dict]:
        head = set(self.head.parameters())
        trunk = [p for p in self.model.parameters() if p not in head and p.requires_grad]
        return [{"params": trunk}, self.head_group()]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        return prefixed(self.model.state_dict(), "model.")
