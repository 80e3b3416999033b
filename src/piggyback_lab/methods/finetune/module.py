"""Finetuning baseline: one whole network per task (the paper's "individual networks")."""

from __future__ import annotations

import torch

from piggyback_lab.masking.taskfile import prefixed
from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.finetune.task import FinetuneTask


class Finetune(TaskModule):
    task_method = FinetuneTask

    def param_groups(self) -> list[dict]:
        head = set(self.head.parameters())
        trunk = [p for p in self.model.parameters() if p not in head and p.requires_grad]
        classifier_lr = self.hparams.classifier_lr or self.hparams.lr
        return [{"params": trunk}, {"params": list(head), "lr": classifier_lr}]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        return prefixed(self.model.state_dict(), "model.")
