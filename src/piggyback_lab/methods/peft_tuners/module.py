"""Any huggingface/peft tuner on the frozen backbone, plus a new classifier: a baseline from
peft's own code."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.peft_tuners.config import default_peft
from piggyback_lab.methods.peft_tuners.layer import (
    adapter_parameters,
    adapter_state,
    default_targets,
    in_subtree,
    inject,
    peft_kwargs,
    tuner_layers,
)
from piggyback_lab.methods.peft_tuners.task import PREFIX, PeftTask
from piggyback_lab.taskfile import prefixed
from piggyback_lab.utils.errors import UserError


class PeftTuner(TaskModule):
    """peft injects its tuner layers in place (``inject_adapter_in_model``); only their
    tensors and the classifier train (the norms too with ``train_bn``). The classifier is
    the project's head group, never peft's ``modules_to_save``: every method's task stores
    and hosts its head the same way."""

    task_method = PeftTask

    def __init__(
        self,
        model: nn.Module,
        classifier: str,
        peft: dict | DictConfig | None = None,
        **kwargs,
    ) -> None:
        """``peft`` None: the config's default (``wrap`` passes no nested settings)."""
        settings = peft_kwargs(default_peft() if peft is None else peft)
        super().__init__(model, classifier, **kwargs)  # fingerprint the plain backbone first
        self._trunk = self.trunk_meta()  # before peft's layers add weights of their own
        if settings["target_modules"] is None:
            settings["target_modules"] = default_targets(model, classifier, settings)
        if not settings["target_modules"]:
            raise UserError(
                f"peft's {settings['peft_type']} takes no Linear or Conv2d of {self.backbone} "
                "outside its classifier; set method.peft.target_modules"
            )
        inject(model, settings)
        self.settings = settings
        if any(in_subtree(name, [classifier]) for name in tuner_layers(model)):
            raise UserError(
                f"method.peft.target_modules={settings['target_modules']!r} adapts the "
                f"classifier {classifier}, which trains whole beside the adapter; leave it out"
            )
        self.train_only(adapter_parameters(model))

    def param_groups(self) -> list[dict]:
        return [{"params": adapter_parameters(self.model)}, *self.head_and_norm_groups()]

    def task_tensors(self) -> dict[str, torch.Tensor]:
        adapter = prefixed(adapter_state(self.model), PREFIX)
        return {**self.head_tensors(), **adapter, **self.trained_norm_tensors()}

    def task_meta(self) -> dict:
        return {
            "peft": self.settings,
            "train_bn": bool(self.hparams.train_bn),
            **self._trunk,
            "layers": list(tuner_layers(self.model)),
        }
