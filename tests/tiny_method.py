"""A method defined outside src/ (as a user's own package would be): it trains the norm
layers' scales and the classifier, and its task stores just those. Importing this module
registers it."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.registry import TaskMethod, register
from piggyback_lab.models.surgery import norm_layers
from piggyback_lab.taskfile import TaskFile, prefixed, unprefixed


def norm_scales(model: nn.Module) -> dict[str, nn.Parameter]:
    return {f"{name}.weight": norm.weight for name, norm in norm_layers(model).items()}


class TinyScaleTask(TaskMethod):
    name = "tiny_scale"
    kind = "tiny_scale"

    def task_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, "scale.")


class TinyScale(TaskModule):
    task_method = TinyScaleTask

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        super().__init__(model, classifier, **kwargs)
        self.train_only(norm_scales(model).values(), norms=False)  # and the classifier

    def param_groups(self) -> list[dict]:
        return [{"params": list(norm_scales(self.model).values())},
                {"params": list(self.head.parameters())}]  # fmt: skip

    def task_tensors(self) -> dict[str, torch.Tensor]:
        scales = {k: p.detach() for k, p in norm_scales(self.model).items()}
        return {**self.head_tensors(), **prefixed(scales, "scale.")}


register(TinyScaleTask())
