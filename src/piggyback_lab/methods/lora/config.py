"""LoRA's settings under peft's names and defaults (huggingface/peft ``LoraConfig``). No
recipe is published for these backbones: Piggyback's schedule (Adam, 30 epochs, x0.1 at 15,
batch 32, no weight decay) with lr 1e-3 for A, B and the classifier, our choice to sweep from
(docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from piggyback_lab.methods.config import AdamConfig

PEFT = "peft LoraConfig's default"


@dataclass
class LoRAConfig:
    """W + (lora_alpha / r) * B A on the frozen backbone's weights, and a new classifier (Hu
    et al., ICLR 2022)."""

    _target_: str = field(
        default="piggyback_lab.methods.lora.LoRA",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="lora", metadata={"help": "the method's name in records, task files, tables"}
    )
    epochs: int = field(default=30, metadata={"help": "training epochs (Piggyback's schedule)"})
    batch_size: int = field(
        default=32, metadata={"help": "images per training batch (Piggyback's)"}
    )
    optimizer: AdamConfig = field(
        default_factory=lambda: AdamConfig(weight_decay=0.0),
        metadata={"help": "Adam for A, B and classifier, no weight decay"},
    )
    lr: float = field(default=1e-3, metadata={"help": "A's and B's learning rate"})
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
        default=False, metadata={"help": "train the norms' parameters and statistics per task"}
    )
    r: int = field(default=8, metadata={"help": "the update's rank", "source": PEFT})
    lora_alpha: int = field(
        default=8, metadata={"help": "the update's scale is lora_alpha / r", "source": PEFT}
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "must stay 0: an update folded into the weight has no input dropout",
            "source": PEFT,
        },
    )
    target_modules: Any = field(
        default=None,
        metadata={
            "help": "the adapted modules: null, every Conv, Linear and attention weight "
            "outside the classifier (the weights Piggyback masks); a list of module names "
            "(suffixes); a regex"
        },
    )
