"""Model-wide operations on any torch model: find the trunk's weights, swap a submodule,
freeze the norms.

A *prunable weight* is one that a layer multiplies with its input: the weight of every
Conv1d/2d/3d and Linear of the trunk (subclasses included, e.g. attention's out_proj) and
nn.MultiheadAttention's packed ``in_proj_weight`` (or its separate q/k/v weights). Its key is
the module's name for a ``weight`` and ``<module>.<parameter>`` otherwise, so the keys of the
paper's CNNs are their layer names. Biases, norms, positional embeddings and class tokens are
not prunable weights: they stay frozen (norms may be trained per task, ``train_bn``). A
weight under a parametrization (a mask) counts as the stored weight it wraps.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path ``name`` for ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _has(module: nn.Module, param: str) -> bool:
    return module._parameters.get(param) is not None or parametrize.is_parametrized(module, param)


def prunable_slots(model: nn.Module, classifier: str) -> Iterator[tuple[str, nn.Module, str]]:
    """(key, module, parameter name) of every prunable weight outside the task classifier."""
    for name, module in model.named_modules():
        if name == classifier or name.startswith(classifier + "."):
            continue
        if isinstance(module, PRUNABLE_TYPES):
            yield name, module, "weight"
        elif isinstance(module, nn.MultiheadAttention):
            for param in ATTENTION_WEIGHTS:
                if _has(module, param):
                    yield f"{name}.{param}", module, param


def stored_weight(module: nn.Module, param: str) -> nn.Parameter:
    """The weight as stored: under a mask, the frozen original it multiplies."""
    if parametrize.is_parametrized(module, param):
        return module.parametrizations[param].original
    return module._parameters[param]


def parametrized_weights(model: nn.Module, kind: type[nn.Module]) -> dict[str, nn.Module]:
    """The ``kind`` parametrization of every prunable weight that has one, by key."""
    return {
        key: module.parametrizations[param][0]
        for key, module, param in prunable_slots(model, classifier="")
        if parametrize.is_parametrized(module, param)
        and isinstance(module.parametrizations[param][0], kind)
    }


def prunable_weights(model: nn.Module, classifier: str) -> dict[str, nn.Parameter]:
    """Every prunable weight of the trunk, as stored, by key."""
    return {key: stored_weight(m, p) for key, m, p in prunable_slots(model, classifier)}


def prunable_weight_count(model: nn.Module, classifier: str) -> int:
    """How many prunable trunk weights there are: the unit of bits per weight per task."""
    return sum(w.numel() for w in prunable_weights(model, classifier).values())


def prunable_biases(model: nn.Module, classifier: str) -> dict[str, nn.Parameter]:
    """The biases added after the prunable weights, by state_dict key (PackNet's extras)."""
    biases = {}
    for key, module, param in prunable_slots(model, classifier):
        name = key if param == "weight" else key.rpartition(".")[0]  # the module's
        bias_name = "bias" if param == "weight" else "in_proj_bias"  # q/k/v share it
        bias = module._parameters.get(bias_name)
        if bias is not None:
            biases[f"{name}.{bias_name}" if name else bias_name] = bias
    return biases


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """BatchNorm, LayerNorm and GroupNorm layers (what ``train_bn`` trains per task)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, NORM_TYPES)}


def freeze_norms(model: nn.Module) -> None:
    """Norm layers with no gradient, BatchNorm in eval mode (running statistics untouched)."""
    for module in norm_layers(model).values():
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)


def set_norms_eval(model: nn.Module) -> None:
    """Re-apply eval mode to the norm layers after a ``model.train()`` call."""
    for module in norm_layers(model).values():
        module.eval()


def linear_from_state(state: dict[str, torch.Tensor]) -> nn.Linear:
    """A Linear layer holding ``state`` (its weight, and its bias when stored)."""
    weight = state["weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    layer.load_state_dict(state)
    return layer


PARAMETRIZED = re.compile(r"\.parametrizations\.(\w+)\.original$")  # a parametrized weight


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its weight parametrizations (a method's masks or adapters):
    each parametrized weight under its plain key, the parametrizations' own tensors left out."""
    return {
        PARAMETRIZED.sub(r".\1", key): value
        for key, value in model.state_dict().items()
        if ".parametrizations." not in key or PARAMETRIZED.search(key)
    }


def is_parametrized(model: nn.Module) -> bool:
    """Whether any weight of ``model`` carries a parametrization (a method's masks, LoRA)."""
    return any(parametrize.is_parametrized(m) for m in model.modules())
