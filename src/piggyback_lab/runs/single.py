"""One task, one method: fit, select the epoch, test, write the task file and the record."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from piggyback_lab.data import eval_split
from piggyback_lab.masking import (
    keep_all_weights,
    mask_densities,
    masked_layers,
    overall_density,
    state_digest,
)
from piggyback_lab.runs.builders import (
    build_callbacks,
    build_checkpoint,
    build_datamodule,
    build_loggers,
    build_method,
    build_trainer,
    ensure_backbone_weights,
    scores_pretrained,
)
from piggyback_lab.runs.identity import existing_record, run_identity
from piggyback_lab.runs.records import run_record, write_record
from piggyback_lab.runs.resume import resumable_checkpoint, run_lock
from piggyback_lab.runs.wandb_summary import log_run_summary
from piggyback_lab.utils.distributed import all_ranks_agree
from piggyback_lab.utils.errors import UserError
from piggyback_lab.utils.output import say


class TrainingClock(pl.Callback):
    """Seconds spent training, kept in the checkpoint so a resumed run counts them all."""

    def __init__(self) -> None:
        self.before = 0.0  # seconds of earlier, interrupted attempts
        self.started = time.time()

    def seconds(self) -> float:
        return self.before + time.time() - self.started

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.before, self.started = float(state["seconds"]), time.time()


def run_single(cfg: DictConfig) -> dict[str, Any] | None:
    """Train one task; returns its record (None when skipped, or on ranks other than 0)."""
    pretrain_s = ensure_backbone_weights(cfg)  # before seeding: pretraining draws numbers
    rid, config = run_identity(cfg)
    record_path = Path(cfg.paths.runs_dir) / f"{rid}.json"
    for path in (record_path, Path(cfg.paths.tasks_dir) / f"{rid}.safetensors"):
        if path.is_dir():
            raise UserError(f"{path} is a folder, where this run writes a file; move it away")
    if not cfg.force and existing_record(record_path) is not None:
        return None
    ckpt_dir = Path(cfg.paths.checkpoint_dir) / rid
    with run_lock(record_path.with_suffix("")):  # beside the record: one per results folder
        record = _train(cfg, rid, config, record_path, ckpt_dir, pretrain_s)
    if record is not None and not cfg.get("keep_checkpoints", False):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record


def _train(
    cfg: DictConfig,
    rid: str,
    config: dict[str, Any],
    record_path: Path,
    ckpt_dir: Path,
    pretrain_s: float,
) -> dict[str, Any] | None:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    as_is = scores_pretrained(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.setup("test" if as_is else "fit")
    method = build_method(cfg, datamodule.num_classes)
    method.run_id = rid
    selects = datamodule.val_set is not None  # protocol=final: keep the last epoch
    checkpoint = build_checkpoint(cfg, ckpt_dir, selects)
    clock = TrainingClock()
    trainer = build_trainer(
        cfg,
        cfg.method.epochs,
        callbacks=[checkpoint, clock, *build_callbacks(cfg)],
        logger=build_loggers(cfg),
        **({} if selects else {"limit_val_batches": 0}),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(config)  # the whole run config, not only the module's
    if as_is:
        say(
            f"{cfg.dataset.name} is the data {cfg.backbone.name} was trained on: scoring the "
            "pretrained network as it is (pretrained_as_is=false trains on it instead)"
        )
        keep_all_weights(method.model)
        reuse = datamodule.val_set is datamodule.test_set  # faithful: the test pass serves
        best_val = _val_top1(trainer, method, datamodule) if selects and not reuse else None
        best_name = None
    else:
        best_val, best_name = _fit(cfg, rid, method, datamodule, trainer, checkpoint, ckpt_dir)
    train_s = clock.seconds()
    tested = eval_split(datamodule) != "none"  # protocol=final without a labelled test split
    test = trainer.test(method, datamodule=datamodule, verbose=False)[0] if tested else {}
    at_chance = stuck_at_chance(trainer, datamodule.num_classes) and not as_is
    if at_chance:
        say(
            f"warning: the training loss ended at ln({datamodule.num_classes}), chance: the "
            f"network learned nothing (diverged?); the record says at_chance=true. Lower "
            f"method.lr (now {cfg.method.lr})",
            logging.WARNING,
        )
    if as_is and selects and best_val is None:
        best_val = 100.0 * float(test["test/top1"])
    ranks_agree = all_ranks_agree(state_digest(method.task_tensors()))
    if not trainer.is_global_zero:  # only rank 0 writes task files and records
        return None

    task_path = Path(cfg.paths.tasks_dir) / f"{rid}.safetensors"
    task_meta = {
        "dataset": cfg.dataset.name,
        "method": cfg.method.name,
        "class_names": datamodule.class_names,
        "num_classes": datamodule.num_classes,
        "run_id": rid,
        "transforms": OmegaConf.to_container(cfg.dataset.transforms, resolve=True),
    }
    with written_together(task_path, ckpt_dir):
        task_bytes = method.export_task(task_path, task_meta)
        report = state_report(method, task_bytes)
        record = run_record(
            run_id=rid,
            source="train",
            dataset=cfg.dataset.name,
            backbone=cfg.backbone.name,
            method=cfg.method.name,
            seed=cfg.seed,
            protocol=cfg.protocol,
            top1=100.0 * float(test["test/top1"]) if tested else None,
            top5=100.0 * float(test["test/top5"]) if tested else None,
            weights_fingerprint=config["weights_fingerprint"],
            backbone_fingerprint=method.fingerprint,
            task_file=str(task_path),
            task_state_bytes=report.pop("task_state_bytes"),
            wall_time_s=train_s,
            val_top1=best_val,
            eval_split=eval_split(datamodule),
            world_size=trainer.world_size,
            precision=str(trainer.precision),  # as it ran (16-mixed on a CPU runs bf16-mixed)
            ranks_agree=ranks_agree,
            epochs=trainer.current_epoch,
            pretrained_as_is=as_is,
            skipped_images=getattr(datamodule, "skipped_images", []),
            best_checkpoint=best_name,
            at_chance=at_chance,
            **report,
            config=config,
            pretrain_time_s=round(pretrain_s, 2),
        )
        write_record(record_path, record, device=method.device)
    log_run_summary(trainer.loggers, record, Path(cfg.paths.output_dir) / "mask_density.png")
    score_text = (
        f"test top-1 {record['top1']:.2f}%  top-5 {record['top5']:.2f}%"
        if tested
        else "not tested (no labelled test split)"
    )
    say(
        f"{cfg.method.name} on {cfg.dataset.name} ({cfg.backbone.name}, seed {cfg.seed}): "
        f"{score_text}  task file {task_bytes / 1e6:.3f} MB  record {record_path}"
    )
    return record


@contextlib.contextmanager
def written_together(task_path: Path, ckpt_dir: Path) -> Iterator[None]:
    """The task file and the record are written together or not at all: a write that fails
    after training (a full disk, a folder where the record goes) leaves neither, says so in
    one line, and keeps the checkpoints to finish from."""
    existed = task_path.exists()
    try:
        yield
    except OSError as err:
        if not existed:
            task_path.unlink(missing_ok=True)
        raise UserError(
            f"the run trained, but its results cannot be written ({err.strerror or err}: "
            f"{err.filename}); its checkpoints stay in {ckpt_dir}. Make room or fix that "
            "path, then run the same command again"
        ) from None


def _val_top1(
    trainer: pl.Trainer, method: pl.LightningModule, datamodule: pl.LightningDataModule
) -> float:
    """Validation top-1 (%) of the module as it is (what the Decathlon's val score reads)."""
    return 100.0 * float(
        trainer.validate(method, datamodule=datamodule, verbose=False)[0]["val/top1"]
    )


def _fit(
    cfg: DictConfig,
    rid: str,
    method: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    trainer: pl.Trainer,
    checkpoint: Any,
    ckpt_dir: Path,
) -> tuple[float | None, str]:
    """Train (resuming this run's last checkpoint) and load the selected epoch; returns its
    validation top-1 (None without selection) and its checkpoint's name."""
    resume = resumable_checkpoint(ckpt_dir / "last.ckpt", rid) if not cfg.force else None
    if resume:
        say(f"resuming from {resume}")
    trainer.fit(method, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    score = checkpoint.best_model_score
    selects = datamodule.val_set is not None
    best_val = 100.0 * float(score) if selects and score is not None else None
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    method.load_state_dict(best["state_dict"])
    return best_val, Path(checkpoint.best_model_path).name


def stuck_at_chance(trainer: pl.Trainer, num_classes: int) -> bool:
    """Whether the last epoch's training loss is ln(classes) to 0.1%: a network that outputs
    the same scores for every image (what a diverged run ends as)."""
    loss = trainer.callback_metrics.get("train/loss")
    chance = math.log(num_classes) if num_classes > 1 else 0.0
    return loss is not None and chance > 0 and abs(float(loss) - chance) < 1e-3 * chance


def state_report(method: pl.LightningModule, task_bytes: int) -> dict[str, Any]:
    """Storage and mask statistics for the record."""
    layers = masked_layers(method.model)
    density = mask_densities(method.model) if layers else {}
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    return {
        "task_state_bytes": task_bytes,
        "trainable_params": method.trainable_parameter_count(),
        "masked_weights": sum(sizes.values()),
        "mask_density": density,
        "mask_density_overall": overall_density(density, sizes),
    }
