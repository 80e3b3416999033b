"""Affine binary masks' settings: Piggyback's published recipe (its masks and classifier)
plus the learning rate of the three numbers per layer. No official code is public, and the
paper's recipe values are not in this project's references: the recipe is our choice
(docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from piggyback_lab.methods.piggyback.config import PiggybackConfig


@dataclass
class AffineMasksConfig(PiggybackConfig):
    """W * (k0 + k1 * M) + k2 per masked layer (Mancini et al., ECCV-W 2018), starting at
    (0, 1, 0) = Piggyback's W * M; every other setting is Piggyback's."""

    _target_: str = field(
        default="piggyback_lab.methods.affine_masks.AffineMasks",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="affine_masks",
        metadata={"help": "the method's name in records, task files, tables"},
    )
    affine_lr: float | None = field(
        default=None, metadata={"help": "the k's learning rate (null: lr, the masks')"}
    )
