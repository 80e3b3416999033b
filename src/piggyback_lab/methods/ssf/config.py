"""SSF's settings. Its published recipes are for ViT-B/16 on FGVC and VTAB-1k (AdamW, its
own schedules); none is for these backbones, so this is Piggyback's schedule (Adam, 30
epochs, x0.1 at 15, batch 32, no weight decay) with lr 1e-3: our choice, to sweep from
(docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from piggyback_lab.methods.config import AdamScheduleConfig


@dataclass
class SSFConfig(AdamScheduleConfig):
    """A per-channel scale and shift after the frozen backbone's layers and norms, and a new
    classifier (Lian et al., NeurIPS 2022; dongzelian/SSF)."""

    _target_: str = field(
        default="piggyback_lab.methods.ssf.SSF",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="ssf", metadata={"help": "the method's name in records, task files, tables"}
    )
    train_bn: bool = field(
        default=False,
        metadata={"help": "must stay false: norms in eval mode, SSF's scale and shift follow them"},
    )
