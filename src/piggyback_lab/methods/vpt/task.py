"""A VPT task as stored: its prompt tokens (``vpt.prompts``, depth x count x width: one row
for VPT-shallow, one per block for VPT-deep), the classifier, the norms when trained, and in
the metadata ``num_tokens`` and ``deep``.

Prompts lengthen the token sequence, which no weight of the backbone can hold, so a VPT
task is hosted, never folded: a MultiTaskModel hooks the prompts into its network on
entering and removes the hooks on leaving, which gives the backbone back bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from piggyback_lab.methods.registry import (
    HostedTask,
    TaskMethod,
    check_trunk_weights,
    stored_bits_per_weight,
)
from piggyback_lab.methods.vpt.layer import PromptAttachment, VisualPrompts, token_sequence
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError

PROMPTS = "vpt.prompts"


class VPTTask(TaskMethod):
    name = "vpt"
    kind = "vpt"

    def check(self, tf: TaskFile) -> None:
        """Prompts of three dimensions whose count is the stated one, one row unless deep."""
        super().check(tf)
        check_trunk_weights(tf)
        prompts, count, deep = (
            tf.tensors.get(PROMPTS),
            tf.meta.get("num_tokens"),
            tf.meta.get("deep"),
        )
        if prompts is None or not isinstance(deep, bool) or not isinstance(count, int):
            raise UserError(f"task file {tf.path} holds no VPT prompts, count or depth; corrupt")
        if prompts.ndim != 3 or prompts.shape[1] != count or (not deep and prompts.shape[0] != 1):
            raise UserError(
                f"task file {tf.path}: its prompts {list(prompts.shape)} are not "
                f"{'one row per block' if deep else 'one row'} of {count} tokens; corrupt"
            )

    def prompts(self, tf: TaskFile) -> torch.Tensor:
        return tf.tensors[PROMPTS]

    def check_fits(self, tf: TaskFile, model: nn.Module, backbone: str) -> None:
        """The prompts have the backbone's width and, when deep, a row per block."""
        sequence = token_sequence(model, backbone)
        depth, _, width = self.prompts(tf).shape
        blocks = len(sequence.blocks)
        if width != sequence.width or (depth != 1 and depth != blocks):
            raise UserError(
                f"task file {tf.path} holds {depth} row(s) of prompts {width} wide; this "
                f"backbone has {blocks} blocks of {sequence.width}: it was made for another "
                "backbone"
            )

    def fold(self, model: nn.Module, tf: TaskFile, classifier: str) -> nn.Module:
        raise UserError(
            f"task file {tf.path} is a vpt task, which cannot be folded into the backbone's "
            "weights (its prompt tokens lengthen the token sequence); host it instead: "
            "MultiTaskModel, src.eval, src.predict"
        )

    def hosted(self, tf: TaskFile, host: Any, name: str | None = None) -> list[HostedTask]:
        (task,) = super().hosted(tf, host, name)
        self.check_fits(tf, host.model, host.backbone)
        prompts = VisualPrompts(self.prompts(tf).clone()).to(host.device)
        attachment = PromptAttachment(prompts, host.backbone)
        task.attach, task.detach = attachment.attach, attachment.detach
        return [task]

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, ("vpt.",))
