"""GPS's settings. The optimizer recipe is the official Stanford Cars script's
(FightingFighting/GPS train_scripts/vit/fgvc/stanford_cars/train_gps.sh): Adam, lr 5e-4 for
the selected weights and the classifier alike, no weight decay, batch 32, 100 epochs with a
10-epoch warm-up into a cosine (timm's scheduler; its warm-up from 1e-7 and floor of 1e-8
are approximated by 0). The selection loss is our choice: cross-entropy through the new
classifier, as the data here give one view per image (the official uses a supervised
contrastive loss on two augmented views, ``--contrastive``, train_gps.py:485-486,
588-601); ``supcon`` is that loss on the one view."""

from __future__ import annotations

from dataclasses import dataclass, field

from piggyback_lab.methods.config import AdamScheduleConfig

CARS = "FightingFighting/GPS train_scripts/vit/fgvc/stanford_cars/train_gps.sh"


@dataclass
class GPSConfig(AdamScheduleConfig):
    """The top-k input connections per output neuron of every Conv, Linear and attention
    weight, chosen by accumulated gradient magnitude before training, and a new classifier
    (Zhang et al., CVPR 2024)."""

    _target_: str = field(
        default="piggyback_lab.methods.gps.GPS",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="gps", metadata={"help": "the method's name in records, task files, tables"}
    )
    epochs: int = field(default=100, metadata={"help": "training epochs", "source": CARS})
    batch_size: int = field(
        default=32, metadata={"help": "images per training batch", "source": CARS}
    )
    lr: float = field(
        default=5e-4, metadata={"help": "the selected weights' learning rate", "source": CARS}
    )
    classifier_lr: float | None = field(
        default=None,
        metadata={"help": "the classifier's learning rate (null: lr, as official)", "source": CARS},
    )
    lr_schedule: str = field(
        default="cosine",
        metadata={"help": "cosine after a linear warm-up (timm's scheduler)", "source": CARS},
    )
    warmup_epochs: int = field(
        default=10, metadata={"help": "epochs of linear warm-up", "source": CARS}
    )
    k: int = field(
        default=15,
        metadata={
            "help": "input connections trained per output neuron (row) of each weight "
            "(official --times_para: 15 on Stanford Cars, 1 on most VTAB-1k tasks)",
            "source": CARS,
        },
    )
    select_batches: int | None = field(
        default=None,
        metadata={
            "help": "training batches whose gradients select the weights (null: one whole "
            "epoch, as the official calculate_gradient, train_gps.py:572-627)"
        },
    )
    selection_loss: str = field(
        default="cross_entropy",
        metadata={
            "help": "the loss whose gradient selects: cross_entropy (through the new "
            "classifier) or supcon (supervised contrastive on the classifier's input, one "
            "view, temperature 0.07 as utils/loss_utils.py:9)"
        },
    )
