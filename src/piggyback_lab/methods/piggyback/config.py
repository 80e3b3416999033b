"""Piggyback's settings: the published recipe (Mallya, Davis, Lazebnik, ECCV 2018; official
code arunmallya/piggyback, read at its default branch; docs/reproduction.md)."""

from __future__ import annotations

from dataclasses import dataclass

from piggyback_lab.methods.config import AdamConfig, hyperparameter


@dataclass
class PiggybackAdamConfig(AdamConfig):
    """Adam for masks and classifier (one Adam over both groups makes the same per-parameter
    update as the official code's two), with torch's fused kernel as an option."""

    fused: bool | None = hyperparameter(
        None,
        "true: the same update in one kernel per tensor, faster (results differ from the "
        "per-tensor loop by rounding only); null: torch's choice",
    )


@dataclass
class PiggybackConfig:
    """Binary masks over the frozen backbone's weights plus a new classifier."""

    _target_: str = hyperparameter(
        "piggyback_lab.methods.piggyback.Piggyback", "the LightningModule that trains a task"
    )
    name: str = hyperparameter("piggyback", "the method's name in records, task files, tables")
    epochs: int = hyperparameter(
        30, "training epochs", "piggyback src/scripts/run_piggyback_training.sh:26 (NUM_EPOCHS)"
    )
    batch_size: int = hyperparameter(32, "images per training batch", "piggyback src/main.py:58")
    optimizer: PiggybackAdamConfig = hyperparameter(
        PiggybackAdamConfig(weight_decay=0.0),
        "Adam for masks and classifier, no weight decay",
        "piggyback src/main.py:427-430 (two Adams, built without weight_decay: torch's 0)",
    )
    lr: float = hyperparameter(
        1e-4,
        "the masks' learning rate",
        "piggyback src/scripts/run_piggyback_training.sh:22 (LR_MASK)",
    )
    classifier_lr: float | None = hyperparameter(
        1e-4,
        "the classifier's learning rate (null: lr)",
        "piggyback src/scripts/run_piggyback_training.sh:23 (LR_CLASS)",
    )
    lr_decay_every: int = hyperparameter(
        15,
        "epochs between learning-rate steps",
        "piggyback src/scripts/run_piggyback_training.sh:24 (MASK_DECAY)",
    )
    lr_decay_factor: float = hyperparameter(
        0.1,
        "the learning rate's factor at each step",
        "piggyback src/scripts/run_piggyback_training.sh:47",
    )
    train_bn: bool = hyperparameter(
        False,
        "true: learn per-task BatchNorm parameters and statistics; false: norms frozen",
        "piggyback src/main.py:62",
    )
    mask_init: str = hyperparameter(
        "1s",
        "the real-valued masks' start: 1s | uniform | weight_based_1s",
        "piggyback src/main.py:65",
    )
    mask_scale: float = hyperparameter(
        1e-2,
        "the masks' initial value (1s) or range (uniform)",
        "piggyback src/scripts/run_piggyback_training.sh:20 (MASK_SCALE)",
    )
    threshold_fn: str = hyperparameter(
        "binarizer",
        "how a real mask becomes the applied one: binarizer (0/1) | ternarizer (-1/0/1)",
        "piggyback src/scripts/run_piggyback_training.sh:4 (usage: binarizer)",
    )
    threshold: float = hyperparameter(
        5e-3,
        "a real mask above it applies its weight",
        "piggyback src/modnets/layers.py:9 (DEFAULT_THRESHOLD)",
    )
    scale_gradients: str = hyperparameter(
        "none",
        "divide mask gradients by |W|: none | average | individual",
        "piggyback src/scripts/run_piggyback_training.sh:21 (MASK_SCALE_GRADS=none)",
    )
