"""Affine binary masks: Piggyback's masks and classifier, plus (k0, k1, k2) per layer."""

from __future__ import annotations

import torch

from piggyback_lab.methods.affine_masks.layer import AffineWeightMask
from piggyback_lab.methods.affine_masks.task import AffineMaskTask
from piggyback_lab.methods.piggyback import Piggyback
from piggyback_lab.methods.piggyback.masks import masked_layers


class AffineMasks(Piggyback):
    task_method = AffineMaskTask
    mask_type = AffineWeightMask

    def __init__(self, *args, affine_lr: float | None = None, **kwargs) -> None:
        """``affine_lr``: the learning rate of the k's (null: the masks' ``lr``)."""
        super().__init__(*args, **kwargs)

    def param_groups(self) -> list[dict]:
        masks, *rest = super().param_groups()
        affine = [layer.affine for layer in masked_layers(self.model).values()]
        return [masks, {"params": affine, "lr": self.hparams.affine_lr or self.hparams.lr}, *rest]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().task_tensors()
        for name, layer in masked_layers(self.model).items():
            tensors[f"affine.{name}"] = layer.affine.detach().clone()
        return tensors
