"""What every method shares: loss, top-1/top-5 metrics, the optimizer recipe, BN handling."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from piggyback_lab.methods.config import SCHEDULES
from piggyback_lab.methods.registry import NO_MASKS, TaskMethod, norm_tensors
from piggyback_lab.models.surgery import (
    freeze_norms,
    norm_layers,
    prunable_weight_count,
    set_norms_eval,
)
from piggyback_lab.taskfile import backbone_fingerprint, prefixed, write_task_file
from piggyback_lab.utils.errors import UserError, check_choice, check_integer, check_positive

# Builds the optimizer from parameter groups and the base learning rate: a partial of a
# torch.optim class, whose other settings (momentum, weight decay, fused) the config holds.
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def check_schedule(lr_decay_every: int | None, lr_milestones: list[int] | None) -> None:
    """The lr steps either every ``lr_decay_every`` epochs or at the ``lr_milestones``."""
    if lr_milestones is None:
        check_integer("method.lr_decay_every", lr_decay_every)
        return
    if lr_decay_every is not None:
        raise UserError(
            "method.lr_decay_every and method.lr_milestones both set; keep one (set the "
            "other to null)"
        )
    steps = [check_integer("method.lr_milestones[]", m) for m in lr_milestones]
    if steps != sorted(set(steps)):
        raise UserError(f"method.lr_milestones must increase (got {list(lr_milestones)})")


def cosine_schedule(
    opt: torch.optim.Optimizer, epochs: int, warmup_epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per epoch t: t / warmup_epochs while warming up, then 0.5 (1 + cos(pi t / epochs)),
    timm's CosineLRScheduler (t_initial = epochs, warmup_prefix off, lr_min 0) as V-PETL
    Bench steps it once per epoch."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return epoch / warmup_epochs
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


TOP_K = (1, 5)  # the accuracies a run reports: top-1 and, where it says something, top-5


def accuracy_metrics(num_classes: int) -> MetricCollection:
    """Top-k accuracies for k < ``num_classes`` (top-5 of 5 classes is 100% whatever the
    network does, so it is left out)."""
    ks = [k for k in TOP_K if k == 1 or k < num_classes]
    return MetricCollection(
        {f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro") for k in ks}
    )


def top_k_score(
    results: Mapping[str, Any], k: int, num_classes: int, split: str = "test"
) -> float | None:
    """``<split>/top<k>`` of a Lightning results dict (``top<k>`` with no split) in percent;
    None when it says nothing (k >= ``num_classes``: always 100%) or was not logged."""
    value = results.get(f"{split}/top{k}" if split else f"top{k}") if results else None
    if value is None or k >= num_classes:
        return None
    return 100.0 * float(value)


class TaskModule(pl.LightningModule):
    """A backbone with a task classifier, trained by a published recipe.

    Subclasses decide what is trainable (``train_only``, ``param_groups``) and what a task
    stores (``task_tensors``), from the parts every method shares (the freezing rule; the
    classifier's group, rate and tensors; the norms'). The backbone fingerprint is taken
    before any training. The recipe (optimizer, learning rates, step schedule) comes from
    the method's typed config (its package's config.py).
    """

    task_method: type[TaskMethod]  # how its tasks are stored (its package's registration)
    channels_last: bool = False  # set from the root key channels_last (auto: on for CUDA)

    def __init__(
        self,
        model: nn.Module,
        classifier: str,
        backbone: str,
        num_classes: int,
        optimizer: OptimizerFactory,
        lr: float,
        lr_decay_every: int | None,
        lr_decay_factor: float,
        train_bn: bool,
        classifier_lr: float | None = None,
        lr_milestones: list[int] | None = None,
        lr_schedule: str = "step",
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        check_positive("method.lr", lr)
        if classifier_lr is not None:
            check_positive("method.classifier_lr", classifier_lr)
        check_choice("method.lr_schedule", lr_schedule, SCHEDULES)
        check_integer("method.warmup_epochs", warmup_epochs, 0)
        if lr_schedule == "step":
            check_schedule(lr_decay_every, lr_milestones)
        self.optimizer_factory = optimizer
        self.model = model
        self.classifier = classifier
        self.backbone = backbone
        self.fingerprint = backbone_fingerprint(model, classifier)
        if not train_bn:
            freeze_norms(model)
        self.val_metrics = accuracy_metrics(num_classes).clone(prefix="val/")
        # test/top5 is logged for every task count, as runs/single.py reads it; what is
        # recorded and printed goes through top_k_score, None where k >= num_classes
        self.test_metrics = accuracy_metrics(num_classes).clone(prefix="test/")

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last:
            x, y = batch
            return x.contiguous(memory_format=torch.channels_last), y
        return batch

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Tag checkpoints with their run, so a resume never picks up another config's state."""
        checkpoint["run_id"] = getattr(self, "run_id", None)

    def train(self, mode: bool = True) -> TaskModule:
        super().train(mode)
        if mode and not self.hparams.train_bn:
            set_norms_eval(self.model)
        return self

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if not torch.isfinite(loss):  # nothing after this step would mean anything
            raise UserError(
                f"the training loss is {loss.detach().item()} at epoch "
                f"{self.current_epoch + 1}, batch {batch_idx + 1}: the run diverged; lower "
                f"method.lr (now {self.hparams.lr})"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def _eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection
    ) -> None:
        x, y = batch
        logits = self(x)
        metrics.update(logits, y)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    # --- what subclasses define -------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Trainable parameters with their learning rates."""
        raise NotImplementedError

    def task_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a task file stores for this method."""
        raise NotImplementedError

    def task_meta(self) -> dict:
        """Method-specific metadata for the task file and the run record."""
        return {}

    def state_facts(self) -> dict[str, Any]:
        """What the run record says of the trained state beyond its size, in the words of
        the method's ``state_facts`` for a stored task (a mask method: masked weights and
        densities); the run layer writes it without reading it."""
        return dict(NO_MASKS)

    def as_pretrained(self) -> None:
        """Make the network compute the pretrained one as it is, for scoring it on the data
        it was trained on; a method whose fresh state changes the network undoes that here."""

    # --- the shared parts subclasses build on ---------------------------------------------
    def train_only(self, own: Iterable[nn.Parameter], *, norms: bool = True) -> None:
        """Freeze the whole network but ``own`` (the method's tensors), the classifier and,
        with ``train_bn``, the norm layers' parameters: every method's freezing rule, stated
        once, so that what trains is what its ``param_groups`` hands the optimizer. Call it
        once ``own`` exists (after attaching adapters or masks). ``norms=False``: the norms'
        parameters stay frozen even with ``train_bn``, which then only lets their running
        statistics follow the task's data (ClassifierOnly; BitFit's norm biases are own)."""
        trained = [*own, *self.head.parameters()]  # read before freezing: own may be lazy
        if norms and self.hparams.train_bn:
            trained += self.norm_parameters()
        self.model.requires_grad_(False)
        for p in trained:
            p.requires_grad_(True)

    def norm_parameters(self) -> list[nn.Parameter]:
        """Every norm layer's parameters: what ``train_bn`` trains."""
        return [p for m in norm_layers(self.model).values() for p in m.parameters()]

    @property
    def head_lr(self) -> float:
        """The classifier's learning rate: ``classifier_lr``, or ``lr`` when that is null. A
        fresh classifier often wants a rate of its own; one rule keeps every method's
        fallback the same."""
        return self.hparams.classifier_lr or self.hparams.lr

    def head_group(self) -> dict:
        """The classifier's parameter group, at ``head_lr``, in the head's parameter order
        (optimizer state is matched by position on resume)."""
        return {"params": list(self.head.parameters()), "lr": self.head_lr}

    def head_and_norm_groups(self) -> list[dict]:
        """The classifier's group and, with ``train_bn``, the norms' group at the same rate:
        what a method training a trunk adapter adds after the adapter's own group."""
        groups = [self.head_group()]
        if self.hparams.train_bn:
            groups.append({"params": self.norm_parameters(), "lr": self.head_lr})
        return groups

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The classifier's state under ``classifier.``: what every task stores of its head
        (``TaskMethod.head_state`` reads it back)."""
        return prefixed(self.head.state_dict(), "classifier.")

    def trained_norm_tensors(self) -> dict[str, torch.Tensor]:
        """Every norm's state (``norm_tensors``) when ``train_bn`` lets it follow the task's
        data; none otherwise, as the backbone's own norms then serve the task."""
        return norm_tensors(self.model) if self.hparams.train_bn else {}

    def trunk_meta(self) -> dict[str, int]:
        """``trunk_weights``, the count of prunable trunk weights: the unit a task storing
        trunk state reports its storage in (``stored_bits_per_weight`` divides by it)."""
        return {"trunk_weights": prunable_weight_count(self.model, self.classifier)}

    # ---------------------------------------------------------------------------------
    def configure_optimizers(self, epochs: int | None = None) -> dict[str, Any]:
        hp = self.hparams
        opt = self.optimizer_factory(self.trainable_parameters(), lr=hp.lr)
        if hp.get("lr_schedule", "step") == "cosine":
            epochs = epochs or (self.trainer.max_epochs if self._trainer is not None else None)
            if not epochs:
                raise UserError("method.lr_schedule=cosine needs the run's length: recipe(epochs)")
            sched = cosine_schedule(opt, epochs, hp.warmup_epochs)
        elif hp.get("lr_milestones") is not None:
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, list(hp.lr_milestones), gamma=hp.lr_decay_factor
            )
        else:
            sched = torch.optim.lr_scheduler.StepLR(
                opt, hp.lr_decay_every, gamma=hp.lr_decay_factor
            )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def export_task(self, path: str | Path, meta: dict) -> int:
        """Write this task's file; returns its size in bytes."""
        full_meta = {
            **meta,
            "kind": self.task_method.kind,
            "backbone": self.backbone,
            "fingerprint": self.fingerprint,
            "classifier": self.classifier,
            **self.task_meta(),
        }
        return write_task_file(path, self.task_tensors(), full_meta)

    def recipe(
        self, epochs: int | None = None
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The method's optimizer over what it trains, and its schedule (``step()`` once per
        epoch): the published recipe, for a loop of one's own (a cosine needs ``epochs``)."""
        built = self.configure_optimizers(epochs)
        return built["optimizer"], built["lr_scheduler"]["scheduler"]

    def trainable_parameters(self) -> list[dict]:
        """What the method trains, as optimizer parameter groups with their learning rates."""
        return [g for g in self.param_groups() if g["params"]]

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for g in self.param_groups() for p in g["params"])
