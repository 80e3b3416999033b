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
    CUT_MARK,
    MB,
    Selection,
    choose_variants,
    differing_keys,
    flat_config,
    label_rows,
    records_frame,
    select_datasets,
    select_records,
    shared_state_methods,
    summarize,
)
from piggyback_lab.runs.wandb_summary import layer_order, mask_off_axes, save_figure

SWEEP_PARAMS = ("threshold", "lr")  # config.method.<param>
AXIS_NAMES = {"lr": "learning rate (lr)"}  # a swept parameter's axis label, beside its name
SWEEP_METRIC = "val_top1"  # a sweep chooses on validation: the test split stays unseen
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}


def readable(key: str) -> str:
    """A config key as an axis or legend reads it: ``method.threshold`` -> ``threshold``."""
    return key.removeprefix("config.").removeprefix("method.")


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
    """Validation top-1 against config.method.threshold / lr wherever runs vary that value
    (the value a sweep is chosen on; the test split is not plotted)."""
    written = []
    for param in SWEEP_PARAMS:
        key = f"method.{param}"
        for (bb, method), group in frame.groupby(["backbone", "method"], sort=True):
            lines = sweep_lines(group, key)
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
            ax.set_xlabel(AXIS_NAMES.get(param, readable(key)))
            ax.set_ylabel("validation top-1 (%)")
            ax.set_title(f"{method} ({bb}): validation top-1 vs {readable(key)}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, **LEGEND_OUTSIDE)
            written.append(save_figure(fig, out_dir / f"sweep_{param}_{bb}_{method}.png"))
    return written


def sweep_lines(group: pd.DataFrame, key: str) -> dict[str, pd.DataFrame]:
    """The plotted data of a sweep: per dataset (and per value of any other varied key),
    mean and std of validation top-1 (``SWEEP_METRIC``) per swept value; runs without a
    validation score are left out. A line of runs cut short is labelled with CUT_MARK."""
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
        runs = runs[pd.to_numeric(runs.x, errors="coerce").notna() & runs[SWEEP_METRIC].notna()]
        for other, sub in runs.groupby("other", sort=True):
            pts = sub.groupby(pd.to_numeric(sub.x))[SWEEP_METRIC].agg(["mean", "std"])
            if len(pts) > 1:
                fixed = ", ".join(f"{readable(k)}={v}" for k, v in json.loads(other).items())
                label = f"{ds} ({fixed})" if fixed else ds
                cut = "cut_short" in sub.columns and sub.cut_short.any()
                lines[f"{label} {CUT_MARK}" if cut else label] = pts.sort_index()
    return lines


def plot_accuracy_vs_storage(
    frame: pd.DataFrame, out_dir: Path, mix_budgets: bool = False
) -> list[Path]:
    """Per backbone: each table row's test top-1 per task against the bytes it stores per
    task (a method at several budgets: a point series per budget, labelled as its row)."""
    written = []
    chosen, _ = choose_variants(frame, mix_budgets=mix_budgets)
    summary = label_rows(summarize(chosen))
    for bb, group in summary.groupby("backbone", sort=True):
        group = group[group.task_state_bytes.notna()].copy()
        if group.empty:
            continue
        # a shared state (PackNet) serves every task: per task, owner indices / tasks + head
        tasks = group.groupby("row").dataset.transform("size")
        shared = group.method.isin(shared_state_methods())
        group.loc[shared, "task_state_bytes"] = (
            group.owner_index_bytes / tasks + group.classifier_bytes
        )[shared]
        group = group[group.task_state_bytes.notna()]
        fig, ax = plt.subplots(figsize=(6, 4))
        markers = dict(zip(sorted(group.dataset.unique()), "osD^v<>pPX*h", strict=False))
        for row, sub in group.groupby("row", sort=True):
            color = ax.plot([], [], label=row)[0].get_color()
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
        ax.legend(fontsize=7, ncol=2, **LEGEND_OUTSIDE)
        written.append(save_figure(fig, out_dir / f"accuracy_vs_storage_{bb}.png"))
    return written


def _zero_nan(x: float) -> float:
    return 0.0 if pd.isna(x) else float(x)


def write_figures(
    records: list[dict[str, Any]], out_dir: str | Path, selection: Selection | None = None
) -> list[Path]:
    """Every figure the selected records support (by default whole runs only: see
    ``Selection``), as PNG files under ``out_dir``."""
    sel = selection or Selection()
    kept, _ = select_records(records, sel)
    frame = select_datasets(records_frame(kept), sel)
    if frame.empty:
        return []
    out_dir = Path(out_dir)
    return [
        *plot_mask_off(frame, out_dir),
        *plot_sweeps(frame, out_dir),
        *plot_accuracy_vs_storage(frame, out_dir, sel.mix_budgets),
    ]
