"""PackNet's algorithm over a task sequence: the pruned base, then for each task claim the
free weights, train them, prune this task's share back, retrain, freeze.

The run layer (piggyback_lab/runs/sequence.py) owns the sequence mechanics (task order, progress,
resume, records) and hands each phase its data and two factories: ``make_module(num_classes,
model, **overrides)`` builds this method's module from the config, ``make_trainer(epochs,
callbacks=(), **trainer_kwargs)`` a Trainer. Nothing here reads a dataset or the root config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from piggyback_lab.methods.base import top_k_score
from piggyback_lab.methods.packnet.module import PackNet
from piggyback_lab.methods.packnet.state import (
    BASE,
    PackNetState,
    bias_bn_state,
    claim_free,
    init_owners,
    load_bias_bn,
    load_pruned_base,
    packed_size,
    prune_owner,
)
from piggyback_lab.methods.registry import overall_density
from piggyback_lab.models import build_backbone, classifier_name
from piggyback_lab.models.registry import pretrained_classifier
from piggyback_lab.models.surgery import replace_module
from piggyback_lab.taskfile import backbone_fingerprint
from piggyback_lab.utils.errors import UserError
from piggyback_lab.utils.output import say

# Method keys of the sequence itself; the rest configure each task's PackNet module.
SEQUENCE_KEYS = (
    "tasks", "task_prune", "retrain_epochs", "retrain_lr", "retrain_lr_decay_every",
    "retrain_lr_decay_factor", "base_prune", "base_weights", "base_retrain",
)  # fmt: skip
ModuleFactory = Callable[..., PackNet]  # (num_classes, model, **overrides) -> PackNet
TrainerFactory = Callable[..., pl.Trainer]  # (epochs, callbacks=(), **kwargs) -> Trainer
Score = tuple[float | None, float | None]  # test top-1, top-5 (None: no labelled test split)


@dataclass
class PhaseData:
    """A phase's data as the run layer hands it over: what ``trainer.fit`` and
    ``trainer.test`` take, and what the data says about itself."""

    num_classes: int
    class_names: list[str]
    fit: dict[str, Any]
    test: dict[str, Any] = field(default_factory=dict)
    selects: bool = False  # a validation split: each phase keeps its best epoch
    split: str = "test"  # the split it is tested on ("none": no labelled test split)

    @classmethod
    def of(cls, datamodule: Any) -> PhaseData:
        """From a datamodule (its ``val_set`` and ``eval_split``, as piggyback_lab/data
        documents them)."""
        return cls(
            num_classes=datamodule.num_classes,
            class_names=list(datamodule.class_names),
            fit={"datamodule": datamodule},
            test={"datamodule": datamodule},
            selects=getattr(datamodule, "val_set", None) is not None,
            split=getattr(datamodule, "eval_split", "test"),
        )


class KeepBestEpoch(pl.Callback):
    """Keeps the module's state at its best validation top-1 (in memory) and puts it back
    when the fit ends, as the official code kept each phase's best epoch. ``floor`` and
    ``state``: the score to beat and the state it belongs to (after pruning: the pruned
    network, so the retrain can only improve on it)."""

    def __init__(self, floor: float | None = None, state: dict | None = None) -> None:
        self.best, self.state = floor, state

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get("val/top1")
        if trainer.sanity_checking or score is None:
            return
        if self.best is None or float(score) > self.best:
            self.snapshot(pl_module, float(score))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)

    def floor(self, trainer: pl.Trainer, pl_module: pl.LightningModule, **data: Any) -> None:
        """Make the module as it is now (just pruned) the one to beat, at its val top-1."""
        pruned = trainer.validate(pl_module, verbose=False, **data)[0]
        self.snapshot(pl_module, float(pruned["val/top1"]))

    def val_top1(self, trainer: pl.Trainer) -> float | None:
        """The kept epoch's val top-1 (%); without selection, the last epoch's."""
        return 100.0 * self.best if self.best is not None else _val(trainer)

    def snapshot(self, pl_module: pl.LightningModule, score: float) -> None:
        """Make the module as it is now, scoring ``score``, the one to beat."""
        self.best = score
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:  # kept in checkpoints: a resumed phase remembers
        return {"best": self.best, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.state = state["best"], state["state"]


def base_task(settings: DictConfig, not_configs: tuple[str, ...]) -> str | None:
    """The dataset the base is retrained on when it is a task config (scored, recorded);
    ``not_configs``: base data that is no dataset config (the mini base's own)."""
    dataset = settings.base_retrain.dataset
    return None if dataset is None or dataset in not_configs else str(dataset)


def retrains_base(settings: DictConfig) -> bool:
    return settings.base_retrain.dataset is not None


def uses_backbone_weights(settings: DictConfig) -> bool:
    """Whether the base is pruned from ``backbone.weights`` (not given pruned already)."""
    return not settings.base_weights


def base_extras(settings: DictConfig, state: PackNetState) -> dict[str, torch.Tensor] | None:
    """The base's biases/norms, when each task trains and stores its own."""
    return bias_bn_state(state.model, state.classifier) if settings.train_bias_bn else None


def fraction(settings: DictConfig, key: str) -> float:
    value = settings.get(key)
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise UserError(f"method.{key} must be a fraction strictly between 0 and 1 (got {value})")
    return float(value)


def check_settings(settings: DictConfig, tasks: list[str], base_datasets: list[str]) -> None:
    """PackNet's own settings, before anything is built: fractions, epochs, the base.

    ``base_datasets``: the names ``base_retrain.dataset`` may take (dataset configs and the
    mini base's own data)."""
    fraction(settings, "base_prune")
    fraction(settings, "task_prune")
    if settings.epochs < 1 or settings.retrain_epochs < 0:
        raise UserError("method.epochs must be >= 1 and method.retrain_epochs >= 0")
    retrain = settings.base_retrain
    if retrain.dataset is not None and retrain.dataset not in base_datasets:
        raise UserError(
            f"method.base_retrain.dataset={retrain.dataset!r} is neither the mini base's "
            "data (fashion_mnist) nor a dataset config; set it to null, name the base's own "
            "dataset (e.g. decathlon/imagenet12), or give a base pruned and retrained "
            "elsewhere as method.base_weights=<file>"
        )
    if retrain.dataset in tasks:
        raise UserError(
            f"{retrain.dataset} is the base's own data (method.base_retrain.dataset); the "
            "retrained base is scored on it, so leave it out of method.tasks"
        )
    if retrain.dataset is not None and settings.base_weights:
        raise UserError(
            "method.base_weights is already a retrained base; set method.base_retrain.dataset=null"
        )


def _test(trainer: pl.Trainer, module: PackNet, data: PhaseData) -> Score:
    """Test top-1/top-5 in percent, or (None, None) when the data has no test split; top-5
    is None for 5 classes or fewer."""
    if data.split == "none":
        return None, None
    results = trainer.test(module, verbose=False, **data.test)[0]
    top5 = top_k_score(results, 5, module.head.out_features)  # None: 5 classes or fewer
    return 100.0 * float(results["test/top1"]), top5


def _val(trainer: pl.Trainer) -> float | None:
    val = trainer.callback_metrics.get("val/top1")
    return 100.0 * float(val) if val is not None else None


def percent(value: float | None) -> str:
    return "untested" if value is None else f"{value:.2f}%"


def build_base(
    settings: DictConfig,
    backbone: str,
    weights: str | None,
    tasks: list[str],
    base_task: str | None,
) -> tuple[PackNetState, dict[str, Any]]:
    """The pruned base network and what the records say about it."""
    head = classifier_name(backbone)
    if settings.base_weights:
        model, owners = load_pruned_base(settings.base_weights, backbone)
        info = {"base_weights": str(settings.base_weights), "base_prune": None}
    else:
        model = build_backbone(backbone, weights, num_classes=1)
        owners = init_owners(model, head)
        prune_owner(model, owners, head, BASE, float(settings.base_prune))
        info = {"base_weights": None, "base_prune": float(settings.base_prune)}
    info["backbone_fingerprint"] = backbone_fingerprint(model, head)  # the pruned base's
    state = PackNetState(
        backbone=backbone,
        classifier=head,
        model=model,
        owners=owners,
        task_order=tasks,
        base_task=base_task,
    )
    state.meta = {
        **info,
        "task_prune": float(settings.task_prune),
        "train_bias_bn": bool(settings.train_bias_bn),
    }
    return state, info


def retrain_base(
    settings: DictConfig,
    state: PackNetState,
    data: PhaseData,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
    ckpt_dir: Path,
    weights: str | None,
    resume: str | None,
) -> dict[str, Any]:
    """Retrain the pruned base's own weights (+ biases/BN) on its dataset, as published.

    The longest phase of a paper grid (10 ImageNet epochs): every epoch is checkpointed in
    ``ckpt_dir`` and ``resume`` names the checkpoint an interrupted sequence resumes. With a
    validation split the best epoch is kept, the pruned base's own accuracy being the floor,
    as the official code kept the best of its post-pruning epochs. When the base's data is a
    scored task (``state.base_task``) its head is stored as that task's.
    """
    rc = settings.base_retrain
    head = nn.Linear(state.model.get_submodule(state.classifier).in_features, data.num_classes)
    own = pretrained_classifier(state.backbone, weights)
    if own and own["weight"].shape == head.weight.shape:  # the base's own, when it fits
        head.load_state_dict(own)
    replace_module(state.model, state.classifier, head)
    module = make_module(
        data.num_classes,
        state.model,
        owners=state.owners,
        owner=BASE,
        train_bias_bn=bool(rc.train_bias_bn),
        lr=rc.lr,
        classifier_lr=None,
        lr_decay_every=rc.lr_decay_every,
        lr_decay_factor=rc.lr_decay_factor,
    )
    module.run_id = base_run_id(state)  # checkpoints of this sequence only
    best = KeepBestEpoch()
    last = ModelCheckpoint(  # last.ckpt, rewritten every epoch
        dirpath=str(ckpt_dir), filename="last", monitor=None, enable_version_counter=False
    )
    trainer = make_trainer(
        rc.epochs,
        callbacks=[last, *([best] if data.selects else [])],
        limit_train_batches=rc.limit_train_batches,
        **({} if data.selects else {"limit_val_batches": 0}),
    )
    if resume:
        say(f"resuming the base's retraining from {resume}")
    elif data.selects:  # the pruned base's accuracy is the floor
        best.floor(trainer, module, **data.test)
    trainer.fit(module, **data.fit, ckpt_path=resume, weights_only=True)
    val = best.val_top1(trainer)
    top1, top5 = _test(trainer, module, data)
    if state.base_task is not None:
        state.add_task(state.base_task, module.head, data.class_names)
    say(f"packnet base retrained on {rc.dataset}: test top-1 {percent(top1)}")
    return {"dataset": rc.dataset, "epochs": rc.epochs, "top1": top1, "top5": top5,
            "val_top1": val, "trainable_params": module.trainable_parameter_count(),
            "eval_split": data.split}  # fmt: skip


def scored_base_result(retrained: dict[str, Any]) -> dict[str, Any]:
    """A scored base task's result, from its retraining's (as ``train_task`` returns one)."""
    return {
        "top1_after_task": retrained["top1"],
        "top5_after_task": retrained["top5"],
        **{k: retrained[k] for k in ("val_top1", "eval_split", "trainable_params")},
        "epochs": retrained["epochs"],
        "pruned": True,  # the base is pruned before its retraining
    }


def base_run_id(state: PackNetState) -> str:
    """What the base retraining's checkpoints are tagged with."""
    return f"{state.meta['sequence_id']}/base"


def train_task(
    settings: DictConfig,
    state: PackNetState,
    task: str,
    datamodule: Any,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
    base_extras: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """Train, prune, retrain and freeze one task on the shared network; test it right after.

    ``base_extras``: the base's biases/norms when they are trained per task (each task
    starts from them and stores its own)."""
    data = PhaseData.of(datamodule)
    model, head_name = state.model, state.classifier
    owner = state.owner(task)
    claimed = claim_free(state.owners, owner)
    if claimed == 0:
        raise UserError(f"no free weights left for task {task!r}; lower method.task_prune")
    in_features = model.get_submodule(head_name).in_features
    device = next(model.parameters()).device
    replace_module(model, head_name, nn.Linear(in_features, data.num_classes).to(device))
    if base_extras is not None:
        load_bias_bn(model, base_extras)
    module = make_module(data.num_classes, model, owners=state.owners, owner=owner)
    trainable = module.trainable_parameter_count()
    best = KeepBestEpoch()
    trainer = make_trainer(settings.epochs, callbacks=[best] if data.selects else [])
    trainer.fit(module, **data.fit)  # ends at its best epoch
    epochs = settings.epochs
    last = task == state.task_order[-1]
    if not last:
        prune_owner(model, state.owners, head_name, owner, float(settings.task_prune))
        if settings.retrain_epochs > 0:
            trainer = _retrain_pruned(settings, module, data, make_trainer, best)
            epochs += settings.retrain_epochs
    val = best.val_top1(trainer)
    top1, top5 = _test(trainer, module, data)
    extras = bias_bn_state(model, head_name) if base_extras is not None else None
    state.add_task(task, module.head, data.class_names, extras)
    if base_extras is not None:
        load_bias_bn(model, base_extras)  # the next task starts from the base's biases/BN
    return {
        "top1_after_task": top1,
        "top5_after_task": top5,
        "val_top1": val,
        "eval_split": data.split,
        "epochs": epochs,
        "trainable_params": trainable,
        "pruned": not last,
    }


def _retrain_pruned(
    settings: DictConfig,
    module: PackNet,
    data: PhaseData,
    make_trainer: TrainerFactory,
    best: KeepBestEpoch,
) -> pl.Trainer:
    """Retrain a task's weights left after its pruning, at the retraining schedule."""
    module.set_schedule(
        settings.retrain_lr, settings.retrain_lr_decay_every, settings.retrain_lr_decay_factor
    )
    trainer = make_trainer(settings.retrain_epochs, callbacks=[best] if data.selects else [])
    if data.selects:  # the pruned network's accuracy is the floor of the retrain
        best.floor(trainer, module, **data.test)
    trainer.fit(module, **data.fit)
    return trainer


load_state = PackNetState.load  # the sequence's progress and result files


def evaluate_from_file(
    path: Path,
    datamodules: dict[str, Any],
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
) -> dict[str, Score]:
    """Read the stored state back and test every task on its own view: (top1, top5)."""
    stored = PackNetState.load(path)
    scores = {}
    for task in stored.tasks:
        data = PhaseData.of(datamodules[task])
        module = make_module(
            data.num_classes, stored.view(task), owners=stored.owners, owner=stored.owner(task)
        )
        scores[task] = _test(make_trainer(1), module, data)
    return scores


def task_facts(
    state: PackNetState,
    task: str,
    position: int,
    result: dict[str, Any],
    final: Score,
    state_bytes: int,
    base_info: dict[str, Any],
) -> dict[str, Any]:
    """What one task's record adds to the usual keys: the sequence, ownership and storage.

    ``position`` is the task's 0-based place in the sequence; -1 is the scored base task.
    """
    shares = state.shares()
    sizes = {n: o.numel() for n, o in state.owners.items()}
    n_weights = sum(sizes.values())
    seen = {"base", *state.task_order[: position + 1]}  # task k's view: owners base .. k
    visible = {
        layer: sum(s for label, s in share.items() if label in seen)
        for layer, share in shares.items()
    }
    head_bytes = sum(t.numel() * t.element_size() for t in state.heads[task].values())
    return {
        **result,
        "forgetting_top1": None if final[0] is None else result["top1_after_task"] - final[0],
        "task_order": state.task_order,
        "base_task": state.base_task,
        "task_position": position + 1,
        "owner_index": state.owner(task),
        "owner_share": shares,
        "owner_share_overall": {
            label: sum(shares[n][label] * sizes[n] for n in sizes) / n_weights
            for label in state.owner_names().values()
        },
        "masked_weights": n_weights,
        "mask_density": visible,
        "mask_density_overall": overall_density(visible, sizes),
        "mask_sizes": dict(sizes),
        "task_state_bytes": state_bytes,
        "owner_bits": state.bits,
        "owner_index_bytes": sum(packed_size(n, state.bits) for n in sizes.values()),
        "classifier_bytes": head_bytes,
        **base_info,
        "task_prune": float(state.meta["task_prune"]),
        "train_bias_bn": bool(state.meta["train_bias_bn"]),
    }
