"""Piggyback: learn a binary mask over a frozen backbone's weights, plus a classifier."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.piggyback.layers import MaskConfig, WeightMask
from piggyback_lab.methods.piggyback.masks import (
    add_masks,
    keep_all_weights,
    mask_densities,
    mask_parameters,
    masked_layers,
)
from piggyback_lab.methods.piggyback.task import PiggybackTask, piggyback_tensors
from piggyback_lab.methods.registry import overall_density


class Piggyback(TaskModule):
    task_method = PiggybackTask
    mask_type: type[WeightMask] = WeightMask  # the parametrization each masked weight gets

    def __init__(
        self,
        model: nn.Module,
        classifier: str,
        mask_init: str,
        mask_scale: float,
        threshold_fn: str,
        threshold: float,
        scale_gradients: str,
        **kwargs,
    ) -> None:
        """The mask settings are the config's flat keys (``method.threshold=...`` sweeps)."""
        mask = MaskConfig(mask_init, mask_scale, threshold_fn, threshold, scale_gradients)
        super().__init__(model, classifier, **kwargs)  # fingerprint the plain backbone first
        add_masks(model, mask, classifier, self.mask_type)
        # every mask's own parameters: its real-valued mask (and AffineMasks' k's)
        self.train_only(p for layer in masked_layers(model).values() for p in layer.parameters())

    def param_groups(self) -> list[dict]:
        return [{"params": mask_parameters(self.model)}, *self.head_and_norm_groups()]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        return piggyback_tensors(self.model, self.classifier, self.hparams.train_bn)

    def task_meta(self) -> dict:
        layers = masked_layers(self.model)
        densities = mask_densities(self.model)
        first = next(iter(layers.values()))
        return {
            "threshold_fn": first.mask_config.threshold_fn,
            "threshold": first.mask_config.threshold,
            "train_bn": bool(self.hparams.train_bn),
            "layers": {
                n: {"shape": list(m.weight.shape), "density": densities[n]}
                for n, m in layers.items()
            },
        }

    def state_facts(self) -> dict:
        layers = masked_layers(self.model)
        density = mask_densities(self.model)
        sizes = {n: m.weight.numel() for n, m in layers.items()}
        return {
            "masked_weights": sum(sizes.values()),
            "mask_density": density,
            "mask_density_overall": overall_density(density, sizes),
            "mask_sizes": sizes,
        }

    def as_pretrained(self) -> None:
        keep_all_weights(self.model)
