"""Masks on a model's weights: put them on, find them, read their densities.

Each prunable weight (piggyback_lab/models/surgery.py) gets a ``WeightMask`` parametrization; the
weight itself stays where it is, shared and frozen.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback_lab.masking.layers import MaskConfig, WeightMask
from piggyback_lab.models.surgery import prunable_slots, stored_weight

PARAMETRIZED = re.compile(r"\.parametrizations\.(\w+)\.original$")  # a masked weight's key


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


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its masks, each masked weight under its plain key."""
    return {
        PARAMETRIZED.sub(r".\1", key): value
        for key, value in model.state_dict().items()
        if not key.endswith("mask_real")
    }


def is_masked(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


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


def overall_density(density: dict[str, float], sizes: dict[str, int]) -> float | None:
    """Share of all ``sizes``' weights kept, from per-layer ``density`` (None: no layers)."""
    total = sum(sizes.values())
    return sum(density[n] * sizes[n] for n in sizes) / total if total else None
