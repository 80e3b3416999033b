"""Send a finished run's final metrics and mask-density figure to its wandb run."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Record fields that summarise a run (numbers only; the full record stays in results/runs/).
SUMMARY_KEYS = (
    "top1", "top5", "val_top1", "epochs", "task_state_bytes", "trainable_params",
    "masked_weights", "mask_density_overall", "wall_time_s",
)  # fmt: skip


def _wandb_logger(logger: Any) -> Any | None:
    """The WandbLogger among ``logger`` (one logger, a list of them, or None)."""
    from pytorch_lightning.loggers import WandbLogger

    loggers: Iterable[Any] = (
        logger if isinstance(logger, (list, tuple)) else [] if logger is None else [logger]
    )
    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)


def log_run_summary(logger: Any, record: dict[str, Any], figure_path: str | Path) -> bool:
    """Put the record's final metrics in the wandb run summary and log its mask figure.

    ``logger``: the trainer's loggers (or one logger); nothing happens when none is a
    WandbLogger. The per-layer mask-density figure is drawn to ``figure_path`` when the
    run has masks. Returns whether anything was sent.
    """
    wandb_logger = _wandb_logger(logger)
    if wandb_logger is None:
        return False
    run = wandb_logger.experiment
    summary = {
        f"final/{k}": record[k]
        for k in SUMMARY_KEYS
        if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)
    }
    summary["final/run_id"] = record.get("run_id")
    run.summary.update(summary)
    for layer, density in (record.get("mask_density") or {}).items():
        run.summary[f"final/mask_density/{layer}"] = density
    from src.reporting.figures import plot_run_mask_density

    figure = plot_run_mask_density(record, figure_path)
    if figure is not None:
        import wandb

        run.log({"final/mask_density": wandb.Image(str(figure))})
    return True
