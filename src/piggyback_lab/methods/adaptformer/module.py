"""AdaptFormer: a bottleneck MLP beside each transformer block's MLP of the frozen backbone,
plus a new classifier."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.adaptformer.layer import (
    LAYERNORM_OPTIONS,
    adaptformer_layers,
    add_adaptformer,
)
from piggyback_lab.methods.adaptformer.task import PREFIX, AdaptFormerTask
from piggyback_lab.methods.base import TaskModule
from piggyback_lab.taskfile import prefixed
from piggyback_lab.utils.errors import UserError, check_choice, check_integer, check_positive


def check_dropout(dropout: float) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"method.dropout must be in [0, 1) (got {dropout!r})")


class AdaptFormer(TaskModule):
    """The official recipe's split (main_image.py:233-240): only the adapters and the
    classifier train; the norms too with ``train_bn``, as for every method here."""

    task_method = AdaptFormerTask

    def __init__(
        self,
        model: nn.Module,
        classifier: str,
        bottleneck: int,
        scale: float,
        dropout: float,
        layernorm_option: str,
        **kwargs,
    ) -> None:
        check_integer("method.bottleneck", bottleneck)
        check_positive("method.scale", scale)
        check_dropout(dropout)
        check_choice("method.layernorm_option", layernorm_option, LAYERNORM_OPTIONS)
        super().__init__(model, classifier, **kwargs)  # fingerprint the plain backbone first
        if not add_adaptformer(model, classifier, bottleneck, scale, dropout, layernorm_option):
            raise UserError(
                "adaptformer adds an adapter beside each transformer block's MLP; "
                f"{self.backbone} has none"
            )
        self.train_only(self.adapter_parameters())

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every adapter's parameters: what AdaptFormer trains in the trunk."""
        return [p for a in adaptformer_layers(self.model).values() for p in a.parameters()]

    def param_groups(self) -> list[dict]:
        return [{"params": self.adapter_parameters()}, *self.head_and_norm_groups()]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        adapters = {
            f"{block}.{key}": value.detach()
            for block, adapter in adaptformer_layers(self.model).items()
            for key, value in adapter.state_dict().items()
        }
        return {**self.head_tensors(), **prefixed(adapters, PREFIX), **self.trained_norm_tensors()}

    def task_meta(self) -> dict:
        adapters = adaptformer_layers(self.model)
        return {
            "bottleneck": self.hparams.bottleneck,
            "scale": self.hparams.scale,
            "layernorm_option": self.hparams.layernorm_option,
            "train_bn": bool(self.hparams.train_bn),
            **self.trunk_meta(),
            "blocks": {block: a.down_proj.in_features for block, a in adapters.items()},
        }
