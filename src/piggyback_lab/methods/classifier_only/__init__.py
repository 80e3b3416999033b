"""Classifier only: a new linear classifier on the frozen backbone's features."""

from piggyback_lab.methods.classifier_only.config import ClassifierOnlyConfig
from piggyback_lab.methods.classifier_only.module import ClassifierOnly
from piggyback_lab.methods.classifier_only.task import ClassifierOnlyTask
from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.registry import register

register(ClassifierOnlyTask())
register_config("classifier_only", ClassifierOnlyConfig)

__all__ = ["ClassifierOnly", "ClassifierOnlyConfig", "ClassifierOnlyTask"]
