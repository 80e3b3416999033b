"""What a run prints: quiet by default, progress bars only on a terminal, one line per epoch
otherwise (a log file or CI), so `make train > log` stays readable."""

from __future__ import annotations

import logging
import sys
import warnings

import pytorch_lightning as pl

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
