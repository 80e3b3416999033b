"""GPS: before the first step, the gradient of the task's loss over its training data
picks k input connections per output neuron of every weight; only those and a new
classifier train."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.gps.layer import add_gps, gps_layers, top_k_columns
from piggyback_lab.methods.gps.task import GPSTask, index_dtype
from piggyback_lab.methods.registry import NO_MASKS
from piggyback_lab.models.surgery import prunable_weights
from piggyback_lab.utils.errors import UserError, check_choice, check_integer

SELECTION_LOSSES = ("cross_entropy", "supcon")
SUPCON_TEMPERATURE = 0.07  # the official SupConLoss's, utils/loss_utils.py:9


def supcon_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = SUPCON_TEMPERATURE
) -> torch.Tensor:
    """Khosla et al.'s supervised contrastive loss on one view of the batch (the official
    SupConLoss, utils/loss_utils.py:17-97, with one view): anchors with no other sample of
    their class have no positive and are left out (the official divides by zero there)."""
    z = F.normalize(features.flatten(1), dim=1)
    logits = z @ z.T / temperature
    own = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(own, -math.inf), 1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~own
    anchors = positive.any(1)
    if not anchors.any():
        return logits.sum() * 0.0  # no pair of one class in the batch: no signal
    mean_positive = (log_prob * positive).sum(1)[anchors] / positive.sum(1)[anchors]
    return -mean_positive.mean()


class GPS(TaskModule):
    """Norms stay frozen (the official mask keeps them, utils/pruning.py:10-11); the
    official also trains every bias (pruning.py:12-13), which this GPS does not."""

    task_method = GPSTask

    def __init__(
        self,
        model: nn.Module,
        classifier: str,
        k: int,
        select_batches: int | None,
        selection_loss: str,
        **kwargs,
    ) -> None:
        check_integer("method.k", k)
        if select_batches is not None:
            check_integer("method.select_batches", select_batches)
        check_choice("method.selection_loss", selection_loss, SELECTION_LOSSES)
        super().__init__(model, classifier, **kwargs)  # fingerprint the plain backbone first
        if not add_gps(model, classifier, k):
            raise UserError(
                f"gps selects among Conv, Linear and attention weights; {self.backbone} has "
                f"none outside its classifier {classifier!r}"
            )
        self.train_only(self.delta_parameters())

    def delta_parameters(self) -> list[nn.Parameter]:
        """Every layer's delta (rows x k): what GPS trains in the trunk."""
        return [d.delta for d in gps_layers(self.model).values()]

    def param_groups(self) -> list[dict]:
        return [{"params": self.delta_parameters()}, *self.head_and_norm_groups()]

    @property
    def selected(self) -> bool:
        return all(bool(d.chosen) for d in gps_layers(self.model).values())

    # --- selection ----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Select from the training data before the first step, unless a resumed
        checkpoint already holds the selection."""
        super().on_fit_start()
        if not self.selected:
            datamodule = self.trainer.datamodule
            source = self.trainer.fit_loop._data_source
            self.select(datamodule.train_dataloader() if datamodule else source.dataloader())

    def select(self, loader: Iterable, batches: int | None = None) -> int:
        """Choose each row's k columns from the gradient accumulated over ``loader`` (at
        most ``batches``, default ``select_batches``; all of it when null); returns how
        many weights will train. Call it before training, outside a Lightning fit."""
        grads = self.accumulated_gradients(loader, batches or self.hparams.select_batches)
        for key, delta in gps_layers(self.model).items():
            columns = top_k_columns(grads[key], delta.k)
            if self._trainer is not None:  # every rank trains the same positions
                columns = self.trainer.strategy.broadcast(columns, src=0)
            delta.choose(columns)
        return self.selected_count()

    def selection_objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.selection_loss == "cross_entropy":
            return F.cross_entropy(self(x), y)
        features: list[torch.Tensor] = []
        hook = self.head.register_forward_hook(lambda m, inputs, out: features.append(inputs[0]))
        try:
            self(x)
        finally:
            hook.remove()
        return supcon_loss(features[0], y)

    def accumulated_gradients(
        self, loader: Iterable, batches: int | None
    ) -> dict[str, torch.Tensor]:
        """The summed gradient of every selectable weight over the batches, in training
        mode (the official calculate_gradient, train_gps.py:572-627); afterwards nothing
        holds a gradient and the backbone's weights are frozen again."""
        weights = prunable_weights(self.model, self.classifier)
        mode = self.training
        self.train()
        for w in weights.values():
            w.requires_grad_(True)
        try:
            read = self._backward_batches(loader, batches)
            grads = {
                k: w.grad if w.grad is not None else torch.zeros_like(w) for k, w in weights.items()
            }
        finally:
            for w in weights.values():
                w.requires_grad_(False)
            for p in self.parameters():
                p.grad = None
            self.train(mode)
        if not read:
            raise UserError("gps selects from the training data, and the loader gave no batch")
        return grads

    def _backward_batches(self, loader: Iterable, batches: int | None) -> int:
        read = 0
        for x, y in loader:
            if batches is not None and read >= batches:
                break
            x, y = self.on_after_batch_transfer((x.to(self.device), y.to(self.device)), 0)
            self.selection_objective(x, y).backward()
            read += 1
        return read

    # --- the task -------------------------------------------------------------------------
    def selected_count(self) -> int:
        return sum(d.delta.numel() for d in gps_layers(self.model).values())

    def state_facts(self) -> dict[str, Any]:
        return {**NO_MASKS, "selected_weights": self.selected_count()}

    def task_tensors(self) -> dict[str, torch.Tensor]:
        if not self.selected:
            raise UserError("a GPS task is stored after selection: call select(loader) first")
        tensors = self.head_tensors()
        for key, delta in gps_layers(self.model).items():
            tensors[f"columns.{key}"] = delta.columns.to(index_dtype(math.prod(delta.shape[1:])))
            tensors[f"delta.{key}"] = delta.delta.detach()
        return {**tensors, **self.trained_norm_tensors()}

    def task_meta(self) -> dict:
        return {
            "k": self.hparams.k,
            "selection_loss": self.hparams.selection_loss,
            "train_bn": bool(self.hparams.train_bn),
            **self.trunk_meta(),
            "layers": {key: list(d.shape) for key, d in gps_layers(self.model).items()},
        }
