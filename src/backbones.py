"""Backbone registry: build a pretrained network and name its task classifier.

Adding a backbone is one config file (conf/backbone/<name>.yaml) and, for an
architecture torchvision does not have, one ``@register_backbone`` entry here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file as load_safetensors
from torch import nn

from src.errors import UserError, check_choice
from src.masking.model_surgery import replace_module
from src.models.resnet26 import ResNet26


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one architecture and where its classifier sits (a dotted module path)."""

    build: Callable[[], nn.Module]
    classifier: str
    weights_help: str = ""  # how to get a weights file, said when the configured one is missing


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, classifier: str) -> Callable:
    def decorator(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        BACKBONES[name] = BackboneSpec(build=build, classifier=classifier)
        return build

    return decorator


def _torchvision(name: str, classifier: str) -> None:
    BACKBONES[name] = BackboneSpec(
        build=lambda: torchvision.models.get_model(name, weights=None), classifier=classifier
    )


_torchvision("vgg16", "classifier.6")
_torchvision("vgg16_bn", "classifier.6")
_torchvision("resnet50", "fc")
_torchvision("densenet121", "classifier")
BACKBONES["resnet26"] = BackboneSpec(  # Visual Decathlon
    build=ResNet26,
    classifier="classifier",
    weights_help="convert the authors' released ImageNet model once with "
    "scripts/convert_resnet26.py (docs/decathlon.md), or pass backbone.weights=<file>",
)


@register_backbone("minicnn", classifier="classifier")
class MiniCNN(nn.Module):
    """A small VGG-style CNN with BatchNorm for the embedded mini benchmark (32x32 inputs)."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        w = width
        self.features = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU())
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def _spec(name: str) -> BackboneSpec:
    check_choice("backbone", name, backbone_names())
    return BACKBONES[name]


def classifier_name(name: str) -> str:
    return _spec(name).classifier


def load_state_dict_file(
    path: str | os.PathLike, missing_help: str = ""
) -> dict[str, torch.Tensor]:
    """Read weights without running code: safetensors, or torch.load(weights_only=True).

    ``missing_help`` says how to get the file when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"weights file {path} does not exist" + (missing_help and f"; {missing_help}")
        )
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"cannot read weights file {path} ({type(err).__name__}): it is corrupt or not a "
            "plain state_dict (only safetensors and weights-only torch files are loaded)"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} does not hold a state_dict of tensors")
    return state


def _torchvision_weights(name: str, weights: str) -> dict[str, torch.Tensor]:
    available = torchvision.models.get_model_weights(name)
    try:
        enum = available[weights]
    except KeyError:
        raise UserError(
            f"{name} has no torchvision weights {weights!r}, and no file by that name exists; "
            f"choose one of: {', '.join(w.name for w in available)}"
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    try:
        return enum.get_state_dict(progress=True, check_hash=True)
    except Exception as err:
        raise UserError(
            f"cannot get ImageNet weights for {name} ({type(err).__name__}: {err}). "
            f"Without network, download {enum.url} elsewhere and put it at {cached}, "
            f"or pass backbone.weights=/path/to/weights.pth"
        ) from err


def build_backbone(name: str, weights: str | None, num_classes: int) -> nn.Module:
    """The named network with its pretrained weights and a fresh ``num_classes`` classifier.

    ``weights`` is a torchvision weights name (e.g. IMAGENET1K_V1), a file path
    (.safetensors or a weights-only torch file), or None for random initialisation.
    """
    spec = _spec(name)
    model = spec.build()
    if weights:
        is_file = Path(weights).suffix in {".safetensors", ".pth", ".pt", ".bin"}
        state = (
            load_state_dict_file(weights, spec.weights_help)
            if is_file
            else _torchvision_weights(name, str(weights))
        )
        head = spec.classifier + "."
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise UserError(f"weights {weights} do not fit {name}: {err}") from None
        missing = [k for k in missing if not k.startswith(head)]
        if missing or unexpected:
            raise UserError(
                f"weights {weights} do not fit {name}: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
    old = model.get_submodule(spec.classifier)
    replace_module(model, spec.classifier, nn.Linear(old.in_features, num_classes))
    return model
