"""Architectures the project builds itself (those torchvision does not provide)."""

from src.models.resnet26 import ResNet26

__all__ = ["ResNet26"]
