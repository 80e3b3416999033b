"""Piggyback (Mallya et al., ECCV 2018): a binary mask over a frozen backbone's weights,
learned through a straight-through threshold, plus a classifier."""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.piggyback.config import PiggybackConfig
from piggyback_lab.methods.piggyback.module import Piggyback
from piggyback_lab.methods.piggyback.task import PiggybackTask
from piggyback_lab.methods.registry import register

register(PiggybackTask())
register_config("piggyback", PiggybackConfig)

__all__ = ["Piggyback", "PiggybackConfig", "PiggybackTask"]
