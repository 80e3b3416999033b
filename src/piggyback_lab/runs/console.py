"""What a run prints: quiet by default, progress bars only on a terminal, one line per epoch
otherwise (a log file or CI), so `make train > log` stays readable."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import TQDMProgressBar

from piggyback_lab.utils.output import say

# Lightning's notices that say nothing about this run (adverts, defaults, hooks we mean).
NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",
    r"You have overridden `on_after_batch_transfer`",
    r"The number of training batches .* is smaller than the logging interval",
    r"Found \d+ module\(s\) in eval mode",  # frozen BatchNorm is deliberate
    r"You defined a `validation_step` but have no `val_dataloader`",  # protocol=final
    r"Checkpoint directory .* exists and is not empty",  # a resumed run's own folder
    r"The '\w+_dataloader' does not have many workers",  # num_workers is the user's choice
)


def quiet_lightning() -> None:
    """Silence Lightning's adverts and info lines and the warnings in ``NOISE``.

    Imported before Hydra set up logging (the method configs register on import, before the
    command line is composed), Lightning gives its logger a stderr handler of its own; its
    records go through the root logger's handlers (Hydra's job log) instead, as they do when
    Lightning is imported later, so an info line ("Received SIGTERM") does not reach stderr.
    """
    for name in ("pytorch_lightning", "lightning.pytorch"):
        own = logging.getLogger(name)
        if logging.getLogger().hasHandlers() and not own.propagate:
            for handler in [h for h in own.handlers if type(h) is logging.StreamHandler]:
                own.removeHandler(handler)
            own.propagate = True
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)


def progress_bars(setting: bool | str) -> bool:
    """``trainer.enable_progress_bar``: auto draws bars only when stderr is a terminal."""
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


class EpochLine(pl.Callback):
    """One line per finished epoch, where no progress bar is drawn."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not trainer.max_epochs or trainer.max_epochs < 1:
            return  # a fit bounded by steps (the benchmarks) has no epochs to count
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        metrics = trainer.callback_metrics
        if "train/loss" in metrics:
            parts.append(f"train loss {float(metrics['train/loss']):.4f}")
        if "val/top1" in metrics:
            parts.append(f"val top-1 {100 * float(metrics['val/top1']):.2f}%")
        say("  ".join(parts))


def shown_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Progress-bar metrics as a reader wants them: accuracies (``val/top1``) in percent."""
    shown: dict[str, Any] = {}
    for key, value in metrics.items():
        is_accuracy = key.rpartition("/")[2].startswith("top") and isinstance(value, float)
        shown[key] = f"{100 * value:.2f}%" if is_accuracy else value
    return shown


class EpochBar(TQDMProgressBar):
    """Lightning's bar, one kept line per epoch (``epoch 3/30``, with its loss and
    validation top-1 in percent) rather than one line redrawn over the last epoch's."""

    def __init__(self) -> None:
        super().__init__(leave=True)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"epoch {trainer.current_epoch + 1}{total}")

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return shown_metrics(super().get_metrics(trainer, pl_module))


def scores_text(record: dict[str, Any]) -> str:
    """A record's test scores in words: top-5 only where it says something (more than 5
    classes; the record holds None otherwise)."""
    if record.get("top1") is None:
        tuning = (record.get("config") or {}).get("tuning") or {}
        if tuning.get("role") == "search":
            return f"validation top-1 {record['val_top1']:.2f}% (a tuning search run: not tested)"
        return "not tested (no labelled test split)"
    top5 = record.get("top5")
    shown = f"  top-5 {top5:.2f}%" if top5 is not None else ""
    return f"test top-1 {record['top1']:.2f}%{shown}"


def run_banner(
    cfg: DictConfig, run_id: str, module: Any, record_path: Path, task_path: Path
) -> list[str]:
    """What a run is about to do, in three lines: what runs, what trains, where it goes."""
    total = sum(p.numel() for p in module.model.parameters())
    trained = module.trainable_parameter_count()
    share = f" ({100 * trained / total:.2f}%)" if total else ""
    return [
        f"run {run_id}: {cfg.method.name} on {cfg.dataset.name}, backbone {cfg.backbone.name}, "
        f"seed {cfg.seed}, {cfg.method.epochs} epochs",
        f"trains {trained:,} of {total:,} parameters{share}; a method's own tensors (masks, "
        "adapters) count in both",
        f"record -> {record_path}  task file -> {task_path}",
    ]


def say_run_start(cfg: DictConfig, run: Any) -> None:
    """Print the start banner once, on rank 0 (``run``: runs/single.py's Run, built)."""
    if run.trainer is not None and not run.trainer.is_global_zero:
        return
    for line in run_banner(cfg, run.rid, run.method, run.record_path, run.task_path):
        say(line)
