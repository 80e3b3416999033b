"""Send a finished run's final metrics and mask-density figure to its wandb run (the
figure helpers serve the tables' mask figures too)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from piggyback_lab.models import backbone_facts
from piggyback_lab.utils.atomic import atomic_path

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


FIGURE_NAME = "mask_density.png"  # in the run's output folder


def log_run_summary(logger: Any, record: dict[str, Any], figure_dir: str | Path) -> bool:
    """Put the record's final metrics in the wandb run summary and log its mask figure.

    ``logger``: the trainer's loggers (or one logger); nothing happens when none is a
    WandbLogger. The per-layer mask-density figure is drawn into ``figure_dir`` when the
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
    figure = plot_run_mask_density(record, Path(figure_dir) / FIGURE_NAME)
    if figure is not None:
        import wandb

        run.log({"final/mask_density": wandb.Image(str(figure))})
    return True


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def layer_order(backbone: str, names: list[str]) -> list[str]:
    """Layers in network order (records store them sorted by name)."""
    facts = backbone_facts(backbone)
    if facts is None:
        return sorted(names)
    rank = {n: i for i, n in enumerate(facts.layers)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def mask_off_axes(ax: plt.Axes, layers: list[str], lines: dict[str, list[float]]) -> None:
    """Per-layer share of weights switched off, one line per label."""
    for label, values in lines.items():
        ax.plot(range(len(layers)), [100 * v for v in values], marker="o", ms=3, label=label)
    step = max(1, len(layers) // 30)
    ax.set_xticks(range(0, len(layers), step))
    ax.set_xticklabels(layers[::step], rotation=90, fontsize=7)
    ax.set_ylabel("weights switched off by the mask (%)")
    ax.set_xlabel("layer (network order)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_run_mask_density(record: dict[str, Any], path: str | Path) -> Path | None:
    """One run's per-layer share of weights its mask switches off; None without masks."""
    density = record.get("mask_density") or {}
    if not density:
        return None
    layers = layer_order(record["backbone"], list(density))
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(layers)), 4))
    mask_off_axes(ax, layers, {record["dataset"]: [1 - density[n] for n in layers]})
    ax.set_title(f"{record['method']} on {record['dataset']} ({record['backbone']})")
    return save_figure(fig, Path(path))
