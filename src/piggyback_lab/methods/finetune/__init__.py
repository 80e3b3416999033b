"""Finetuning: one whole network per task (the paper's "individual networks")."""

from piggyback_lab.methods.finetune.module import Finetune
from piggyback_lab.methods.finetune.task import FinetuneTask
from piggyback_lab.methods.registry import register

register(FinetuneTask())

__all__ = ["Finetune", "FinetuneTask"]
