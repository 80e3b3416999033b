"""Masks on a model's weights: put them on, find them, read their densities.

Each prunable weight (piggyback_lab/models/surgery.py) gets a ``WeightMask`` parametrization; the
weight itself stays where it is, shared and frozen.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback_lab.methods.piggyback.layers import MaskConfig, WeightMask
from piggyback_lab.models.surgery import prunable_slots, stored_weight


def add_masks(
    model: nn.Module,
    config: MaskConfig,
    classifier: str,
    mask_type: type[WeightMask] = WeightMask,
) -> list[str]:
    """Put a mask (a ``mask_type``) on every prunable weight outside ``classifier``, in place.

    The weights stay where they are (shared, not copied) and frozen. Returns the keys.
    """
    keys = []
    for key, module, param in list(prunable_slots(model, classifier)):
        weight = stored_weight(module, param)
        parametrize.register_parametrization(module, param, mask_type(weight, config))
        keys.append(key)
    return keys


def masked_layers(model: nn.Module) -> dict[str, WeightMask]:
    """The mask of every masked weight, by key (other parametrizations, e.g. LoRA's, are
    not masks)."""
    return {
        key: module.parametrizations[param][0]
        for key, module, param in prunable_slots(model, classifier="")
        if parametrize.is_parametrized(module, param)
        and isinstance(module.parametrizations[param][0], WeightMask)
    }


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.mask_real for m in masked_layers(model).values()]


@torch.no_grad()
def keep_all_weights(model: nn.Module) -> None:
    """Set every mask to keep every weight: the masked network computes the plain one."""
    for layer in masked_layers(model).values():
        layer.mask_real.fill_(2 * layer.mask_config.threshold)


@torch.no_grad()
def mask_densities(model: nn.Module) -> dict[str, float]:
    """Share of weights each layer's mask keeps (non-zero entries), per masked layer."""
    return {n: float(m.mask().ne(0).float().mean()) for n, m in masked_layers(model).items()}
