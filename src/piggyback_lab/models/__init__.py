"""Backbones: the registry and the architectures the project builds itself.

Importing the package registers every architecture (torchvision's in registry.py,
ours by ``@register_backbone`` on their classes).
"""

from piggyback_lab.models import efficientnet_lite  # noqa: F401  (registers efficientnet_lite0)
from piggyback_lab.models.minicnn import MiniCNN
from piggyback_lab.models.minivit import MiniViT
from piggyback_lab.models.registry import (
    BACKBONES,
    WEIGHT_FILE_SUFFIXES,
    backbone_facts,
    backbone_names,
    backbone_spec,
    build_backbone,
    classifier_name,
    load_state_dict_file,
    normalisation,
    pretrained_state,
    weights_source,
)
from piggyback_lab.models.resnet26 import ResNet26

__all__ = [
    "BACKBONES",
    "WEIGHT_FILE_SUFFIXES",
    "MiniCNN",
    "MiniViT",
    "ResNet26",
    "backbone_facts",
    "backbone_names",
    "backbone_spec",
    "build_backbone",
    "classifier_name",
    "load_state_dict_file",
    "normalisation",
    "pretrained_state",
    "weights_source",
]
