"""BitFit's settings. The paper's recipes are for BERT; none is published for these
backbones, so this is Piggyback's schedule (Adam, 30 epochs, x0.1 at 15, batch 32, no weight
decay) with lr 1e-3 for the biases and the classifier: our choice, the default to sweep from
(docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from piggyback_lab.methods.config import AdamScheduleConfig


@dataclass
class BitFitConfig(AdamScheduleConfig):
    """Every bias of the frozen backbone, norm biases included, and a new classifier (Ben
    Zaken, Ravfogel, Goldberg, ACL 2022)."""

    _target_: str = field(
        default="piggyback_lab.methods.bitfit.BitFit",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="bitfit", metadata={"help": "the method's name in records, task files, tables"}
    )
    train_bn: bool = field(
        default=False,
        metadata={"help": "false: norms in eval mode, their statistics the backbone's"},
    )
