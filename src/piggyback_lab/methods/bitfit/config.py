"""BitFit's settings. The paper's recipes are for BERT; none is published for these
backbones, so this is Piggyback's schedule (Adam, 30 epochs, x0.1 at 15, batch 32, no weight
decay) with lr 1e-3 for the biases and the classifier: our choice, the default to sweep from
(docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from piggyback_lab.methods.config import AdamConfig


@dataclass
class BitFitConfig:
    """Every bias of the frozen backbone, norm biases included, and a new classifier (Ben
    Zaken, Ravfogel, Goldberg, ACL 2022)."""

    _target_: str = field(
        default="piggyback_lab.methods.bitfit.BitFit",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="bitfit", metadata={"help": "the method's name in records, task files, tables"}
    )
    epochs: int = field(default=30, metadata={"help": "training epochs (Piggyback's schedule)"})
    batch_size: int = field(
        default=32, metadata={"help": "images per training batch (Piggyback's)"}
    )
    optimizer: AdamConfig = field(
        default_factory=lambda: AdamConfig(weight_decay=0.0),
        metadata={"help": "Adam for biases and classifier, no weight decay"},
    )
    lr: float = field(default=1e-3, metadata={"help": "the biases' learning rate"})
    classifier_lr: float | None = field(
        default=1e-3, metadata={"help": "the classifier's learning rate (null: lr)"}
    )
    lr_decay_every: int = field(
        default=15, metadata={"help": "epochs between learning-rate steps (Piggyback's)"}
    )
    lr_decay_factor: float = field(
        default=0.1, metadata={"help": "the learning rate's factor at each step"}
    )
    train_bn: bool = field(
        default=False,
        metadata={"help": "false: norms in eval mode, their statistics the backbone's"},
    )
