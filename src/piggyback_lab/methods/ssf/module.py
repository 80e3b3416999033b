"""SSF: a per-channel scale and shift after the frozen backbone's layers, plus a classifier."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.ssf.layer import add_ssf, ssf_layers, state_key
from piggyback_lab.methods.ssf.task import SSFTask
from piggyback_lab.utils.errors import UserError


class SSF(TaskModule):
    """Norm layers stay in eval mode (their statistics are the backbone's); the scale and
    shift after them are what trains there."""

    task_method = SSFTask

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        if kwargs.get("train_bn"):
            raise UserError(
                "method=ssf keeps the norms in eval mode (train_bn=false): the scale and "
                "shift after each norm are what SSF trains there"
            )
        super().__init__(model, classifier, **kwargs)  # fingerprint the plain backbone first
        if not add_ssf(model, classifier):
            raise UserError("this backbone has no layer with a bias or a norm for SSF to adapt")
        self.train_only(self.adapter_parameters())

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every adapted layer's scale and shift: what SSF trains in the trunk."""
        return [p for *_, ssf in ssf_layers(self.model).values() for p in (ssf.scale, ssf.shift)]

    def param_groups(self) -> list[dict]:
        return [{"params": self.adapter_parameters()}, self.head_group()]

    @torch.no_grad()
    def task_tensors(self) -> dict[str, torch.Tensor]:
        """A prunable weight's scale (folded as scale * W); biases and norm parameters as
        their folded values, computed as training computes them."""
        tensors = self.head_tensors()
        for key, (module, weight, bias, prunable, ssf) in ssf_layers(self.model).items():
            tensors[f"ssf_state.{state_key(key, weight, bias)}"] = getattr(module, bias).clone()
            if prunable:
                tensors[f"ssf_scale.{key}"] = ssf.scale.detach().clone()
            else:  # a norm's scale is folded into its own weight
                folded = getattr(module, weight).clone()
                tensors[f"ssf_state.{state_key(key, weight, weight)}"] = folded
        return tensors

    def task_meta(self) -> dict:
        return self.trunk_meta()
