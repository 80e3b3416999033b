"""Finetuning: one whole network per task (the paper's "individual networks")."""

from src.methods.finetune.module import Finetune
from src.methods.finetune.task import FinetuneTask
from src.methods.registry import register

register(FinetuneTask())

__all__ = ["Finetune", "FinetuneTask"]
