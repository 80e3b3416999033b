"""LoRA's settings under peft's names and defaults (huggingface/peft ``LoraConfig``). No
recipe is published for these backbones: Piggyback's schedule (Adam, 30 epochs, x0.1 at 15,
batch 32, no weight decay) with lr 1e-3 for A, B and the classifier, our choice to sweep from
(docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from piggyback_lab.methods.config import AdamScheduleConfig

PEFT = "peft LoraConfig's default"


@dataclass
class LoRAConfig(AdamScheduleConfig):
    """W + (lora_alpha / r) * B A on the frozen backbone's weights, and a new classifier (Hu
    et al., ICLR 2022)."""

    _target_: str = field(
        default="piggyback_lab.methods.lora.LoRA",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="lora", metadata={"help": "the method's name in records, task files, tables"}
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
