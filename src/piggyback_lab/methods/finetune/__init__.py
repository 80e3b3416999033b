"""Finetuning: one whole network per task (the paper's "individual networks")."""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.finetune.config import DecathlonFinetuneConfig, FinetuneConfig
from piggyback_lab.methods.finetune.module import Finetune
from piggyback_lab.methods.finetune.task import FinetuneTask
from piggyback_lab.methods.registry import register

register(FinetuneTask())
register_config("finetune", FinetuneConfig)
register_config("decathlon/finetune", DecathlonFinetuneConfig)

__all__ = ["DecathlonFinetuneConfig", "Finetune", "FinetuneConfig", "FinetuneTask"]
