"""An SSF task as stored: each adapted Conv/Linear/attention weight's per-channel scale
(``ssf_scale.<key>``; folded as scale * W), the folded biases and norm parameters
(``ssf_state.<state key>``: scale * b + shift, as training computed them) and the classifier.

Folding writes scale * W once and copies the state, so the folded network gives the trained
one's outputs; a MultiTaskModel computes scale * W from its kept copy on entering.
"""

from __future__ import annotations

import torch
from torch import nn

from src.masking.model_surgery import is_masked
from src.masking.taskfile import TaskFile, unprefixed
from src.methods.registry import HostedTask, TaskMethod, check_trunk_weights, stored_bits_per_weight
from src.methods.ssf.layer import folded_weight
from src.models.surgery import prunable_weights
from src.utils.errors import UserError


class SSFTask(TaskMethod):
    name = "ssf"
    kind = "ssf"

    def check(self, tf: TaskFile) -> None:
        super().check(tf)
        check_trunk_weights(tf)
        if not self.task_state(tf, ""):
            raise UserError(f"task file {tf.path} holds no SSF state; it is corrupt")
        if any(t.ndim != 1 for t in self.scales(tf).values()):
            raise UserError(f"task file {tf.path}: an SSF scale is not a vector; corrupt")

    def scales(self, tf: TaskFile) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, "ssf_scale.")

    def task_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, "ssf_state.")

    def check_fits(self, tf: TaskFile, weights: dict[str, torch.Tensor]) -> None:
        for key, scale in self.scales(tf).items():
            if key not in weights or weights[key].shape[0] != scale.numel():
                raise UserError(
                    f"task file {tf.path} scales weight {key}, which this backbone lacks or "
                    "shapes otherwise; it was made for another backbone"
                )

    @torch.no_grad()
    def fold(self, model: nn.Module, tf: TaskFile, classifier: str) -> nn.Module:
        if is_masked(model):
            raise ValueError("fold expects a plain backbone, not a parametrized model")
        weights = prunable_weights(model, classifier)
        self.check_fits(tf, weights)
        super().fold(model, tf, classifier)
        for key, scale in self.scales(tf).items():
            weights[key].copy_(folded_weight(weights[key], scale.to(weights[key])))
        return model

    def hosted(self, tf: TaskFile, host, name: str | None = None) -> list[HostedTask]:
        (task,) = super().hosted(tf, host, name)
        self.check_fits(tf, host.weights)
        scales = {k: v.to(host.device) for k, v in self.scales(tf).items()}

        def fold(key: str, weight: torch.Tensor, source: torch.Tensor) -> None:
            weight.copy_(folded_weight(source, scales[key].to(source.dtype)))

        task.layers = tuple(scales)
        task.fold = fold
        task.changed = lambda key: torch.ones_like(host.weights[key], dtype=torch.bool)
        return [task]

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, ("ssf_scale.", "ssf_state."))
