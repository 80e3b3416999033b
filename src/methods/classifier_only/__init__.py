"""Classifier only: a new linear classifier on the frozen backbone's features."""

from src.methods.classifier_only.module import ClassifierOnly
from src.methods.classifier_only.task import ClassifierOnlyTask
from src.methods.registry import register

register(ClassifierOnlyTask())

__all__ = ["ClassifierOnly", "ClassifierOnlyTask"]
