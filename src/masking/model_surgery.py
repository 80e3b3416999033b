"""Model-wide operations: put masks on a network, freeze BatchNorm, read mask statistics."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from src.masking.layers import MASKED_TWINS, MaskConfig, MaskedLayerMixin

BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path ``name`` for ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def prunable_layers(model: nn.Module, classifier: str) -> Iterator[tuple[str, nn.Module]]:
    """Every Conv2d and Linear of the shared trunk, i.e. all but the task classifier."""
    for name, module in model.named_modules():
        if name == classifier or name.startswith(classifier + "."):
            continue
        if type(module) in MASKED_TWINS:
            yield name, module


def add_masks(model: nn.Module, config: MaskConfig, classifier: str) -> list[str]:
    """Replace every Conv2d and Linear except ``classifier`` by its masked twin, in place.

    The dense weights are shared, not copied, and frozen. Returns the masked layer names.
    """
    names = []
    for name, module in list(prunable_layers(model, classifier)):
        replace_module(model, name, MASKED_TWINS[type(module)].from_dense(module, config))
        names.append(name)
    return names


def masked_layers(model: nn.Module) -> dict[str, MaskedLayerMixin]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLayerMixin)}


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.mask_real for m in masked_layers(model).values()]


@torch.no_grad()
def keep_all_weights(model: nn.Module) -> None:
    """Set every mask to keep every weight: the masked network computes the plain one."""
    for layer in masked_layers(model).values():
        layer.mask_real.fill_(2 * layer.mask_config.threshold)


def batchnorm_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BATCHNORM_TYPES)}


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm in eval mode (running statistics untouched) with no gradient."""
    for module in batchnorm_layers(model).values():
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)


def set_batchnorm_eval(model: nn.Module) -> None:
    """Re-apply eval mode to BatchNorm after a ``model.train()`` call."""
    for module in batchnorm_layers(model).values():
        module.eval()


@torch.no_grad()
def mask_densities(model: nn.Module) -> dict[str, float]:
    """Share of weights each layer's mask keeps (non-zero entries), per masked layer."""
    return {n: float(m.mask().ne(0).float().mean()) for n, m in masked_layers(model).items()}


def overall_density(density: dict[str, float], sizes: dict[str, int]) -> float | None:
    """Share of all ``sizes``' weights kept, from per-layer ``density`` (None: no layers)."""
    total = sum(sizes.values())
    return sum(density[n] * sizes[n] for n in sizes) / total if total else None


def linear_from_state(state: dict[str, torch.Tensor]) -> nn.Linear:
    """A Linear layer holding ``state`` (its weight, and its bias when stored)."""
    weight = state["weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    layer.load_state_dict(state)
    return layer
