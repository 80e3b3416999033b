"""VPT: prompt tokens in a frozen Vision Transformer's token sequence, plus a classifier."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.vpt.layer import (
    VisualPrompts,
    attach_prompts,
    initial_prompts,
    token_sequence,
)
from piggyback_lab.methods.vpt.task import PROMPTS, VPTTask
from piggyback_lab.models.surgery import norm_layers
from piggyback_lab.utils.errors import UserError, check_integer


class VPT(TaskModule):
    """The prompts (and the classifier) train; the backbone is frozen and, as in the
    official code, in eval mode while they train (vit.py:89-100: its dropout stays off)."""

    task_method = VPTTask

    def __init__(
        self,
        model: nn.Module,
        classifier: str,
        num_tokens: int,
        deep: bool,
        prompt_dropout: float,
        **kwargs,
    ) -> None:
        """The official settings under VPT's names (``method.num_tokens=50 method.deep=true``)."""
        check_integer("method.num_tokens", num_tokens)
        if not isinstance(deep, bool):
            raise UserError(f"method.deep={deep!r}: must be true (VPT-deep) or false (shallow)")
        if isinstance(prompt_dropout, bool) or not 0 <= prompt_dropout < 1:
            raise UserError(f"method.prompt_dropout={prompt_dropout!r}: must be in [0, 1)")
        sequence = token_sequence(model, kwargs.get("backbone") or type(model).__name__)
        super().__init__(model, classifier, **kwargs)  # fingerprint the plain backbone first
        depth = len(sequence.blocks) if deep else 1
        like = next(model.parameters())
        prompts = initial_prompts(depth, num_tokens, sequence).to(like.device, like.dtype)
        self.prompts = VisualPrompts(prompts, prompt_dropout)
        self.hooks = attach_prompts(sequence, self.prompts)
        self.train_only(self.prompts.parameters())

    def train(self, mode: bool = True) -> VPT:
        super().train(mode)
        if mode:  # the frozen backbone computes as at inference; the prompts' dropout trains
            self.model.eval()
            if self.hparams.train_bn:
                for norm in norm_layers(self.model).values():
                    norm.train()
        return self

    def param_groups(self) -> list[dict]:
        return [{"params": [self.prompts.prompts]}, *self.head_and_norm_groups()]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        prompts = {PROMPTS: self.prompts.prompts.detach()}
        return {**self.head_tensors(), **prompts, **self.trained_norm_tensors()}

    def task_meta(self) -> dict:
        return {
            "num_tokens": self.prompts.count,
            "deep": bool(self.hparams.deep),
            "train_bn": bool(self.hparams.train_bn),
            **self.trunk_meta(),
        }

    @torch.no_grad()
    def as_pretrained(self) -> None:
        """No prompt tokens: the backbone's own sequence, and a task that stores none."""
        empty = self.prompts.prompts[:, :0].clone()
        self.prompts.prompts = nn.Parameter(empty, requires_grad=False)
