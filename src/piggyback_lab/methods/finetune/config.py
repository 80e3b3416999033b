"""Finetuning's settings: the Piggyback repository's baseline recipe (official code
arunmallya/piggyback, docs/reproduction.md), and Rebuffi et al.'s for a Visual Decathlon
domain (srebuffi/residual_adapters, docs/decathlon.md), whose errors define the score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from piggyback_lab.methods.config import SEARCH, ScheduleShape, SGDConfig, lr_grid


@dataclass
class FinetuneConfig(ScheduleShape):
    """The whole network per task, BatchNorm trained (the paper's "individual networks")."""

    _target_: str = field(
        default="piggyback_lab.methods.finetune.Finetune",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="finetune", metadata={"help": "the method's name in records, task files, tables"}
    )
    epochs: int = field(
        default=30,
        metadata={"help": "training epochs", "source": "piggyback src/scripts/run_baselines.sh:49"},
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "images per training batch", "source": "piggyback src/main.py:58"},
    )
    optimizer: SGDConfig = field(
        default_factory=lambda: SGDConfig(momentum=0.9, weight_decay=0.0),
        metadata={
            "help": "SGD with momentum over every parameter",
            "source": "piggyback src/main.py:413-414",
        },
    )
    lr: float = field(
        default=1e-3,
        metadata={
            "help": "the network's learning rate",
            "source": "piggyback src/scripts/run_baselines.sh:20 (LR)",
        },
    )
    classifier_lr: float | None = field(
        default=None, metadata={"help": "the classifier's learning rate (null: lr)"}
    )
    lr_decay_every: int | None = field(
        default=15,
        metadata={
            "help": "epochs between learning-rate steps (null: step at lr_milestones)",
            "source": "piggyback src/scripts/run_baselines.sh:34",
        },
    )
    lr_decay_factor: float = field(
        default=0.1,
        metadata={
            "help": "the learning rate's factor at each step",
            "source": "piggyback src/scripts/run_baselines.sh:49",
        },
    )
    train_bn: bool = field(
        default=True,
        metadata={
            "help": "train the norms' parameters and statistics per task",
            "source": "piggyback src/scripts/run_baselines.sh:35 (--train_bn)",
        },
    )


@dataclass
class DecathlonFinetuneConfig(FinetuneConfig):
    """Finetuning on a Visual Decathlon domain as Rebuffi et al. (2017) trained the baseline
    of the score's E_max (``method=decathlon/finetune``)."""

    epochs: int = field(
        default=120,
        metadata={
            "help": "training epochs",
            "source": "residual_adapters train_new_task_finetuning.py:32",
        },
    )
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
            "help": "SGD with momentum, weight decay 1e-4 on every parameter",
            "source": "residual_adapters train_new_task_finetuning.py:139 (momentum); "
            "sgd.py:31,41-48 (the step reassigns the decay in its loop and never resets it, so "
            "after the first 3x3 conv every parameter is decayed at 1e-4; --wd 5. has no effect)",
        },
    )
    lr: float = field(
        default=0.1,
        metadata={
            "help": "the network's learning rate",
            "source": "residual_adapters train_new_task_finetuning.py:28",
        },
    )
    lr_decay_every: int | None = field(
        default=None,
        metadata={"help": "epochs between learning-rate steps (null: step at lr_milestones)"},
    )
    lr_milestones: list[int] | None = field(
        default_factory=lambda: [80, 100],
        metadata={
            "help": "the epochs at which the learning rate steps (null: every lr_decay_every)",
            "source": "residual_adapters train_new_task_finetuning.py:33-34, "
            "utils_pytorch.py:37-40",
        },
    )
    lr_decay_factor: float = field(
        default=0.1,
        metadata={
            "help": "the learning rate's factor at each step",
            "source": "residual_adapters utils_pytorch.py:37-40 (x0.1 at step1, x0.01 at step2)",
        },
    )
    search: dict[str, Any] = field(default_factory=lr_grid(1e-3, 1e-2, 1e-1), metadata=SEARCH)
