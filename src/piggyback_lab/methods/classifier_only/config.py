"""Classifier-only settings: PackNet's baseline script (official code arunmallya/packnet,
docs/reproduction.md; the Piggyback repository's own, commented out, runs 30 epochs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from piggyback_lab.methods.config import SEARCH, ScheduleShape, SGDConfig, lr_grid

SCRIPT = "packnet src/scripts/run_all_baseline_finetuning.sh:14 (classifier 1e-3 20 20)"


@dataclass
class ClassifierOnlyConfig(ScheduleShape):
    """Frozen features and a new linear classifier, at a constant learning rate."""

    _target_: str = field(
        default="piggyback_lab.methods.classifier_only.ClassifierOnly",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="classifier_only",
        metadata={"help": "the method's name in records, task files, tables"},
    )
    epochs: int = field(default=20, metadata={"help": "training epochs", "source": SCRIPT})
    batch_size: int = field(
        default=32,
        metadata={"help": "images per training batch", "source": "packnet src/main.py:45"},
    )
    optimizer: SGDConfig = field(
        default_factory=lambda: SGDConfig(momentum=0.9, weight_decay=0.0),
        metadata={
            "help": "SGD with momentum over the classifier",
            "source": "packnet src/main.py:373-374",
        },
    )
    lr: float = field(
        default=1e-3, metadata={"help": "the classifier's learning rate", "source": SCRIPT}
    )
    lr_decay_every: int = field(
        default=20,
        metadata={
            "help": "epochs between learning-rate steps (20: none within the run)",
            "source": SCRIPT,
        },
    )
    lr_decay_factor: float = field(
        default=1.0, metadata={"help": "the learning rate's factor at each step (1: constant)"}
    )
    train_bn: bool = field(
        default=False,
        metadata={
            "help": "true: the norms' statistics follow the task's data (stored with it); "
            "false: the backbone's, norms in eval mode",
            "source": "packnet src/scripts/run_all_baseline_finetuning.sh:14 passes no "
            "--train_bn, so src/main.py:138-141 keeps the norms in eval mode",
        },
    )
    search: dict[str, Any] = field(default_factory=lr_grid(1e-3, 1e-2, 1e-1), metadata=SEARCH)
