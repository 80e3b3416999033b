"""The residual adapters' settings: the authors' recipe for the Visual Decathlon domains
(srebuffi/residual_adapters, train_new_task_adapters.py; docs/methods.md), for both forms
and every backbone (no other is published for them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from piggyback_lab.methods.config import SEARCH, ScheduleShape, SGDConfig, lr_grid

TRAIN = "residual_adapters train_new_task_adapters.py"


@dataclass
class ParallelAdaptersConfig(ScheduleShape):
    """A 1x1 conv beside every conv of the frozen backbone (Rebuffi, Bilen, Vedaldi, CVPR
    2018), every BN and a new classifier trained per task."""

    _target_: str = field(
        default="piggyback_lab.methods.residual_adapters.ParallelAdapters",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="parallel_adapters",
        metadata={"help": "the method's name in records, task files, tables"},
    )
    epochs: int = field(default=120, metadata={"help": "training epochs", "source": f"{TRAIN}:32"})
    batch_size: int = field(
        default=128,
        metadata={
            "help": "images per training batch",
            "source": "residual_adapters imdbfolder_coco.py:146",
        },
    )
    optimizer: SGDConfig = field(
        default_factory=lambda: SGDConfig(momentum=0.9, weight_decay=1e-4),
        metadata={
            "help": "SGD with momentum, weight decay 1e-4 on every trained parameter",
            "source": f"{TRAIN}:153 (momentum); sgd.py:41-48 with README's --wd1x1 1. (the "
            "decay is reassigned in the parameter loop and never reset: 1e-4 once the first 1x1 "
            "adapter is met; the series form's first BN takes 5e-4, here 1e-4 too)",
        },
    )
    lr: float = field(
        default=0.1,
        metadata={
            "help": "the adapters', norms' and classifier's learning rate",
            "source": f"{TRAIN}:28",
        },
    )
    classifier_lr: float | None = field(
        default=None, metadata={"help": "the classifier's learning rate (null: lr)"}
    )
    lr_decay_every: int | None = field(
        default=None,
        metadata={"help": "epochs between learning-rate steps (null: step at lr_milestones)"},
    )
    lr_milestones: list[int] | None = field(
        default_factory=lambda: [80, 100],
        metadata={
            "help": "the epochs at which the learning rate steps (null: every lr_decay_every)",
            "source": f"{TRAIN}:33-34",
        },
    )
    lr_decay_factor: float = field(
        default=0.1,
        metadata={
            "help": "the learning rate's factor at each step",
            "source": "residual_adapters utils_pytorch.py:37-42",
        },
    )
    train_bn: bool = field(
        default=True,
        metadata={"help": "train every BatchNorm, one set per task, as the authors keep"},
    )
    search: dict[str, Any] = field(default_factory=lr_grid(1e-3, 1e-2, 1e-1), metadata=SEARCH)


@dataclass
class SeriesAdaptersConfig(ParallelAdaptersConfig):
    """z + conv_1x1(BN(z)) after every conv that feeds a BN (Rebuffi, Bilen, Vedaldi,
    NeurIPS 2017), every BN and a new classifier trained per task: the parallel form's
    recipe, the authors' for both."""

    _target_: str = field(
        default="piggyback_lab.methods.residual_adapters.SeriesAdapters",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="series_adapters",
        metadata={"help": "the method's name in records, task files, tables"},
    )
