"""Piggyback's settings: the published recipe (Mallya, Davis, Lazebnik, ECCV 2018; official
code arunmallya/piggyback, read at its default branch; docs/reproduction.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from piggyback_lab.methods.config import AdamConfig, ScheduleShape


@dataclass
class PiggybackAdamConfig(AdamConfig):
    """Adam for masks and classifier (one Adam over both groups makes the same per-parameter
    update as the official code's two), with torch's fused kernel as an option."""

    fused: bool | None = field(
        default=None,
        metadata={
            "help": "true: the same update in one kernel per tensor, faster (results differ "
            "from the per-tensor loop by rounding only); null: torch's choice"
        },
    )


@dataclass
class PiggybackConfig(ScheduleShape):
    """Binary masks over the frozen backbone's weights plus a new classifier."""

    _target_: str = field(
        default="piggyback_lab.methods.piggyback.Piggyback",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="piggyback", metadata={"help": "the method's name in records, task files, tables"}
    )
    epochs: int = field(
        default=30,
        metadata={
            "help": "training epochs",
            "source": "piggyback src/scripts/run_piggyback_training.sh:26 (NUM_EPOCHS)",
        },
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "images per training batch", "source": "piggyback src/main.py:58"},
    )
    optimizer: PiggybackAdamConfig = field(
        default_factory=lambda: PiggybackAdamConfig(weight_decay=0.0),
        metadata={
            "help": "Adam for masks and classifier, no weight decay",
            "source": "piggyback src/main.py:427-430 (two Adams, built without weight_decay: "
            "torch's 0)",
        },
    )
    lr: float = field(
        default=1e-4,
        metadata={
            "help": "the masks' learning rate",
            "source": "piggyback src/scripts/run_piggyback_training.sh:22 (LR_MASK)",
        },
    )
    classifier_lr: float | None = field(
        default=1e-4,
        metadata={
            "help": "the classifier's learning rate (null: lr)",
            "source": "piggyback src/scripts/run_piggyback_training.sh:23 (LR_CLASS)",
        },
    )
    lr_decay_every: int = field(
        default=15,
        metadata={
            "help": "epochs between learning-rate steps",
            "source": "piggyback src/scripts/run_piggyback_training.sh:24 (MASK_DECAY)",
        },
    )
    lr_decay_factor: float = field(
        default=0.1,
        metadata={
            "help": "the learning rate's factor at each step",
            "source": "piggyback src/scripts/run_piggyback_training.sh:47",
        },
    )
    train_bn: bool = field(
        default=False,
        metadata={
            "help": "true: learn per-task BatchNorm parameters and statistics; false: norms frozen",
            "source": "piggyback src/main.py:62",
        },
    )
    mask_init: str = field(
        default="1s",
        metadata={
            "help": "the real-valued masks' start: 1s | uniform | weight_based_1s",
            "source": "piggyback src/main.py:65",
        },
    )
    mask_scale: float = field(
        default=1e-2,
        metadata={
            "help": "the masks' initial value (1s) or range (uniform)",
            "source": "piggyback src/scripts/run_piggyback_training.sh:20 (MASK_SCALE)",
        },
    )
    threshold_fn: str = field(
        default="binarizer",
        metadata={
            "help": "how a real mask becomes the applied one: binarizer (0/1) | ternarizer "
            "(-1/0/1)",
            "source": "piggyback src/scripts/run_piggyback_training.sh:4 (usage: binarizer)",
        },
    )
    threshold: float = field(
        default=5e-3,
        metadata={
            "help": "a real mask above it applies its weight",
            "source": "piggyback src/modnets/layers.py:9 (DEFAULT_THRESHOLD)",
        },
    )
    scale_gradients: str = field(
        default="none",
        metadata={
            "help": "divide mask gradients by |W|: none | average | individual",
            "source": "piggyback src/scripts/run_piggyback_training.sh:21 (MASK_SCALE_GRADS=none)",
        },
    )
