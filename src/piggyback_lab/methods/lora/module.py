"""LoRA: a low-rank update on the frozen backbone's weights, plus a new classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.lora.layer import add_lora, lora_layers
from piggyback_lab.methods.lora.task import LoRATask
from piggyback_lab.utils.errors import UserError, check_integer, check_positive


class LoRA(TaskModule):
    task_method = LoRATask

    def __init__(
        self,
        model: nn.Module,
        classifier: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        target_modules: str | Sequence[str] | None,
        **kwargs,
    ) -> None:
        """peft's settings under peft's names (``method.r=16 method.lora_alpha=32``)."""
        check_integer("method.r", r)
        check_positive("method.lora_alpha", lora_alpha)
        if lora_dropout:
            raise UserError(
                f"method.lora_dropout={lora_dropout}: peft drops the adapter's input, which an "
                "update folded into the weight cannot express; this LoRA folds exactly and "
                "takes lora_dropout=0 (peft's default)"
            )
        targets = target_modules  # a config's list arrives as a ListConfig
        if targets is not None and not isinstance(targets, str):
            targets = [str(t) for t in targets]
        super().__init__(model, classifier, **kwargs)  # fingerprint the plain backbone first
        if not add_lora(model, classifier, r, lora_alpha, targets):
            raise UserError(
                f"method.target_modules={target_modules!r} matches no Conv, Linear or attention "
                "weight of this backbone; name modules (e.g. [qkv, fc1]) or a regex, or null "
                "for all of them"
            )
        self.train_only(self.adapter_parameters())

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every update's A and B: what LoRA trains in the trunk."""
        return [p for d in lora_layers(self.model).values() for p in (d.lora_A, d.lora_B)]

    def param_groups(self) -> list[dict]:
        return [{"params": self.adapter_parameters()}, *self.head_and_norm_groups()]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        tensors = self.head_tensors()
        for key, delta in lora_layers(self.model).items():
            tensors[f"lora_A.{key}"] = delta.lora_A.detach()
            tensors[f"lora_B.{key}"] = delta.lora_B.detach()
        return {**tensors, **self.trained_norm_tensors()}

    def task_meta(self) -> dict:
        layers = lora_layers(self.model)
        return {
            "r": self.hparams.r,
            "lora_alpha": self.hparams.lora_alpha,
            "train_bn": bool(self.hparams.train_bn),
            **self.trunk_meta(),
            "layers": {key: list(delta.shape) for key, delta in layers.items()},
        }
