"""Figures from run records (PNG, matplotlib Agg): mask sparsity per layer, sweeps, storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from piggyback_lab.reporting.tables import (
    MB,
    choose_variants,
    differing_keys,
    flat_config,
    records_frame,
    shared_state_methods,
    summarize,
)
from piggyback_lab.runs.wandb_summary import layer_order, mask_off_axes, save_figure

SWEEP_PARAMS = ("threshold", "lr")  # config.method.<param>


def plot_mask_off(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per backbone and masked method: one line per task, mean over its runs."""
    written = []
    masked = frame[frame.mask_density.map(bool)]
    for (bb, method), group in masked.groupby(["backbone", "method"], sort=True):
        dens = pd.DataFrame(list(group.mask_density), index=group.dataset)
        mean = dens.groupby(level=0).mean()
        layers = layer_order(bb, list(mean.columns))
        lines = {ds: list(1 - mean.loc[ds, layers]) for ds in mean.index}
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(layers)), 4))
        mask_off_axes(ax, layers, lines)
        ax.set_title(f"{method} ({bb}): share of weights each task's mask switches off")
        written.append(save_figure(fig, out_dir / f"mask_off_{bb}_{method}.png"))
    return written


def plot_sweeps(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Test top-1 against config.method.threshold / lr wherever runs vary that value."""
    written = []
    for param in SWEEP_PARAMS:
        key = f"method.{param}"
        for (bb, method), group in frame.groupby(["backbone", "method"], sort=True):
            lines = _sweep_lines(group, key)
            if not lines:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, pts in lines.items():
                ax.errorbar(
                    pts.index,
                    pts["mean"],
                    yerr=pts["std"].fillna(0),
                    marker="o",
                    capsize=3,
                    label=label,
                )
            xs = [x for pts in lines.values() for x in pts.index]
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
            ax.set_xlabel(f"config.{key}")
            ax.set_ylabel("test top-1 (%)")
            ax.set_title(f"{method} ({bb}): accuracy vs {param}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            written.append(save_figure(fig, out_dir / f"sweep_{param}_{bb}_{method}.png"))
    return written


def _sweep_lines(group: pd.DataFrame, key: str) -> dict[str, pd.DataFrame]:
    """Per dataset (and per value of any other varied key): mean/std top-1 per swept value."""
    lines: dict[str, pd.DataFrame] = {}
    for ds, runs in group.groupby("dataset", sort=True):
        varied = differing_keys(runs.config)
        if key not in varied:
            continue
        others = [k for k in varied if k != key]
        flats = [flat_config(c) for c in runs.config]
        runs = runs.assign(
            x=[f.get(key) for f in flats],
            other=[json.dumps({k: f.get(k) for k in others}, default=str) for f in flats],
        )
        runs = runs[pd.to_numeric(runs.x, errors="coerce").notna()]
        for other, sub in runs.groupby("other", sort=True):
            pts = sub.groupby(pd.to_numeric(sub.x)).top1.agg(["mean", "std"]).sort_index()
            if len(pts) > 1:
                fixed = ", ".join(f"{k}={v}" for k, v in json.loads(other).items())
                lines[f"{ds} ({fixed})" if fixed else ds] = pts
    return lines


def plot_accuracy_vs_storage(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per backbone: each method's test top-1 per task against the bytes it stores per task."""
    written = []
    chosen, _ = choose_variants(frame)
    summary = summarize(chosen)
    for bb, group in summary.groupby("backbone", sort=True):
        group = group[group.task_state_bytes.notna()].copy()
        if group.empty:
            continue
        # a shared state (PackNet) serves every task: per task, owner indices / tasks + head
        tasks = group.groupby("method").dataset.transform("size")
        shared = group.method.isin(shared_state_methods())
        group.loc[shared, "task_state_bytes"] = (
            group.owner_index_bytes / tasks + group.classifier_bytes
        )[shared]
        group = group[group.task_state_bytes.notna()]
        fig, ax = plt.subplots(figsize=(6, 4))
        markers = dict(zip(sorted(group.dataset.unique()), "osD^v<>pPX*h", strict=False))
        for method, sub in group.groupby("method", sort=True):
            color = ax.plot([], [], label=method)[0].get_color()
            for _, cell in sub.iterrows():
                ax.errorbar(
                    cell.task_state_bytes / MB,
                    cell["mean"],
                    yerr=_zero_nan(cell["std"]),
                    marker=markers.get(cell.dataset, "o"),
                    color=color,
                    capsize=3,
                )
        for ds, marker in markers.items():
            ax.plot([], [], marker=marker, color="grey", ls="", label=ds)
        ax.set_xscale("log")
        ax.set_xlabel("stored per task (MB, log scale)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{bb}: accuracy vs storage per task")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        written.append(save_figure(fig, out_dir / f"accuracy_vs_storage_{bb}.png"))
    return written


def _zero_nan(x: float) -> float:
    return 0.0 if pd.isna(x) else float(x)


def write_figures(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Every figure the records support, as PNG files under ``out_dir``."""
    frame = records_frame(records)
    if frame.empty:
        return []
    out_dir = Path(out_dir)
    return [
        *plot_mask_off(frame, out_dir),
        *plot_sweeps(frame, out_dir),
        *plot_accuracy_vs_storage(frame, out_dir),
    ]
