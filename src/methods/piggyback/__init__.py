"""Piggyback (Mallya et al., ECCV 2018): a binary mask over a frozen backbone's weights,
learned through a straight-through threshold, plus a classifier."""

from src.methods.piggyback.module import Piggyback
from src.methods.piggyback.task import PiggybackTask
from src.methods.registry import register

register(PiggybackTask())

__all__ = ["Piggyback", "PiggybackTask"]
