"""A task sequence in one job (PackNet): ``python -m src.train method=packnet``.

Base step: prune the pretrained backbone by magnitude (or load an already pruned base),
optionally retrain it on its own data. Then for each task in order: claim the free
weights, train them, prune this task's weights, retrain, freeze. At the end the packed
state is written once, read back, and every task is evaluated again from the file, so
each record holds top-1/top-5 right after the task's training and after the sequence.

When the base's own data is a dataset config (the Visual Decathlon's decathlon/imagenet12
for ResNet-26), the retrained base is scored as a task too and gets a record.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from src.data import eval_split
from src.masking.model_surgery import overall_density, replace_module
from src.masking.pruning import (
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
from src.masking.taskfile import backbone_fingerprint
from src.methods.packnet import PackNet
from src.models import build_backbone, classifier_name, normalisation
from src.models.registry import pretrained_classifier
from src.runs.builders import (
    build_datamodule,
    build_loggers,
    build_method,
    build_trainer,
    ensure_backbone_weights,
)
from src.runs.config import dataset_config_names, with_dataset
from src.runs.identity import existing_record, run_identity
from src.runs.preflight import preflight
from src.runs.records import run_id, write_record
from src.runs.resume import resumable_checkpoint, run_lock
from src.utils.errors import UserError
from src.utils.output import say
from src.utils.random_state import rng_state, set_rng_state

BASE_DATASETS = ("fashion_mnist",)  # base data that is not a dataset config (no record)
# Method keys of the sequence itself; the rest configure each task's PackNet module.
SEQUENCE_KEYS = (
    "tasks", "task_prune", "retrain_epochs", "retrain_lr", "base_prune", "base_weights",
    "base_retrain",
)  # fmt: skip
TrainerFactory = Callable[..., pl.Trainer]  # (epochs, callbacks=()) -> Trainer


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

    def floor(self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule) -> None:
        """Make the module as it is now (just pruned) the one to beat, at its val top-1."""
        pruned = trainer.validate(pl_module, datamodule=datamodule, verbose=False)[0]
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


def _fraction(cfg: DictConfig, key: str) -> float:
    value = cfg.method.get(key)
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise UserError(f"method.{key} must be a fraction strictly between 0 and 1 (got {value})")
    return float(value)


def scored_base_task(cfg: DictConfig) -> str | None:
    """The dataset the base is retrained on when it is a task config (scored, recorded)."""
    dataset = cfg.method.base_retrain.dataset
    return None if dataset is None or dataset in BASE_DATASETS else str(dataset)


def validate(cfg: DictConfig) -> list[str]:
    """Check the sequence config before anything is built or written; returns the tasks."""
    tasks = cfg.method.get("tasks")
    known = dataset_config_names()
    if not isinstance(tasks, ListConfig) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise UserError(
            f"method.tasks must be a non-empty list of dataset names, e.g. "
            f"method.tasks=[{','.join(known[:3])}] (got {tasks})"
        )
    tasks = list(tasks)
    for task in tasks:
        if task not in known:
            raise UserError(
                f"method.tasks: unknown dataset {task!r}; choose from: {', '.join(known)}"
            )
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:
        raise UserError(
            f"method.tasks lists {', '.join(repeated)} more than once; each task owns its own "
            "weights, so every dataset may appear only once in a sequence"
        )
    if cfg.trainer.get("strategy", "auto") != "auto" or cfg.trainer.devices not in (1, "1"):
        raise UserError(
            "a PackNet sequence runs in one process on one device (its pruning steps and the "
            "shared state are not distributed); use the default trainer (trainer.devices=1)"
        )
    _fraction(cfg, "base_prune")
    _fraction(cfg, "task_prune")
    if cfg.method.epochs < 1 or cfg.method.retrain_epochs < 0:
        raise UserError("method.epochs must be >= 1 and method.retrain_epochs >= 0")
    retrain = cfg.method.base_retrain
    if retrain.dataset is not None and retrain.dataset not in (*BASE_DATASETS, *known):
        raise UserError(
            f"method.base_retrain.dataset={retrain.dataset!r} is neither "
            f"{' nor '.join(BASE_DATASETS)} nor a dataset config; set it to null, name the "
            "base's own dataset (e.g. decathlon/imagenet12), or give a base pruned and "
            "retrained elsewhere as method.base_weights=<file>"
        )
    if retrain.dataset in tasks:
        raise UserError(
            f"{retrain.dataset} is the base's own data (method.base_retrain.dataset); the "
            "retrained base is scored on it, so leave it out of method.tasks"
        )
    if retrain.dataset is not None and cfg.method.base_weights:
        raise UserError("method.base_weights is already a retrained base; set base_retrain=null")
    return tasks


Score = tuple[float | None, float | None]  # test top-1, top-5 (None: no labelled test split)


def _test(trainer: pl.Trainer, module: PackNet, datamodule: Any = None, **loaders: Any) -> Score:
    """Test top-1/top-5 in percent, or (None, None) when the datamodule has no test split."""
    if eval_split(datamodule) == "none":
        return None, None
    results = trainer.test(module, datamodule=datamodule, verbose=False, **loaders)[0]
    return 100.0 * float(results["test/top1"]), 100.0 * float(results["test/top5"])


def _pct(value: float | None) -> str:
    return "untested" if value is None else f"{value:.2f}%"


def _val(trainer: pl.Trainer) -> float | None:
    val = trainer.callback_metrics.get("val/top1")
    return 100.0 * float(val) if val is not None else None


def train_task(
    cfg: DictConfig,
    state: PackNetState,
    task: str,
    datamodule: pl.LightningDataModule,
    make_trainer: TrainerFactory,
    base_extras: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """Train, prune, retrain and freeze one task on the shared network; test it right after."""
    method = cfg.method
    model, head_name = state.model, state.classifier
    owner = state.owner(task)
    claimed = claim_free(state.owners, owner)
    if claimed == 0:
        raise UserError(f"no free weights left for task {task!r}; lower method.task_prune")
    in_features = model.get_submodule(head_name).in_features
    device = next(model.parameters()).device
    replace_module(model, head_name, nn.Linear(in_features, datamodule.num_classes).to(device))
    if base_extras is not None:
        load_bias_bn(model, base_extras)
    module = build_method(
        cfg, datamodule.num_classes, model, SEQUENCE_KEYS, owners=state.owners, owner=owner
    )
    trainable = module.trainable_parameter_count()
    selects = getattr(datamodule, "val_set", None) is not None  # else: the last epoch
    best = KeepBestEpoch()
    trainer = make_trainer(method.epochs, callbacks=[best] if selects else [])
    trainer.fit(module, datamodule=datamodule)  # ends at its best epoch
    epochs = method.epochs
    last = task == state.task_order[-1]
    if not last:
        prune_owner(model, state.owners, head_name, owner, float(method.task_prune))
        if method.retrain_epochs > 0:
            module.set_schedule(method.retrain_lr, method.retrain_epochs, 1.0)
            trainer = make_trainer(method.retrain_epochs, callbacks=[best] if selects else [])
            if selects:  # the pruned network's accuracy is the floor of the retrain
                best.floor(trainer, module, datamodule)
            trainer.fit(module, datamodule=datamodule)
            epochs += method.retrain_epochs
    val = best.val_top1(trainer)
    top1, top5 = _test(trainer, module, datamodule)
    extras = bias_bn_state(model, head_name) if base_extras is not None else None
    state.add_task(task, module.head, datamodule.class_names, extras)
    if base_extras is not None:
        load_bias_bn(model, base_extras)  # the next task starts from the base's biases/BN
    return {
        "top1_after_task": top1,
        "top5_after_task": top5,
        "val_top1": val,
        "eval_split": eval_split(datamodule),
        "epochs": epochs,
        "trainable_params": trainable,
        "pruned": not last,
    }


def evaluate_from_file(
    cfg: DictConfig,
    path: Path,
    datamodules: dict[str, pl.LightningDataModule],
    make_trainer: TrainerFactory,
) -> dict[str, Score]:
    """Read the stored state back and test every task on its own view: (top1, top5)."""
    stored = PackNetState.load(path)
    scores = {}
    for task in stored.tasks:
        module = build_method(
            cfg,
            datamodules[task].num_classes,
            stored.view(task),
            SEQUENCE_KEYS,
            owners=stored.owners,
            owner=stored.owner(task),
        )
        scores[task] = _test(make_trainer(1), module, datamodules[task])
    return scores


def build_base(cfg: DictConfig, tasks: list[str]) -> tuple[PackNetState, dict[str, Any]]:
    """The pruned base network and what the record says about it."""
    name = cfg.backbone.name
    head = classifier_name(name)
    method = cfg.method
    if method.base_weights:
        model, owners = load_pruned_base(method.base_weights, name)
        info = {"base_weights": str(method.base_weights), "base_prune": None}
    else:
        model = build_backbone(name, cfg.backbone.weights, num_classes=1)
        owners = init_owners(model, head)
        prune_owner(model, owners, head, BASE, float(method.base_prune))
        info = {"base_weights": None, "base_prune": float(method.base_prune)}
    info["base_fingerprint"] = backbone_fingerprint(model, head)  # the pruned base's weights
    state = PackNetState(
        backbone=name,
        classifier=head,
        model=model,
        owners=owners,
        task_order=tasks,
        base_task=scored_base_task(cfg),
    )
    state.meta = {
        **info,
        "task_prune": float(method.task_prune),
        "train_bias_bn": bool(method.train_bias_bn),
    }
    return state, info


def retrain_base(
    cfg: DictConfig,
    state: PackNetState,
    ckpt_dir: Path,
    datamodule: pl.LightningDataModule | None = None,
) -> dict[str, Any]:
    """Retrain the pruned base's own weights (+ biases/BN) on its dataset, as published.

    The longest phase of a paper grid (10 ImageNet epochs): every epoch is checkpointed in
    ``ckpt_dir``, and an interrupted sequence resumes it there. With a validation split the
    best epoch is kept, the pruned base's own accuracy being the floor, as the official code
    kept the best of its post-pruning epochs.
    ``datamodule``: the base's dataset config when it is scored as a task (its head is then
    stored as that task's); None: the mini base's Fashion-MNIST tensors.
    """
    rc = cfg.method.base_retrain
    if datamodule is None:
        from src.data.mini import fashion_tensors

        batch, norm = cfg.method.batch_size, normalisation(cfg.backbone.name)
        train = fashion_tensors(cfg.paths.data_dir, True, norm)
        fit = {"train_dataloaders": DataLoader(train, batch_size=batch, shuffle=True)}
        test = {"dataloaders": DataLoader(fashion_tensors(cfg.paths.data_dir, False, norm), 512)}
        num_classes = 10
    else:
        fit = test = {"datamodule": datamodule}
        num_classes = datamodule.num_classes
    head = nn.Linear(state.model.get_submodule(state.classifier).in_features, num_classes)
    own = pretrained_classifier(state.backbone, cfg.backbone.weights)
    if own and own["weight"].shape == head.weight.shape:  # the base's own, when it fits
        head.load_state_dict(own)
    replace_module(state.model, state.classifier, head)
    module = build_method(
        cfg,
        num_classes,
        state.model,
        SEQUENCE_KEYS,
        owners=state.owners,
        owner=BASE,
        train_bias_bn=True,
        lr=rc.lr,
        classifier_lr=None,
        lr_decay_every=rc.lr_decay_every,
        lr_decay_factor=rc.lr_decay_factor,
    )
    module.run_id = f"{state.meta['sequence_id']}/base"  # checkpoints of this sequence only
    selects = getattr(datamodule, "val_set", None) is not None
    best = KeepBestEpoch()
    last = ModelCheckpoint(  # last.ckpt, rewritten every epoch
        dirpath=str(ckpt_dir), filename="last", monitor=None, enable_version_counter=False
    )
    trainer = build_trainer(
        cfg,
        rc.epochs,
        logger=False,
        callbacks=[last, *([best] if selects else [])],
        limit_train_batches=rc.limit_train_batches,
        **({} if selects else {"limit_val_batches": 0}),
    )
    resume = None if cfg.force else resumable_checkpoint(ckpt_dir / "last.ckpt", module.run_id)
    if resume:
        say(f"resuming the base's retraining from {resume}")
    elif selects:  # the pruned base's accuracy is the floor
        best.floor(trainer, module, datamodule)
    trainer.fit(module, **fit, ckpt_path=resume, weights_only=True)
    val = best.val_top1(trainer)
    top1, top5 = _test(trainer, module, **test)
    if state.base_task is not None:
        state.add_task(state.base_task, module.head, datamodule.class_names)
    say(f"packnet base retrained on {rc.dataset}: test top-1 {_pct(top1)}")
    return {"dataset": rc.dataset, "epochs": rc.epochs, "top1": top1, "top5": top5,
            "val_top1": val, "trainable_params": module.trainable_parameter_count(),
            "eval_split": eval_split(datamodule)}  # fmt: skip


def sequence_id(first_task_config: dict[str, Any], tasks: list[str]) -> str:
    """Names the sequence's state file and its progress folder."""
    return run_id({**first_task_config, "dataset": {"name": "+".join(tasks)}})


def save_progress(
    path: Path, state: PackNetState, results: dict[str, Any], base_info: dict[str, Any]
) -> None:
    """The sequence so far (network, owners, finished tasks, their results, random states),
    written atomically after the base and after each task, so a killed job resumes there."""
    state.meta["progress"] = {"results": results, "base_info": base_info, "rng": rng_state()}
    try:
        state.save(path)
    finally:
        del state.meta["progress"]


def load_progress(
    path: Path, seq_id: str
) -> tuple[PackNetState, dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """(state, results, base info, random states) saved by ``save_progress``, or None."""
    if not path.is_file():
        return None
    fix = f"delete {path.parent} to start the sequence over, or pass force=true"
    try:
        state = PackNetState.load(path)
    except UserError as err:
        raise UserError(f"cannot resume from {path}: {err}; {fix}") from None
    progress = state.meta.pop("progress", None)
    if progress is None or state.meta.get("sequence_id") != seq_id:
        raise UserError(f"{path} is not this sequence's progress ({seq_id}); {fix}")
    return state, progress["results"], progress["base_info"], progress["rng"]


def run_sequence(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run the whole PackNet sequence; returns one record per task ([] when all exist)."""
    tasks = validate(cfg)
    base_task = scored_base_task(cfg)
    scored = [base_task, *tasks] if base_task else tasks  # every task that gets a record
    task_cfgs = {t: with_dataset(cfg, t) for t in scored}
    preflight(cfg, task_cfgs.values())
    # before seeding: a first-time pretraining draws random numbers
    pretrain_s = 0.0 if cfg.method.base_weights else ensure_backbone_weights(cfg)
    identities = {t: run_identity(c) for t, c in task_cfgs.items()}
    rids = {t: rid for t, (rid, _) in identities.items()}
    runs_dir = Path(cfg.paths.runs_dir)
    if not cfg.force and all(
        existing_record(runs_dir / f"{r}.json") is not None for r in rids.values()
    ):
        say(f"skip: records for all {len(scored)} tasks exist in {runs_dir} (force=true re-runs)")
        return []
    seq_id = sequence_id(identities[tasks[0]][1], tasks)
    progress_dir = Path(cfg.paths.checkpoint_dir) / seq_id
    with run_lock(progress_dir):
        records = _run(cfg, tasks, scored, task_cfgs, identities, seq_id, progress_dir)
    for record in records:
        record["pretrain_time_s"] = round(pretrain_s, 2)
        write_record(runs_dir / f"{record['run_id']}.json", record)
        say(
            f"packnet {record['dataset']}: top-1 {_pct(record['top1_after_task'])} after its "
            f"training, {_pct(record['top1'])} after the sequence"
        )
    return records


def _run(
    cfg: DictConfig,
    tasks: list[str],
    scored: list[str],
    task_cfgs: dict[str, DictConfig],
    identities: dict[str, tuple[str, dict[str, Any]]],
    seq_id: str,
    progress_dir: Path,
) -> list[dict[str, Any]]:
    """The sequence itself, under its lock; returns the records, not yet written."""
    base_task = scored_base_task(cfg)
    progress_path = progress_dir / "progress.safetensors"
    resumed = None if cfg.force else load_progress(progress_path, seq_id)
    if resumed is None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        state, base_info = build_base(cfg, tasks)
        state.meta.update({"seed": cfg.seed, "sequence_id": seq_id})
        results: dict[str, dict[str, Any]] = {}
    else:
        state, results, base_info, rng = resumed
        say(f"resuming the PackNet sequence after {len(state.tasks)} finished task(s): "
              f"{', '.join(state.tasks)} ({progress_path})")  # fmt: skip
    datamodules: dict[str, pl.LightningDataModule] = {}
    for task in scored:  # every dataset is checked before any training
        datamodules[task] = build_datamodule(task_cfgs[task])
        datamodules[task].setup("fit")
    if resumed is not None:
        set_rng_state(rng)  # as it was when the last finished task ended
    elif cfg.method.base_retrain.dataset is not None:
        base_start = time.time()
        base_ckpt_dir = progress_dir / "base"
        retrained = retrain_base(cfg, state, base_ckpt_dir, datamodules.get(base_task))
        base_info["base_retrain"] = state.meta["base_retrain"] = retrained
        if base_task is not None:
            results[base_task] = {
                "top1_after_task": retrained["top1"],
                "top5_after_task": retrained["top5"],
                **{k: retrained[k] for k in ("val_top1", "eval_split", "trainable_params")},
                "epochs": retrained["epochs"],
                "pruned": True,  # the base is pruned before its retraining
                "wall_time_s": round(time.time() - base_start, 2),
            }
        save_progress(progress_path, state, results, base_info)
        shutil.rmtree(base_ckpt_dir, ignore_errors=True)  # the progress file holds it now
    no_val = {"limit_val_batches": 0} if cfg.protocol == "final" else {}  # nothing held out

    def make_trainer(
        epochs: int, log_name: str | None = None, callbacks: list | tuple = ()
    ) -> pl.Trainer:
        return build_trainer(
            cfg,
            epochs,
            enable_checkpointing=False,
            logger=build_loggers(cfg, log_name) if log_name else False,
            callbacks=list(callbacks),
            **no_val,
        )

    base_extras = bias_bn_state(state.model, state.classifier) if cfg.method.train_bias_bn else None
    for position, task in enumerate(tasks):
        if task in state.tasks:  # finished before an interruption
            continue
        task_start = time.time()
        results[task] = train_task(
            task_cfgs[task],
            state,
            task,
            datamodules[task],
            lambda epochs, callbacks=(), t=task: make_trainer(epochs, f"packnet/{t}", callbacks),
            base_extras,
        )
        results[task]["wall_time_s"] = round(time.time() - task_start, 2)
        say(
            f"packnet task {position + 1}/{len(tasks)} {task}: top-1 "
            f"{_pct(results[task]['top1_after_task'])} right after its training"
        )
        if task != tasks[-1]:
            save_progress(progress_path, state, results, base_info)

    state_path = Path(cfg.paths.tasks_dir) / f"{seq_id}.safetensors"
    state_bytes = state.save(state_path)
    final = evaluate_from_file(cfg, state_path, datamodules, make_trainer)
    shares = state.shares()
    records = [
        task_record(
            cfg, state, task, position, results[task], final[task], shares,
            identities[task], state_path, state_bytes, base_info,
        )
        for position, task in enumerate(scored, start=-1 if base_task else 0)
    ]  # fmt: skip
    sequence_s = round(sum(r["wall_time_s"] for r in results.values()), 2)
    for record in records:
        record["sequence_wall_time_s"] = sequence_s  # training time, across resumes
        record["sequence_resumed"] = resumed is not None
    say(f"packnet state ({state_bytes / 1e6:.3f} MB, {state.bits} bits/weight) -> {state_path}")
    progress_path.unlink(missing_ok=True)
    return records


def task_record(
    cfg: DictConfig,
    state: PackNetState,
    task: str,
    position: int,
    result: dict[str, Any],
    final: Score,
    shares: dict[str, dict[str, float]],
    identity: tuple[str, dict[str, Any]],
    state_path: Path,
    state_bytes: int,
    base_info: dict[str, Any],
) -> dict[str, Any]:
    """One task's record: the usual run keys plus the sequence, ownership and storage.

    ``position`` is the task's 0-based place in the sequence; -1 is the scored base task.
    """
    rid, config = identity
    owner = state.owner(task)
    sizes = {n: o.numel() for n, o in state.owners.items()}
    n_weights = sum(sizes.values())
    seen = {"base", *state.task_order[: position + 1]}  # task k's view: owners base .. k
    visible = {
        layer: sum(s for label, s in share.items() if label in seen)
        for layer, share in shares.items()
    }
    head_bytes = sum(t.numel() * t.element_size() for t in state.heads[task].values())
    owner_bytes = sum(packed_size(n, state.bits) for n in sizes.values())
    return {
        "run_id": rid,
        "dataset": task,
        "backbone": state.backbone,
        "method": "packnet",
        "seed": cfg.seed,
        "protocol": cfg.protocol,
        "top1": final[0],
        "top5": final[1],
        **result,
        "forgetting_top1": None if final[0] is None else result["top1_after_task"] - final[0],
        "task_order": state.task_order,
        "base_task": state.base_task,
        "task_position": position + 1,
        "owner_index": owner,
        "owner_share": shares,
        "owner_share_overall": {
            label: sum(shares[n][label] * sizes[n] for n in sizes) / n_weights
            for label in state.owner_names().values()
        },
        "masked_weights": n_weights,
        "mask_density": visible,
        "mask_density_overall": overall_density(visible, sizes),
        "task_state_bytes": state_bytes,
        "owner_bits": state.bits,
        "owner_index_bytes": owner_bytes,
        "classifier_bytes": head_bytes,
        **base_info,
        "weights_fingerprint": config["weights_fingerprint"],
        "task_prune": float(cfg.method.task_prune),
        "train_bias_bn": bool(cfg.method.train_bias_bn),
        "task_file": str(state_path),
        "config": config,
    }
