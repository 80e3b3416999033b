"""PackNet (Mallya & Lazebnik, CVPR 2018): train a task on the weights earlier tasks freed.

One module trains one task of a sequence on the shared network: only weights owned by
this task (``owner``) get gradients; weights of the base and of earlier tasks stay
bit-for-bit unchanged. Biases and norm layers are frozen unless ``train_bias_bn`` (then the
sequence stores them per task). The sequence (``sequence.py`` here) claims the free
weights before training, prunes between the two phases and stores each task's classifier
(and biases/BN) in the shared state; this module exports no task file of its own.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.packnet.state import (
    BASE,
    FREE,
    PackNetState,
    apply_view,
    bias_bn_state,
    task_owner,
)
from piggyback_lab.methods.packnet.task import PackNetTask
from piggyback_lab.models.surgery import prunable_biases, prunable_weights


class PackNet(TaskModule):
    task_method = PackNetTask

    def __init__(
        self,
        model: nn.Module,
        classifier: str,
        owners: dict[str, torch.Tensor],
        owner: int,
        train_bias_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(model, classifier, train_bn=train_bias_bn, **kwargs)
        self.save_hyperparameters(ignore=["model", "owners", "optimizer"])  # not hparams
        self.owners = owners
        self.owner = owner
        self._masks: dict[str, torch.Tensor] = {}
        self._frozen: dict[str, torch.Tensor] = {}
        biases = prunable_biases(model, classifier).values() if train_bias_bn else ()
        self.train_only([*self.weights().values(), *biases])  # the norms: train_bias_bn

    def weights(self) -> dict[str, nn.Parameter]:
        """The shared network's prunable weights, by key (the keys of ``owners``)."""
        return prunable_weights(self.model, self.classifier)

    def bias_bn_parameters(self) -> list[nn.Parameter]:
        biases = list(prunable_biases(self.model, self.classifier).values())
        return biases + self.norm_parameters()

    def trainable_masks(self) -> dict[str, torch.Tensor]:
        """Per prunable layer: which weights this task may change."""
        return {name: own.eq(self.owner) for name, own in self.owners.items()}

    def param_groups(self) -> list[dict]:
        groups = [{"params": list(self.weights().values())}, self.head_group()]
        if self.hparams.train_bias_bn:
            groups.append({"params": self.bias_bn_parameters()})
        return groups

    def set_schedule(self, lr: float, decay_every: int, decay_factor: float) -> None:
        """Switch the optimizer recipe between phases (train, then retrain after pruning)."""
        self.hparams.update(lr=lr, lr_decay_every=decay_every, lr_decay_factor=decay_factor)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._masks = self.trainable_masks()
        self._frozen = {name: w.detach().clone() for name, w in self.weights().items()}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients only for this task's weights, so momentum/Adam state never touches others.
        for name, weight in self.weights().items():
            if weight.grad is not None:
                weight.grad.masked_fill_(~self._masks[name], 0.0)

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Weight decay moves weights even with zero gradients: put frozen ones back exactly.
        for name, weight in self.weights().items():
            weight.copy_(torch.where(self._masks[name], weight, self._frozen[name]))

    def on_fit_end(self) -> None:
        self._masks, self._frozen = {}, {}

    def trainable_parameter_count(self) -> int:
        count = sum(int(m.sum()) for m in self.trainable_masks().values())
        count += sum(p.numel() for p in self.head.parameters())
        if self.hparams.train_bias_bn:
            count += sum(p.numel() for p in self.bias_bn_parameters())
        return count

    def task_tensors(self) -> dict[str, torch.Tensor]:
        """This task alone as a one-task PackNet state: its view of the shared network, the
        weights of the base and of every task up to it owned as base and task."""
        return self.standalone_state("task").tensors()

    def standalone_state(self, task: str) -> PackNetState:
        """The network as this task sees it, as a one-task PackNet state named ``task``."""
        model = copy.deepcopy(self.model)
        apply_view(model, self.owners, self.classifier, self.owner)
        owners = {}
        for name, own in self.owners.items():
            mine = own.gt(BASE) & own.le(self.owner)  # earlier tasks' weights are its own too
            owners[name] = torch.where(mine, task_owner(0), torch.where(own.eq(BASE), BASE, FREE))
            owners[name] = owners[name].to(torch.uint8)
        state = PackNetState(self.backbone, self.classifier, model, owners, [task])
        extras = bias_bn_state(model, self.classifier) if self.hparams.train_bias_bn else None
        state.add_task(task, self.head, [], extras)
        return state

    def export_task(self, path: str | Path, meta: dict) -> int:
        """Write this task alone as a one-task PackNet state; returns its size in bytes."""
        task = str(meta.get("dataset", "task"))
        state = self.standalone_state(task)
        state.class_names[task] = list(meta.get("class_names", []))
        state.meta = {
            k: v for k, v in meta.items() if k not in ("class_names", "kind", "transforms")
        }
        if "transforms" in meta:  # kept per task, as a sequence's state keeps them
            state.meta["task_transforms"] = {task: meta["transforms"]}
        return state.save(path)
