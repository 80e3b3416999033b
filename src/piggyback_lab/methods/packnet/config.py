"""PackNet's settings: the published recipe (Mallya & Lazebnik, CVPR 2018; official code
arunmallya/packnet, read at its default branch; docs/reproduction.md). A config that names
``tasks`` runs the whole sequence in one job (sequence.py); ``dataset`` is then unused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from piggyback_lab.methods.config import SGDConfig

PRUNING = "packnet src/scripts/run_imagenet_pruning.sh"
SEQUENCE = "packnet src/scripts/run_sequence.sh"


@dataclass
class BaseRetrainConfig:
    """Retraining the pruned base on its own data (published: ImageNet, 10 epochs)."""

    dataset: str | None = field(
        default="${oc.select:backbone.base_dataset,null}",
        metadata={
            "help": "the base's data: a dataset config, or fashion_mnist (the mini base's); "
            "null: no retraining; default: the backbone config's base_dataset",
            "source": f"{PRUNING}:4-7,21-24 (each paper backbone's pruned base retrained on "
            "ImageNet)",
        },
    )
    epochs: int = field(
        default=10, metadata={"help": "retraining epochs", "source": f"{PRUNING}:23"}
    )
    lr: float = field(
        default=1e-4, metadata={"help": "the learning rate", "source": f"{PRUNING}:24"}
    )
    lr_decay_every: int = field(
        default=5,
        metadata={"help": "epochs between learning-rate steps", "source": f"{PRUNING}:24"},
    )
    lr_decay_factor: float = field(
        default=0.1,
        metadata={"help": "the learning rate's factor at each step", "source": f"{PRUNING}:24"},
    )
    train_bias_bn: bool = field(
        default=True,
        metadata={
            "help": "retrain the base's biases and BatchNorm with its weights",
            "source": f"{PRUNING}:24 (--train_biases --train_bn)",
        },
    )
    limit_train_batches: Any = field(
        default=1.0,
        metadata={
            "help": "the part of an epoch trained: a fraction (float) or a batch count (int)"
        },
    )


@dataclass
class PackNetConfig:
    """One network learns a sequence of tasks by iterative magnitude pruning; every weight
    has one owner task, so nothing is forgotten."""

    _target_: str = field(
        default="piggyback_lab.methods.packnet.PackNet",
        metadata={"help": "the LightningModule that trains one task on the shared network"},
    )
    name: str = field(
        default="packnet", metadata={"help": "the method's name in records, task files, tables"}
    )
    tasks: list[str] | None = field(
        default_factory=lambda: [
            "mini_digits",
            "mini_fashion_rot",
            "mini_fashion_neg",
            "mini_fashion_flip",
        ],
        metadata={
            "help": "the dataset configs learned in this order (the paper's: "
            "experiment=paper_packnet); null: one task, the run's dataset"
        },
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "images per training batch", "source": "packnet src/main.py:45"},
    )
    optimizer: SGDConfig = field(
        default_factory=lambda: SGDConfig(momentum=0.9, weight_decay=0.0),
        metadata={
            "help": "SGD with momentum, no weight decay",
            "source": "packnet src/main.py:47 (weight decay), :373-374 (SGD, momentum)",
        },
    )
    epochs: int = field(
        default=20,
        metadata={
            "help": "epochs training a task's free weights (they start at zero)",
            "source": f"{SEQUENCE}:60 (--finetune_epochs 20)",
        },
    )
    lr: float = field(
        default=1e-3, metadata={"help": "the task's learning rate", "source": f"{SEQUENCE}:60"}
    )
    classifier_lr: float | None = field(
        default=None, metadata={"help": "the classifier's learning rate (null: lr)"}
    )
    lr_decay_every: int = field(
        default=10,
        metadata={"help": "epochs between learning-rate steps", "source": f"{SEQUENCE}:60"},
    )
    lr_decay_factor: float = field(
        default=0.1, metadata={"help": "the learning rate's factor at each step"}
    )
    task_prune: float = field(
        default=0.75,
        metadata={
            "help": "the part of a task's own weights pruned per layer before retraining "
            "(not for the last task)",
            "source": "packnet src/scripts/run_all_sequence.sh:24 (0.75 per task of its three-task "
            "sequence, carried over to five tasks)",
        },
    )
    retrain_epochs: int = field(
        default=10,
        metadata={
            "help": "epochs retraining after pruning",
            "source": f"{SEQUENCE}:68 (--post_prune_epochs 10)",
        },
    )
    retrain_lr: float = field(
        default=1e-4,
        metadata={"help": "the retraining's learning rate", "source": f"{SEQUENCE}:69"},
    )
    retrain_lr_decay_every: int = field(
        default=10,
        metadata={
            "help": "epochs between the retraining's learning-rate steps (10: no step in 10)",
            "source": f"{SEQUENCE}:69",
        },
    )
    retrain_lr_decay_factor: float = field(
        default=0.1,
        metadata={
            "help": "the retraining's learning-rate factor at each step",
            "source": f"{SEQUENCE}:69",
        },
    )
    train_bias_bn: bool = field(
        default=False,
        metadata={
            "help": "true: biases and BatchNorm trained and stored per task",
            "source": "packnet src/scripts/run_all_sequence.sh:13-14 (nobias-nobn)",
        },
    )
    base_prune: float = field(
        default=0.5,
        metadata={
            "help": "the part of backbone.weights pruned per layer by magnitude to make the base",
            "source": f"{PRUNING}:4-7,11,23 (prune 0.5 for each paper backbone)",
        },
    )
    base_weights: str | None = field(
        default=None,
        metadata={
            "help": "an already pruned base as a weights file (its zero weights are the free ones)"
        },
    )
    base_retrain: BaseRetrainConfig = field(
        default_factory=lambda: BaseRetrainConfig(),
        metadata={"help": "retraining the pruned base on its own data"},
    )
