"""peft's settings: any tuner of huggingface/peft, as its config's keyword arguments. No
recipe is published for these backbones: Piggyback's schedule (Adam, 30 epochs, x0.1 at 15,
batch 32, no weight decay) with lr 1e-3 for the adapter and the classifier, our choice to
sweep from (docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from piggyback_lab.methods.config import AdamScheduleConfig


def default_peft() -> dict[str, Any]:
    """LoRA at peft's defaults (r 8, lora_alpha 8); null: the tuner's own default."""
    return {"peft_type": "LORA", "r": None, "lora_alpha": None, "target_modules": None}


@dataclass
class PeftConfig(AdamScheduleConfig):
    """Any huggingface/peft tuner (LoRA, LoHa, LoKr, IA3, OFT, BOFT, HRA, ...) injected into
    the frozen backbone, and a new classifier: a baseline from peft's own code."""

    _target_: str = field(
        default="piggyback_lab.methods.peft_tuners.PeftTuner",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="peft", metadata={"help": "the method's name in records, task files, tables"}
    )
    peft: dict[str, Any] = field(
        default_factory=default_peft,
        metadata={
            "help": "peft's config kwargs (peft.get_peft_config): peft_type and the tuner's "
            "own keys; a null value takes peft's default for that tuner, a key the tuner "
            "lacks is refused (add one: +method.peft.<key>=<value>); target_modules null: "
            "every Linear outside the classifier (not an attention's out_proj) and every "
            "Conv2d the tuner takes; IA3's feedforward_modules defaults to none",
            "source": "huggingface/peft, its config classes' defaults",
        },
    )
