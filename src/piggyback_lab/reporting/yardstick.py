"""Yardstick tables: VTAB-1k and FGVC on one backbone, in the shape today's PEFT papers print.

Per backbone and benchmark with final runs: a row per method (and budget), a column per task,
the group means and both averaging conventions (V-PETL Bench's plain mean over the 19 tasks;
VPT, NOAH, FacT and Adapter+'s mean of the three group means), trainable parameters and a
task's stored bytes, with a mask method's entropy bound beside them. Only ``protocol=final``
runs are cells: the tuning protocol's search runs (``clean``) are scored on validation.
V-PETL Bench's published rows stand under the table of the backbone it used, averaged both
ways from its own per-task numbers.

Budgets, runs cut short, sweeps and the Selection filters work as in the paper tables
(reporting/tables.py, whose helpers this module calls).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from piggyback_lab.methods import method_names
from piggyback_lab.reporting.tables import (
    CELL_KEYS,
    MB,
    MISSING,
    ROW_KEYS,
    Selection,
    _budget_lines,
    _fmt,
    _num,
    _ordered,
    _ours_text,
    choose_variants,
    label_rows,
    records_frame,
    select_datasets,
    select_records,
    summarize,
    table_rows,
    tuning_texts,
    values_text,
)
from piggyback_lab.utils.atomic import atomic_write_bytes

Groups = tuple[tuple[str, tuple[str, ...]], ...]
VTAB_GROUPS: Groups = (
    ("Natural", ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn",
                 "sun397")),
    ("Specialized", ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy")),
    ("Structured", ("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc",
                    "dsprites_ori", "smallnorb_azi", "smallnorb_ele")),
)  # fmt: skip
FGVC_GROUPS: Groups = (("FGVC", ("cub", "nabirds", "flowers", "dogs", "cars")),)
FINAL = "final"  # the protocol of a table cell's runs: trained on train+val, tested once
# Published backbone names -> the name our records store for the same weights.
PUBLISHED_BACKBONES = {"vit_base_patch16_224_in21k": "vit_base_patch16_224"}
PARAMS_METRIC = "trainable_params_m"  # published trainable parameters, in millions
MEAN_TOLERANCE = 0.01  # a printed mean this far from the one computed from its rows is noted
CODER_OVERHEAD = 1.02  # src.compress codes masks at about this multiple of the bound
# Per-layer mask sizes: no record writes them yet; a record that has them gets the per-layer
# bound, any other the looser bound from its overall density.
LAYER_SIZES_KEY = "mask_sizes"
GROUP_MEANS = "mean of group means"
OURS, PUBLISHED = "ours", "published"
CSV_COLUMNS = [
    "backbone", "benchmark", "kind", "row", "method", "task", "group", "n", "mean", "std",
    "missing", "seeds", "epochs", "lr", "lr_schedule", "warmup_epochs", "space", "chosen",
    "trainable_params", "task_state_bytes", "mask_bound_bytes", "bound_kind", "cut_short",
    "cut_reason", "source_id", "source",
]  # fmt: skip


@dataclass(frozen=True)
class Benchmark:
    """A yardstick benchmark: record datasets ``<name>_<task>``, published ``<name>/<task>``."""

    name: str
    title: str
    groups: Groups
    printed_mean: str  # the published dataset of the source's own mean (``vtab/mean19``)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for _, tasks in self.groups for t in tasks)

    @property
    def mean_label(self) -> str:
        return f"mean ({len(self.tasks)} tasks)"

    def task_of(self, dataset: Any) -> str | None:
        """The task a record's dataset names (``vtab_cifar`` -> ``cifar``), None if not ours."""
        task = str(dataset).removeprefix(f"{self.name}_")
        return task if task in self.tasks and str(dataset) != task else None

    def group_of(self, task: str) -> str:
        return next(g for g, tasks in self.groups if task in tasks)


VTAB = Benchmark("vtab", "VTAB-1k", VTAB_GROUPS, "mean19")
FGVC = Benchmark("fgvc", "FGVC", FGVC_GROUPS, "mean")
BENCHMARKS = (VTAB, FGVC)


# --- numbers -------------------------------------------------------------------------------
def binary_entropy(p: float) -> float:
    """H(p) in bits: what an ideal coder spends per mask bit whose density is p."""
    if not 0.0 < p < 1.0:
        return 0.0
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


def mask_entropy_bound(record: Mapping[str, Any]) -> tuple[float, str]:
    """A mask task's stored bytes with its masks at their entropy (the 1 bit per weight of
    the file replaced by n_l * H(p_l) per layer), and which bound: "per-layer" or, without
    per-layer sizes, "overall-density" (masked_weights * H(overall), never smaller since H is
    concave). NaN and "" for a record without masks."""
    masked = _num(record.get("masked_weights"))
    density = record.get("mask_density") or {}
    raw = _num(record.get("task_state_bytes"))
    if not density or not masked > 0:
        return float("nan"), ""
    sizes = record.get(LAYER_SIZES_KEY) or {}
    if set(density) <= set(sizes):
        bits, kind = sum(sizes[k] * binary_entropy(p) for k, p in density.items()), "per-layer"
    else:
        overall = _num(record.get("mask_density_overall"))
        if math.isnan(overall):
            return float("nan"), ""
        bits, kind = masked * binary_entropy(overall), "overall-density"
    return bits / 8 + (raw - masked / 8), kind


def averages(bench: Benchmark, means: Mapping[str, float]) -> dict[str, tuple[float, int]]:
    """Name -> (value, tasks missing): each group's mean (when there are several groups),
    the plain mean over all tasks and the mean of the group means. A value needs every task
    of it (NaN otherwise): a mean over fewer tasks is another number, not a partial one."""

    def mean_of(tasks: Iterable[str]) -> tuple[float, int]:
        values = [means.get(t, float("nan")) for t in tasks]
        missing = sum(math.isnan(v) for v in values)
        return (float("nan") if missing else sum(values) / len(values)), missing

    out: dict[str, tuple[float, int]] = {}
    per_group = {g: mean_of(tasks) for g, tasks in bench.groups}
    if len(bench.groups) > 1:
        out.update(per_group)
    out[bench.mean_label] = mean_of(bench.tasks)
    if len(bench.groups) > 1:
        group_means = [v for v, _ in per_group.values()]
        missing = out[bench.mean_label][1]
        value = float("nan") if missing else sum(group_means) / len(group_means)
        out[GROUP_MEANS] = (value, missing)
    return out


def average_text(value: float, missing: int) -> str:
    return f"{MISSING} ({missing} missing)" if missing else _fmt(value)


# --- our runs ------------------------------------------------------------------------------
def run_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a yardstick cell needs of a record beyond tables.py's frame: trainable
    parameters, the entropy bound, the schedule and the tuning."""
    config = record.get("config") or {}
    method = config.get("method") or {}
    bound, kind = mask_entropy_bound(record)
    return {
        "trainable_params": _num(record.get("trainable_params")),
        "mask_bound_bytes": bound,
        "bound_kind": kind,
        "lr_schedule": str(method.get("lr_schedule", "step")),  # runs/records.py's default
        "warmup_epochs": _num(method.get("warmup_epochs", 0)),
        **tuning_texts(config.get("tuning")),
    }


@dataclass
class FinalRuns:
    """A benchmark's chosen final runs, one row per run, and what was left out."""

    frame: pd.DataFrame
    config_notes: list[str]
    not_final: int  # search runs (protocol=clean) and other protocols: not cells
    cut: int  # runs cut short, left out (0 with include_cut_short)
    regrouped: list[str]  # datasets whose records name another group than the benchmark's


def final_runs(records: list[dict[str, Any]], bench: Benchmark, sel: Selection) -> FinalRuns:
    """The benchmark's final runs through the paper tables' filters (selection, cut short,
    one configuration per cell), with ``run_facts`` and the task of each."""
    kept, cut = select_records(records, sel)
    final = [r for r in kept if bench.task_of(r.get("dataset")) and r.get("protocol") == FINAL]
    wanted = [r for r in records if sel.wants(r.get("backbone"), r.get("method"))]
    mine = [r for r in wanted if bench.task_of(r.get("dataset"))]
    frame = select_datasets(records_frame(final), sel)
    frame, notes = choose_variants(frame, mix_budgets=sel.mix_budgets)
    by_id = {r.get("run_id"): r for r in final}
    facts = pd.DataFrame([run_facts(by_id.get(i) or {}) for i in frame.run_id], index=frame.index)
    frame = pd.concat([frame, facts], axis=1).assign(task=frame.dataset.map(bench.task_of))
    return FinalRuns(
        frame=frame,
        config_notes=notes,
        not_final=sum(1 for r in mine if r.get("protocol") != FINAL),
        cut=sum(1 for r in cut if bench.task_of(r.get("dataset")) and r.get("protocol") == FINAL),
        regrouped=regrouped(final, bench),
    )


def regrouped(records: list[dict[str, Any]], bench: Benchmark) -> list[str]:
    """Datasets whose records' ``config.dataset.group`` is not the benchmark's group of the
    task (the table groups by the benchmark's canonical lists)."""
    out = set()
    for r in records:
        task = bench.task_of(r.get("dataset"))
        group = ((r.get("config") or {}).get("dataset") or {}).get("group")
        if task and group and str(group).lower() != bench.group_of(task).lower():
            out.add(f"{r['dataset']} ({group})")
    return sorted(out)


def _distinct(values: pd.Series) -> str:
    return " / ".join(dict.fromkeys(str(v) for v in values if isinstance(v, str) and v))


def our_cells(frame: pd.DataFrame, bench: Benchmark) -> pd.DataFrame:
    """One row per cell (row label, task): tables.py's summary (n, mean ± std, epochs, lr,
    bytes) with the runs' facts, averaged over seeds."""
    summary = label_rows(summarize(frame))
    if summary.empty:
        return summary.reindex(columns=[*summary.columns, "task"])
    facts = frame.groupby([*CELL_KEYS, *ROW_KEYS], sort=False, dropna=False).agg(
        trainable_params=("trainable_params", "mean"),
        mask_bound_bytes=("mask_bound_bytes", "mean"),
        bound_kind=("bound_kind", _distinct),
        lr_schedule=("lr_schedule", _distinct),
        warmup_epochs=("warmup_epochs", values_text),
        space=("space", _distinct),
        search_seeds=("search_seeds", _distinct),
        chosen=("chosen", _distinct),
        seeds=("seed", values_text),
    )
    cells = summary.merge(facts.reset_index(), on=[*CELL_KEYS, *ROW_KEYS], how="left")
    cells["task"] = cells.dataset.map(bench.task_of)
    cells["group"] = cells.task.map(bench.group_of)
    return cells.assign(kind=OURS)


# --- published rows ------------------------------------------------------------------------
def published_cells(
    published: pd.DataFrame, backbone: str, bench: Benchmark, sel: Selection
) -> tuple[pd.DataFrame, list[str]]:
    """The published per-task rows for this backbone (published backbone names mapped to
    ours) as cells, and a line per printed mean checked against the one computed here."""
    names = published.backbone.map(lambda b: PUBLISHED_BACKBONES.get(b, b))
    pub = published[(names == backbone) & published.dataset.str.startswith(f"{bench.name}/")]
    pub = pub[[sel.wants(method=m) for m in pub.method]]
    rows: list[dict[str, Any]] = []
    checks: list[tuple[str, float, float]] = []
    for method, group in pub.groupby("method", sort=False):
        values = dict(zip(group.dataset.str.split("/").str[1], group.published, strict=True))
        params = group[group.metric == PARAMS_METRIC].published
        label = f"{method} [{group.source_id.iloc[0]}]"
        base = {"kind": PUBLISHED, "row": label, "method": method, "n": 0}
        base["trainable_params"] = params.iloc[0] * 1e6 if len(params) else float("nan")
        base |= {"source_id": group.source_id.iloc[0], "source": group.source.iloc[0]}
        rows += [
            {**base, "task": t, "group": bench.group_of(t), "mean": values[t]}
            for t in bench.tasks
            if t in values
        ]
        if bench.printed_mean in values:
            computed = averages(bench, values)[bench.mean_label][0]
            checks.append((label, values[bench.printed_mean], computed))
    return pd.DataFrame(rows), mean_check_lines(bench, checks)


def mean_check_lines(bench: Benchmark, checks: list[tuple[str, float, float]]) -> list[str]:
    """Whether each source's printed mean is the plain mean of its task rows."""
    if not checks:
        return []
    off = [(r, p, c) for r, p, c in checks if math.isnan(c) or abs(p - c) > MEAN_TOLERANCE]
    lines = [
        f"Check: the published {bench.mean_label} printed by the source ({bench.printed_mean}) "
        f"equals the mean computed here from its task rows within {MEAN_TOLERANCE} for "
        f"{len(checks) - len(off)} of {len(checks)} rows."
    ]
    lines += [
        f"Disagreement: {r} prints {p:g}, its task rows give {_fmt(c, '.4f')}." for r, p, c in off
    ]
    return lines


# --- one table -----------------------------------------------------------------------------
@dataclass
class YardstickTable:
    """One backbone's table of one benchmark; ``cells`` has one row per (row, task)."""

    backbone: str
    bench: Benchmark
    cells: pd.DataFrame  # ours (kind "ours") then the published rows (kind "published")
    rows: list[tuple[str, str]]  # (label, method) of our rows, in order
    config_notes: list[str] = field(default_factory=list)
    mean_checks: list[str] = field(default_factory=list)
    not_final: int = 0
    cut: int = 0
    regrouped: list[str] = field(default_factory=list)
    mix_budgets: bool = False

    @property
    def ours(self) -> pd.DataFrame:
        return self.cells[self.cells.kind == OURS]

    @property
    def published(self) -> pd.DataFrame:
        return self.cells[self.cells.kind == PUBLISHED]


def build_yardstick_tables(
    records: list[dict[str, Any]], published: pd.DataFrame, selection: Selection | None = None
) -> list[YardstickTable]:
    """A table per benchmark and backbone with final runs (``published``: load_published's
    frame with ``include_yardstick``)."""
    sel = selection or Selection()
    tables = []
    for bench in BENCHMARKS:
        runs = final_runs(records, bench, sel)
        cells = our_cells(runs.frame, bench)
        for backbone in sorted(set(cells.backbone)):
            mine = cells[cells.backbone == backbone]
            methods = _ordered(method_names(), sorted(mine.method.unique()))
            pub, checks = published_cells(published, backbone, bench, sel)
            tables.append(
                YardstickTable(
                    backbone=backbone,
                    bench=bench,
                    cells=pd.concat([mine, pub], ignore_index=True).assign(backbone=backbone),
                    rows=table_rows(methods, mine, only_run=True),
                    config_notes=[n for n in runs.config_notes if n.startswith(f"{backbone} ")],
                    mean_checks=checks,
                    not_final=runs.not_final,
                    cut=runs.cut,
                    regrouped=runs.regrouped,
                    mix_budgets=sel.mix_budgets,
                )
            )
    return tables


# --- rendering -----------------------------------------------------------------------------
STORAGE_COLUMNS = ("trainable (M)", "stored (MB/task)", "mask entropy bound (MB/task)")


def row_text(bench: Benchmark, label: str, cells: pd.DataFrame) -> dict[str, str]:
    """One table row: per task our cell (mean ± std, n) or the published value, the
    averages, trainable parameters and bytes per task (means over the row's tasks)."""
    ours = (cells.kind == OURS).all()
    row = {"method": label, "epochs": values_text(cells.epochs.dropna()) or MISSING}
    by_task = {t: c for t, c in zip(cells.task, cells.itertuples(index=False), strict=True)}
    for task in bench.tasks:
        cell = by_task.get(task)
        if cell is None:
            row[task] = MISSING
        else:
            row[task] = _ours_text(pd.Series(cell._asdict())) if ours else format(cell.mean, "g")
    means = dict(zip(cells.task, cells["mean"], strict=True))
    row |= {name: average_text(*v) for name, v in averages(bench, means).items()}
    sizes = (
        cells.trainable_params.mean() / 1e6,
        cells.task_state_bytes.mean() / MB,
        cells.mask_bound_bytes.mean() / MB,
    )
    storage = zip(STORAGE_COLUMNS, sizes, strict=True)
    return row | {name: _fmt(size, ".3f") for name, size in storage}


def display_frame(table: YardstickTable) -> pd.DataFrame:
    """The table as strings: our rows, then the published ones."""
    labels = [label for label, _ in table.rows] + list(dict.fromkeys(table.published.row))
    return pd.DataFrame(
        [row_text(table.bench, label, table.cells[table.cells.row == label]) for label in labels]
    )


def tuning_frame(table: YardstickTable) -> pd.DataFrame:
    """Per our row and task, the hyper-parameters the tuning chose for its final runs."""
    rows = []
    for label, _ in table.rows:
        cells = table.ours[table.ours.row == label]
        row = {"method": label}
        for task in table.bench.tasks:
            cell = cells[cells.task == task]
            if not len(cell):
                row[task] = MISSING
            else:
                row[task] = cell.chosen.iloc[0] or f"untuned (lr={cell.lr.iloc[0] or '?'})"
        rows.append(row)
    return pd.DataFrame(rows)


def caption_lines(table: YardstickTable) -> list[str]:
    """What the table shows and how it was run: protocol, schedule, tuning, seeds, means."""
    ours, bench = table.ours, table.bench
    left = f"{table.not_final} search or other-protocol runs left out"
    left += f", {table.cut} cut short" if table.cut else ""
    seeds = ", ".join(f"{r}: {s}" for r, s in _per_row(ours, "seeds").items())
    lines = [
        f"Backbone {table.backbone}; {bench.title}. Ours: final runs only (protocol=final: "
        "trained on train+val, the last epoch tested once on test); the tuning protocol's "
        f"search runs (protocol=clean, scored on validation) are not cells ({left}).",
        "A task cell: test top-1 (%), mean ± sample std over seeds (n runs). Seeds per "
        f"cell: {seeds}.",
        "Training: " + "; ".join(_training_text(table, label) for label, _ in table.rows) + ".",
        "Tuning: " + "; ".join(_tuning_text(table, label) for label, _ in table.rows) + ".",
    ]
    if len(bench.groups) > 1:
        lines.append(
            f"Averages over the task means: {', '.join(g for g, _ in bench.groups)} (group "
            f"means); {bench.mean_label} (V-PETL Bench's convention); {GROUP_MEANS} (VPT, "
            "NOAH, FacT, Adapter+'s convention). Each needs every task of it, else "
            f"{MISSING} with the number of tasks missing."
        )
    else:
        lines.append(
            f"{bench.mean_label}: the mean of the task means; it needs every task, else "
            f"{MISSING} with the number missing."
        )
    lines += _storage_lines(table)
    if len(table.published):
        lines.append(
            "Published rows (below ours, labelled with their source) follow another protocol "
            "(see the notes under the table): not a like-for-like comparison."
        )
    return lines


def _per_row(cells: pd.DataFrame, column: str) -> dict[str, str]:
    """Per row, the distinct values of a column over its cells (``a; b``)."""
    return {
        r: "; ".join(dict.fromkeys(str(v) for v in g[column]))
        for r, g in cells.groupby("row", sort=False)
    }


def _training_text(table: YardstickTable, label: str) -> str:
    cells = table.ours[table.ours.row == label]
    schedule = _distinct(cells.lr_schedule) or "?"
    warmup = values_text(cells.warmup_epochs)
    warm = f", {warmup} warm-up epochs" if schedule == "cosine" and warmup else ""
    epochs = values_text(cells.epochs) or "?"
    return f"{label}: {epochs} epochs, {schedule} lr schedule{warm}"


def _tuning_text(table: YardstickTable, label: str) -> str:
    cells = table.ours[table.ours.row == label]
    tuned = cells[cells.chosen.fillna("").ne("")]
    if tuned.empty:
        return f"{label}: not tuned (lr {values_text(cells.lr) or '?'} as configured)"
    seeds = _distinct(tuned.search_seeds) or "?"
    untuned = len(cells) - len(tuned)
    also = f"; {untuned} tasks untuned" if untuned else ""
    return (
        f"{label}: {_distinct(tuned.space)} (search seeds {seeds}), chosen per task in the "
        f"table below{also}"
    )


def _storage_lines(table: YardstickTable) -> list[str]:
    kinds = set(table.ours.bound_kind.dropna()) - {""}
    lines = [
        "trainable (M): the records' trainable_params / 1e6; stored (MB/task): the task "
        "file's bytes (task_state_bytes); both means over the row's tasks."
    ]
    if kinds:
        lines.append(
            "mask entropy bound (MB/task): an entropy bound, not a file: the masks at "
            "n_l * H(p_l) / 8 bytes per layer (H: binary entropy of the layer's density) plus "
            "the task's non-mask bytes (stored − masked_weights / 8); src.compress codes masks "
            f"at about {CODER_OVERHEAD}x the bound."
        )
    if "overall-density" in kinds:
        lines.append(
            "overall-density bound: the records lack per-layer mask sizes, so the masks count "
            "masked_weights * H(overall density) / 8 bytes, never below the per-layer bound "
            "(H is concave)."
        )
    return lines


def footnotes(table: YardstickTable) -> list[str]:
    """Under the table: the published rows' sources and protocol, the printed-mean check,
    sweep choices and budget differences."""
    lines = []
    pub = table.published.drop_duplicates("source_id")
    for sid, source in zip(pub.source_id, pub.source, strict=True):
        lines.append(f"[{sid}] {source}.")
    if len(pub):
        lines.append(
            "Another protocol: V-PETL Bench (ViT-B/16 on ImageNet-21k, backbone "
            "vit_base_patch16_224_in21k in its table); its released code runs one seed with "
            "hyper-parameters set per task in its scripts and reports the best test top-1 "
            "over the evaluated epochs (for some methods, e.g. SSF and GPS, it lacks the "
            "recipe behind the number). Its averages here are computed from its per-task "
            "rows; its trainable (M) is its own count (trainable_params_m)."
        )
    lines += table.mean_checks
    if table.regrouped:
        lines.append(
            f"Records name another group for {', '.join(table.regrouped)}; the table groups "
            f"by {table.bench.title}'s own lists."
        )
    lines += [f"Sweep: {n}" for n in table.config_notes]
    budget = SimpleNamespace(cells=table.ours, mix_budgets=table.mix_budgets)
    return lines + _budget_lines(budget)  # type: ignore[arg-type]


def to_markdown(table: YardstickTable) -> str:
    caption = "\n".join(f"- {line}" for line in caption_lines(table))
    body = display_frame(table).to_markdown(index=False, disable_numparse=True)
    tuning = tuning_frame(table).to_markdown(index=False, disable_numparse=True)
    notes = "\n".join(f"- {line}" for line in footnotes(table))
    return (
        f"### {table.bench.title} on {table.backbone}\n\n{caption}\n\n{body}\n\n{notes}\n\n"
        "Chosen per cell by the tuning (untuned: a final run without a tuning record):\n\n"
        f"{tuning}\n"
    )


def to_csv(table: YardstickTable) -> str:
    """Every number: a row per cell (ours and published), then a row per average."""
    rows = []
    for label in dict.fromkeys(table.cells.row):
        cells = table.cells[table.cells.row == label]
        means = dict(zip(cells.task, cells["mean"], strict=True))
        first = cells.iloc[0]
        for name, (value, missing) in averages(table.bench, means).items():
            rows.append(
                {"kind": first.kind, "row": label, "method": first.method, "task": name,
                 "group": "average", "mean": value, "missing": missing,
                 "source_id": first.get("source_id"), "source": first.get("source")}
            )  # fmt: skip
    frame = pd.concat([table.cells, pd.DataFrame(rows)], ignore_index=True)
    frame = frame.assign(backbone=table.backbone, benchmark=table.bench.name)
    return frame.reindex(columns=CSV_COLUMNS).to_csv(index=False)


def write_yardstick_tables(tables: list[YardstickTable], out_dir: str | Path) -> list[Path]:
    """``<bench>_<backbone>.md`` and ``.csv`` per table under ``out_dir``, written atomically."""
    written = []
    for table in tables:
        for suffix, render in ((".md", to_markdown), (".csv", to_csv)):
            path = Path(out_dir) / f"{table.bench.name}_{table.backbone}{suffix}"
            atomic_write_bytes(path, render(table).encode())
            written.append(path)
    return written
