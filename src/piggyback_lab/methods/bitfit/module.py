"""BitFit: the frozen backbone's biases and a new classifier are all that train."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.bitfit.task import BitFitTask, trunk_biases
from piggyback_lab.taskfile import prefixed
from piggyback_lab.utils.errors import UserError


class BitFit(TaskModule):
    """Norm layers stay in eval mode (their statistics are the backbone's); their biases
    train with every conv, linear and attention bias."""

    task_method = BitFitTask

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        biases = trunk_biases(model, classifier)
        if not biases:  # its task file would hold no biases, which its reader calls corrupt
            raise UserError(
                f"bitfit needs biases: this {type(model).__name__} has none outside its "
                f"classifier {classifier!r}; choose another method (lora, ssf, piggyback)"
            )
        super().__init__(model, classifier, **kwargs)
        self.train_only(biases.values(), norms=False)

    def param_groups(self) -> list[dict]:
        biases = list(trunk_biases(self.model, self.classifier).values())
        return [{"params": biases}, self.head_group()]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        biases = {k: p.detach() for k, p in trunk_biases(self.model, self.classifier).items()}
        return {**self.head_tensors(), **prefixed(biases, "bias.")}

    def task_meta(self) -> dict:
        return self.trunk_meta()
