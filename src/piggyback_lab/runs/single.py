"""One task, one method: fit, select the epoch, test, write the task file and the record."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from piggyback_lab.data import eval_split
from piggyback_lab.methods.base import top_k_score
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
from piggyback_lab.runs.console import say_run_start, scores_text
from piggyback_lab.runs.identity import existing_record, run_identity
from piggyback_lab.runs.records import run_record, write_record
from piggyback_lab.runs.resume import resumable_checkpoint, run_lock
from piggyback_lab.runs.tuning import validation_only
from piggyback_lab.runs.wandb_summary import log_run_summary
from piggyback_lab.taskfile import state_digest
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


@dataclass
class Run:
    """What one training run is made of, built before any training."""

    rid: str
    config: dict[str, Any]  # the resolved config, as recorded
    record_path: Path
    task_path: Path
    ckpt_dir: Path
    datamodule: pl.LightningDataModule = None
    method: pl.LightningModule = None
    trainer: pl.Trainer = None
    checkpoint: Any = None
    clock: TrainingClock = None
    as_is: bool = False  # scores the pretrained network on its own data, no training
    selects: bool = True  # picks an epoch on a validation split (protocol=final: the last)


def run_single(cfg: DictConfig) -> dict[str, Any] | None:
    """Train one task; returns its record (the one on disk, marked ``skipped``, when the run
    was recorded already; None on ranks other than 0).

    The phases, top to bottom: identify the run (skip it when recorded), build, fit (or
    score the pretrained network as it is), test, write the task file and the record.
    """
    pretrain_s = ensure_backbone_weights(cfg)  # before seeding: pretraining draws numbers
    run = _identify(cfg)
    existing = None if cfg.force else existing_record(run.record_path)
    if existing is not None:
        return {**existing, "skipped": True}
    with run_lock(run.record_path.with_suffix("")):  # beside the record: one per results folder
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        _build(cfg, run)
        best_val, best_name = _score_as_is(cfg, run) if run.as_is else _fit(cfg, run)
        test, at_chance = _test(cfg, run, best_val)
        record = _record(cfg, run, test, at_chance, best_val, best_name, pretrain_s)
    if record is not None and not cfg.get("keep_checkpoints", False):
        shutil.rmtree(run.ckpt_dir, ignore_errors=True)
    return record


def _identify(cfg: DictConfig) -> Run:
    """The run's id and where its files go; a folder in a file's place is refused."""
    rid, config = run_identity(cfg)
    run = Run(
        rid=rid,
        config=config,
        record_path=Path(cfg.paths.runs_dir) / f"{rid}.json",
        task_path=Path(cfg.paths.tasks_dir) / f"{rid}.safetensors",
        ckpt_dir=Path(cfg.paths.checkpoint_dir) / rid,
    )
    for path in (run.record_path, run.task_path):
        if path.is_dir():
            raise UserError(f"{path} is a folder, where this run writes a file; move it away")
    return run


def _build(cfg: DictConfig, run: Run) -> None:
    """Data, the method's module, the checkpoint, the clock and the trainer."""
    run.as_is = scores_pretrained(cfg)
    run.datamodule = build_datamodule(cfg)
    run.datamodule.setup("test" if run.as_is else "fit")
    run.method = build_method(cfg, run.datamodule.num_classes)
    run.method.run_id = run.rid
    run.selects = run.datamodule.val_set is not None  # protocol=final: keep the last epoch
    run.checkpoint = build_checkpoint(cfg, run.ckpt_dir, run.selects)
    run.clock = TrainingClock()
    run.trainer = build_trainer(
        cfg,
        cfg.method.epochs,
        callbacks=[run.checkpoint, run.clock, *build_callbacks(cfg)],
        logger=build_loggers(cfg),
        **({} if run.selects else {"limit_val_batches": 0}),
    )
    for logger in run.trainer.loggers:
        logger.log_hyperparams(run.config)  # the whole run config, not only the module's
    say_run_start(cfg, run)


def _score_as_is(cfg: DictConfig, run: Run) -> tuple[float | None, None]:
    """No training: the pretrained network as it is, on the data it was trained on; its
    validation top-1 when it selects (None: the test pass will say it)."""
    say(
        f"{cfg.dataset.name} is the data {cfg.backbone.name} was trained on: scoring the "
        "pretrained network as it is (pretrained_as_is=false trains on it instead)"
    )
    run.method.as_pretrained()
    reuse = run.datamodule.val_set is run.datamodule.test_set  # faithful: the test pass serves
    if not run.selects or reuse:
        return None, None
    return _val_top1(run.trainer, run.method, run.datamodule), None


def _test(cfg: DictConfig, run: Run, best_val: float | None) -> tuple[dict[str, float], bool]:
    """The test pass (none without a labelled test split, and none for a tuning search's
    run: the protocol tests its final runs once), and whether training ended at chance
    (said as a warning; the record carries it)."""
    tested = eval_split(run.datamodule) != "none" and not validation_only(cfg)
    test = (
        run.trainer.test(run.method, datamodule=run.datamodule, verbose=False)[0] if tested else {}
    )
    num_classes = run.datamodule.num_classes
    score = best_val if best_val is not None else 100.0 * test.get("test/top1", math.nan)
    why = None if run.as_is else chance_reason(run.trainer, num_classes, score)
    if why:
        say(
            f"warning: {why}: the network learned nothing useful (diverged, or too short "
            f"a run?); the record says at_chance=true. Check method.lr (now {cfg.method.lr}) "
            "and the budget",
            logging.WARNING,
        )
    return test, why is not None


def _record(
    cfg: DictConfig,
    run: Run,
    test: dict[str, float],
    at_chance: bool,
    best_val: float | None,
    best_name: str | None,
    pretrain_s: float,
) -> dict[str, Any] | None:
    """Write the task file and the record together (rank 0 only); returns the record."""
    train_s = run.clock.seconds()
    if run.as_is and run.selects and best_val is None:
        best_val = 100.0 * float(test["test/top1"])
    method, trainer, datamodule = run.method, run.trainer, run.datamodule
    ranks_agree = all_ranks_agree(state_digest(method.task_tensors()))
    if not trainer.is_global_zero:  # only rank 0 writes task files and records
        return None
    with written_together(run.task_path, run.ckpt_dir):
        task_bytes = method.export_task(run.task_path, _task_meta(cfg, run))
        record = run_record(
            run_id=run.rid,
            source="train",
            dataset=cfg.dataset.name,
            backbone=cfg.backbone.name,
            method=cfg.method.name,
            seed=cfg.seed,
            protocol=cfg.protocol,
            top1=100.0 * float(test["test/top1"]) if test else None,
            top5=top_k_score(test, 5, datamodule.num_classes),
            weights_fingerprint=run.config["weights_fingerprint"],
            backbone_fingerprint=method.fingerprint,
            task_file=str(run.task_path),
            task_state_bytes=task_bytes,
            wall_time_s=train_s,
            val_top1=best_val,
            eval_split=eval_split(datamodule),
            world_size=trainer.world_size,
            precision=str(trainer.precision),  # as it ran (16-mixed on a CPU runs bf16-mixed)
            ranks_agree=ranks_agree,
            epochs=trainer.current_epoch,
            pretrained_as_is=run.as_is,
            skipped_images=getattr(datamodule, "skipped_images", []),
            best_checkpoint=best_name,
            at_chance=at_chance,
            trainable_params=method.trainable_parameter_count(),
            **method.state_facts(),
            config=run.config,
            pretrain_time_s=round(pretrain_s, 2),
        )
        write_record(run.record_path, record, device=method.device)
    log_run_summary(trainer.loggers, record, cfg.paths.output_dir)
    _say_result(cfg, record, task_bytes, run.record_path)
    return record


def _task_meta(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """What the task file says of its task, so src.eval and src.predict serve it as is."""
    return {
        "dataset": cfg.dataset.name,
        "method": cfg.method.name,
        "class_names": run.datamodule.class_names,
        "num_classes": run.datamodule.num_classes,
        "run_id": run.rid,
        "transforms": OmegaConf.to_container(cfg.dataset.transforms, resolve=True),
    }


def _say_result(cfg: DictConfig, record: dict[str, Any], task_bytes: int, path: Path) -> None:
    score_text = scores_text(record)
    say(
        f"{cfg.method.name} on {cfg.dataset.name} ({cfg.backbone.name}, seed {cfg.seed}): "
        f"{score_text}  task file {task_bytes / 1e6:.3f} MB  record {path}"
    )


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


def _fit(cfg: DictConfig, run: Run) -> tuple[float | None, str]:
    """Train (resuming this run's last checkpoint) and load the selected epoch; returns its
    validation top-1 (None without selection) and its checkpoint's name."""
    resume = None if cfg.force else resumable_checkpoint(run.ckpt_dir / "last.ckpt", run.rid)
    if resume:
        say(f"resuming from {resume}")
    run.trainer.fit(run.method, datamodule=run.datamodule, ckpt_path=resume, weights_only=True)
    score = run.checkpoint.best_model_score
    best_val = 100.0 * float(score) if run.selects and score is not None else None
    best = torch.load(run.checkpoint.best_model_path, map_location="cpu", weights_only=True)
    run.method.load_state_dict(best["state_dict"])
    return best_val, Path(run.checkpoint.best_model_path).name


def chance_reason(trainer: pl.Trainer, num_classes: int, top1: float) -> str | None:
    """Why a run ended at chance, or None: its last training loss is ln(classes) to 0.1%
    (a network that scores every image alike, what a diverged run ends as), or its selected
    top-1 (validation; test without it) is no better than guessing, 100/classes %."""
    loss = trainer.callback_metrics.get("train/loss")
    chance = math.log(num_classes) if num_classes > 1 else 0.0
    if loss is not None and chance > 0 and abs(float(loss) - chance) < 1e-3 * chance:
        return f"the training loss ended at ln({num_classes}), chance"
    if num_classes > 1 and top1 <= 100.0 / num_classes:
        guess = 100.0 / num_classes
        return f"top-1 {top1:.2f}% is no better than chance (100/{num_classes} = {guess:.2f}%)"
    return None
