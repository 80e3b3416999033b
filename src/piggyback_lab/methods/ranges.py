"""The valid range of every method setting that has one, stated once by the setting's name.

A learning rate of -1 would train by gradient ascent, a batch of 0 would train nothing:
such values are refused where a method config is composed (``src.train``, before any work)
and where ``wrap`` takes settings, with one line naming the key and its range. The rules go
by name (``lr``, ``classifier_lr``, ``affine_lr``, ``retrain_lr`` are all learning rates),
so a method's new ``<something>_lr`` is checked without a line of its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from piggyback_lab.utils.errors import UserError


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (None: unbounded), each end open or closed."""

    words: str  # how the message states it: "a positive number (> 0)"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is a finite number (an integer if asked) in the range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if (self.integer and not isinstance(value, int)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


POSITIVE = Range("a positive number (> 0)", low=0, low_open=True)
NON_NEGATIVE = Range("a number >= 0", low=0)
COUNT = Range("an integer >= 1", low=1, integer=True)
COUNT_OR_ZERO = Range("an integer >= 0", low=0, integer=True)
FRACTION = Range(
    "a fraction strictly between 0 and 1", low=0, high=1, low_open=True, high_open=True
)
FACTOR = Range("a number in (0, 1]", low=0, high=1, low_open=True)
MOMENTUM = Range("in [0, 1)", low=0, high=1, high_open=True)

# By exact name, then by ending (the first that matches). None of a nullable setting
# (``classifier_lr: null``: lr) is always valid: the type says whether null is allowed.
BY_NAME = {
    "epochs": COUNT,
    "batch_size": COUNT,
    "weight_decay": NON_NEGATIVE,
    "momentum": MOMENTUM,
    "r": COUNT,
    "lora_alpha": POSITIVE,
    "mask_scale": POSITIVE,
    "num_tokens": COUNT_OR_ZERO,  # vpt: 0 tokens is the backbone itself
    "bottleneck": COUNT,  # adaptformer
    "scale": POSITIVE,
}
BY_ENDING = (
    ("lr_decay_factor", FACTOR),
    ("lr_decay_every", COUNT),
    ("_epochs", COUNT_OR_ZERO),  # retrain_epochs, warmup_epochs: 0 is none
    ("_prune", FRACTION),
    ("lr", POSITIVE),  # lr, classifier_lr, affine_lr, retrain_lr
)


def range_of(name: str) -> Range | None:
    """The range of the setting called ``name`` (None: no rule)."""
    if name in BY_NAME:
        return BY_NAME[name]
    return next((rule for ending, rule in BY_ENDING if name.endswith(ending)), None)


def check_value(key: str, value: Any) -> None:
    """A UserError naming ``key`` (its full path) and its range when ``value`` is outside."""
    rule = range_of(key.rpartition(".")[2])
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    for one in values:  # a list: a search grid's candidates (``search.lr: [1e-4, 1e-3]``)
        if rule is not None and one is not None and not rule.holds(one):
            raise UserError(f"{key} must be {rule.words}, not {one!r}")


def check_settings(settings: Mapping[str, Any], prefix: str = "") -> None:
    """Each of ``settings`` (nested mappings and dataclasses too) within its range."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    for key, value in settings.items():
        if isinstance(value, Mapping) or dataclasses.is_dataclass(value):
            check_settings(value, f"{prefix}{key}.")
        else:
            check_value(f"{prefix}{key}", value)


def check_schema_values(cfg: DictConfig, prefix: str = "", typed: bool = False) -> None:
    """Every value in a typed (method) node of a composed config, nested nodes included,
    within its range; untyped nodes (datasets, trainer) are left to their own checks.
    Interpolations are checked where they point."""
    typed = typed or dataclasses.is_dataclass(OmegaConf.get_type(cfg))
    for key in cfg:
        if OmegaConf.is_interpolation(cfg, key) or OmegaConf.is_missing(cfg, key):
            continue
        node = cfg[key]
        if isinstance(node, DictConfig):
            check_schema_values(node, f"{prefix}{key}.", typed)
        elif typed:
            check_value(f"{prefix}{key}", node)
