"""Paper-shaped result tables: our runs (mean ± std over seeds) beside the published numbers.

One table per backbone: rows are methods, columns are datasets; each of our cells sits next to
every published value for it (all sources, never one silently picked) and the difference.
Storage for all tasks and bits per weight per task come from the records' task state sizes.

Every row states its budget (``method.epochs``) and learning rate (``method.lr``); a method
run at several budgets has a row per budget unless ``Selection.mix_budgets`` says otherwise.
Runs cut short (``trainer.limit_*_batches`` below 1.0, ``debug=smoke``) are left out unless
``Selection.include_cut_short``, and then marked with a dagger.
"""

from __future__ import annotations

import io
import json
import math
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from piggyback_lab.methods import method_named, method_names
from piggyback_lab.models import backbone_facts
from piggyback_lab.runs.records import NON_SEMANTIC_KEYS, run_id
from piggyback_lab.utils.atomic import atomic_write_bytes
from piggyback_lab.utils.errors import UserError


def shared_state_methods() -> frozenset[str]:
    """Methods whose stored state is one network shared by the whole task sequence (counted
    once; it holds the trunk, the per-weight owner indices and every task's classifier)."""
    return frozenset(m for m in method_names() if method_named(m).shared_network)


# Published metric -> our comparable number (top-1 accuracy in percent).
ACCURACY_METRICS = {"top1_acc": lambda v: v, "top1_err": lambda v: round(100.0 - v, 6)}
PUBLISHED_COLUMNS = ("table", "backbone", "method", "dataset", "metric", "value", "source", "note")
REQUIRED_RECORD_KEYS = ("backbone", "method", "dataset", "top1")
CELL_KEYS = ["backbone", "method", "dataset"]
ROW_KEYS = ["budget", "cut_short"]  # a row: one method at one budget, whole or cut short
SUMMARY_COLUMNS = [
    *CELL_KEYS, *ROW_KEYS, "epochs", "lr", "cut_reason", "n", "mean", "std", "task_state_bytes",
    "masked_weights", "owner_index_bytes", "classifier_bytes", "protocol", "split",
]  # fmt: skip
CELL_COLUMNS = [
    *CELL_KEYS, "row", "epochs", "lr", "cut_short", "cut_reason", "n", "mean", "std", "protocol",
    "split", "task_state_bytes", "published", "published_metric", "published_value",
    "source_id", "source", "note", "diff",
]  # fmt: skip
STORAGE_METRIC = "storage_mb"  # a published storage for all of a method's tasks, in MB
PAPER_DATASETS = ("imagenet", "cub", "cars", "flowers", "wikiart", "sketch")  # column order
MISSING = "—"
MB = 1e6
CUT_MARK = "†"
DECATHLON_SCORES = ("score", "score_val")
# The run-length limits a whole run leaves at 1.0 (a float: an int counts batches)
LIMIT_KEYS = (
    "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.limit_test_batches",
    "method.limit_train_batches",
)  # fmt: skip
# Benchmarks whose records have tables of their own (reporting/yardstick.py: per task, group
# and both averaging conventions), kept out of the per-backbone tables.
OWN_TABLES = ("vtab_", "fgvc_")
SMOKE_RESULTS = ("smoke", "results")  # conf/debug/smoke.yaml: paths.results_dir's last parts


# --- what a table shows ---------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """Filters (empty: everything) and what a table lets in beside whole runs."""

    backbones: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    include_cut_short: bool = False  # runs cut short shown, marked CUT_MARK
    mix_budgets: bool = False  # a method's row may hold cells of different budgets
    only_run: bool = False  # no never-run rows, columns, tables or "not run yet" list

    def wants(self, backbone: Any = None, method: Any = None, dataset: Any = None) -> bool:
        """Whether the filters keep these names (None: not filtered on)."""
        pairs = ((self.backbones, backbone), (self.methods, method), (self.datasets, dataset))
        return all(not chosen or value is None or value in chosen for chosen, value in pairs)


def cut_short(record: dict[str, Any]) -> list[str]:
    """Why a record's run was cut short (empty: a whole run): a run-length limit below a
    whole epoch (``LIMIT_KEYS``; validation off under protocol=final is whole), or a smoke
    run (``debug=smoke`` writes under outputs/smoke/results)."""
    config = record.get("config") or {}
    why = []
    for key in LIMIT_KEYS:
        group, name = key.split(".")
        value = (config.get(group) or {}).get(name)
        if value is None or (isinstance(value, float) and value == 1.0):
            continue
        if name == "limit_val_batches" and value == 0 and config.get("protocol") == "final":
            continue
        why.append(f"{key}={value}")
    results_dir = (config.get("paths") or {}).get("results_dir")
    if results_dir and Path(str(results_dir)).parts[-2:] == SMOKE_RESULTS:
        why.append("debug=smoke")
    return why


def budget(record: dict[str, Any]) -> float:
    """A record's training budget in epochs: ``config.method.epochs`` (the record's
    ``epochs`` for a config without it), NaN when neither is recorded."""
    method = (record.get("config") or {}).get("method") or {}
    return _num(method.get("epochs", record.get("epochs")))


def tuning_search_run(record: dict[str, Any]) -> bool:
    """A run the tuning protocol scored on validation to choose among candidates: not a
    result (its final runs are), so no table cell holds it."""
    tuning = (record.get("config") or {}).get("tuning") or {}
    return isinstance(tuning, dict) and tuning.get("role") == "search"


def select_records(
    records: list[dict[str, Any]], selection: Selection
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records of the selected backbones and methods, and the cut-short ones left out
    (none with ``include_cut_short``); a tuning search's runs are never cells. Datasets
    are selected on the frame (a Decathlon score needs every domain's records)."""
    chosen = [
        r
        for r in records
        if selection.wants(r.get("backbone"), r.get("method")) and not tuning_search_run(r)
    ]
    if selection.include_cut_short:
        return chosen, []
    return [r for r in chosen if not cut_short(r)], [r for r in chosen if cut_short(r)]


def select_datasets(frame: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    return frame[frame.dataset.isin(selection.datasets)] if selection.datasets else frame


def check_selection(
    selection: Selection, records: list[dict[str, Any]], published: pd.DataFrame
) -> None:
    """A filter naming nothing any record or published number has is a typo: refuse it."""
    datasets = {dataset_column(r) for r in records if r.get("dataset")}
    known = {
        "--backbone": ({r.get("backbone") for r in records} | set(published.backbone)),
        "--method": ({r.get("method") for r in records} | set(published.method)),
        "--dataset": datasets | set(published.dataset) | set(DECATHLON_SCORES),
    }
    known["--method"] |= set(method_names())
    chosen = {
        "--backbone": selection.backbones,
        "--method": selection.methods,
        "--dataset": selection.datasets,
    }
    for flag, names in known.items():
        unknown = sorted(set(chosen[flag]) - names)
        if unknown:
            raise UserError(
                f"{flag} {', '.join(unknown)}: no record or published number has it; known: "
                + ", ".join(sorted(str(n) for n in names if n))
            )


# --- inputs --------------------------------------------------------------------------------
# Published per-task rows of the yardstick benchmarks (datasets ``vtab/<task>``, ``fgvc/<name>``):
# reporting/yardstick.py shows them; the paper tables leave them out.
YARDSTICK_PREFIXES = ("vtab/", "fgvc/")


def load_published(path: str | Path, include_yardstick: bool = False) -> pd.DataFrame:
    """The published numbers, with a comparable ``published`` value and a letter per source
    (the yardstick's per-task rows only with ``include_yardstick``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"published numbers {path} not found; restore results/paper/published.csv "
            "(git checkout) or pass --paper <csv>"
        )
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks the columns {missing}; expected {list(PUBLISHED_COLUMNS)}")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    bad = df.index[df["value"].isna()].tolist()
    if bad:
        raise UserError(f"{path}: rows {[i + 2 for i in bad]} have a non-numeric value; fix them")
    if not include_yardstick:
        df = df[~df.dataset.str.startswith(YARDSTICK_PREFIXES)].reset_index(drop=True)
    df["published"] = [
        ACCURACY_METRICS.get(m, lambda v: v)(v) for m, v in zip(df.metric, df.value, strict=True)
    ]
    ids = {s: _label(i) for i, s in enumerate(dict.fromkeys(df.source))}
    df["source_id"] = df.source.map(ids)
    return df


def _label(i: int) -> str:
    return string.ascii_lowercase[i] if i < 26 else f"s{i}"


# Where a dataset lies on the machine that ran it: not what a run computed, so two runs that
# differ only there are one configuration in a table (and a note never prints a path).
DATA_LOCATION_KEYS = ("root", "data_dir", "prepare_hint")


def seedless(config: dict[str, Any]) -> dict[str, Any]:
    """The config with its seed fixed, the datamodule's copy of it (``dataset.seed``) too,
    without where its data lies (``DATA_LOCATION_KEYS``), and its base weights named by
    their tensors' fingerprint where recorded, not by the file's path (as run ids are)."""
    dataset = config.get("dataset")
    if isinstance(dataset, dict):
        kept = {k: v for k, v in dataset.items() if k not in DATA_LOCATION_KEYS}
        config = {**config, "dataset": {**kept, "seed": 0} if "seed" in dataset else kept}
    backbone, fingerprint = config.get("backbone"), config.get("weights_fingerprint")
    if isinstance(backbone, dict) and fingerprint:
        config = {**config, "backbone": {**backbone, "weights": fingerprint}}
    return {**config, "seed": 0}


def variant_key(config: dict[str, Any]) -> str:
    """Runs that differ only in their seed share this key (the run id with the seed fixed)."""
    if not config:
        return ""
    try:
        return run_id(seedless(config))
    except (KeyError, TypeError):
        raise UserError(
            "a record's config lacks dataset/backbone/method names; re-run it or delete it"
        ) from None


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys of the config that change what a run computes (seed excluded)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", {k: v for k, v in seedless(config).items() if k not in (*NON_SEMANTIC_KEYS, "seed")})
    out.pop("trainer.enable_progress_bar", None)
    return out


def differing_keys(configs: Iterable[dict[str, Any]]) -> list[str]:
    flats = [flat_config(c or {}) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run record with the fields the tables and figures use."""
    rows = []
    seen: dict[tuple[Any, Any], str] = {}
    for r in records:
        if r.get("eval_split") == "none":  # protocol=final without test labels: nothing scored
            continue
        where = r.get("record_path", r.get("run_id"))
        missing = [k for k in REQUIRED_RECORD_KEYS if r.get(k) is None]
        if missing:
            raise UserError(f"record {where} lacks {missing}; re-run it (force=true) or delete it")
        top1 = r["top1"]
        if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not math.isfinite(top1):
            raise UserError(
                f"record {where}: top1 is {top1!r}, not a percentage; re-run it (force=true) "
                "or delete it"
            )
        key = (r.get("run_id"), r.get("source", "train"))
        if key[0] is not None and key in seen:  # a copy of a record counts once
            print(f"warning: {where} repeats run {key[0]} of {seen[key]}; counted once")
            continue
        seen[key] = str(where)
        rows.append(_record_row(r))
    columns = [*CELL_KEYS, "seed", "protocol", "split", "top1", "val_top1", "task_state_bytes"]
    columns += ["masked_weights", "owner_index_bytes", "classifier_bytes", "variant", "config"]
    columns += ["mask_density", "base", "epochs", "lr", "cut_short", "cut_reason", "run_id"]
    return pd.DataFrame(rows, columns=columns)


def _record_row(r: dict[str, Any]) -> dict[str, Any]:
    config = r.get("config") or {}
    why = cut_short(r)
    return {
        "backbone": r["backbone"],
        "method": r["method"],
        "dataset": dataset_column(r),
        "seed": r.get("seed"),
        "protocol": r.get("protocol"),
        "split": r.get("eval_split") or "test",
        "top1": float(r["top1"]),
        "val_top1": _num(r.get("val_top1")),
        "task_state_bytes": _num(r.get("task_state_bytes")),
        "masked_weights": _num(r.get("masked_weights")),
        "owner_index_bytes": _num(r.get("owner_index_bytes")),
        "classifier_bytes": _num(r.get("classifier_bytes")),
        "variant": variant_key(config),
        "config": config,
        "mask_density": r.get("mask_density") or {},
        "base": r.get("weights_fingerprint"),
        "epochs": budget(r),
        "lr": _num((config.get("method") or {}).get("lr")),
        "cut_short": bool(why),
        "cut_reason": ", ".join(why),
        "run_id": r.get("run_id"),
    }


def dataset_column(record: dict[str, Any]) -> str:
    """The published name of a record's dataset: a Decathlon domain, else the dataset name."""
    dataset = (record.get("config") or {}).get("dataset") or {}
    return str(dataset.get("domain") or record["dataset"])


def _num(value: Any) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if number else float("nan")


def values_text(values: Iterable[Any]) -> str:
    """Distinct finite numbers, ascending, as ``a / b`` (``30``, ``0.0001``; "" for none);
    a value already in that form is split into its numbers."""
    numbers: set[float] = set()
    for v in values:
        if isinstance(v, str):
            numbers |= {float(x) for x in v.split(" / ") if x}
        elif not pd.isna(_num(v)):
            numbers.add(float(v))
    return " / ".join(f"{v:g}" for v in sorted(numbers))


def with_budget(frame: pd.DataFrame, mix_budgets: bool = False) -> pd.DataFrame:
    """The frame with its row budget: each run's epochs, or one budget for all (NaN) when
    budgets may mix within a row."""
    if "budget" in frame.columns:
        return frame
    return frame.assign(budget=float("nan") if mix_budgets else frame.epochs)


def choose_variants(
    frame: pd.DataFrame, mix_budgets: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """Per cell and row (budget; whole or cut short), keep one configuration: of those with
    the most seeds, the one with the best mean validation top-1 (a configuration still
    missing seeds would otherwise win on a lucky one). A cell's runs at several budgets are
    rows apart unless ``mix_budgets``, when the budget is one more key that may differ.

    A cell with runs of several configurations (a sweep) is not averaged across them; the
    returned notes say which keys differed and which values the table shows.
    """
    frame = with_budget(frame, mix_budgets)
    if frame.empty:
        return frame, []
    kept, notes = [], []
    groups = frame.groupby([*CELL_KEYS, *ROW_KEYS], sort=False, dropna=False)
    for (bb, method, ds, epochs, cut), cell in groups:
        if cell.variant.nunique() == 1:
            kept.append(cell)
            continue
        stats = cell.groupby("variant", sort=False).agg(
            val=("val_top1", "mean"), n=("top1", "size")
        )
        best = stats.sort_values(["n", "val"], ascending=False, na_position="last").index[0]
        chosen = cell[cell.variant == best]
        kept.append(chosen)
        keys = differing_keys(cell.config)
        shown = flat_config(chosen.config.iloc[0])
        at = "" if pd.isna(epochs) else f" at {epochs:g} epochs"
        notes.append(
            f"{bb} {method} {ds}{at}{f' {CUT_MARK}' if _yes(cut) else ''}: "
            f"{cell.variant.nunique()} configurations differ in {', '.join(keys)}; shown: "
            f"{', '.join(f'{k}={shown.get(k)}' for k in keys)} "
            "(most seeds, then best mean validation top-1)"
        )
    return pd.concat(kept), notes


def decathlon_scores(records: list[dict[str, Any]], mix_budgets: bool = False) -> pd.DataFrame:
    """Decathlon score S over seeds per (backbone, method) and row, as cells of the summary.

    "score" is S on the labelled test sets (comparable with the published S), "score_val" S
    on the validation splits; a seed counts only when all ten domains were run at the
    row's budget.
    """
    from piggyback_lab.reporting.decathlon import score_records

    groups: dict[tuple[float | None, bool], list[dict[str, Any]]] = {}
    for r in records:
        epochs = None if mix_budgets or pd.isna(budget(r)) else budget(r)
        groups.setdefault((epochs, bool(cut_short(r))), []).append(r)
    rows = [
        {"backbone": r["backbone"], "method": r["method"], "dataset": name, "score": r[key],
         "protocol": r["protocol"], "split": split, "budget": epochs, "cut_short": cut}
        for (epochs, cut), group in groups.items()
        for r in score_records(group)
        for name, key, split in (("score", "score_test", "test"), ("score_val", "score_val", "val"))
        if r[key] is not None
    ]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    out = (
        pd.DataFrame(rows)
        .groupby([*CELL_KEYS, *ROW_KEYS], sort=False, dropna=False)
        .agg(
            n=("score", "size"),
            mean=("score", "mean"),
            std=("score", "std"),
            protocol=("protocol", _joined),
            split=("split", _joined),
        )
        .reset_index()
    )
    out["budget"] = pd.to_numeric(out.budget)
    out["epochs"] = out.budget.map(lambda b: values_text([b]))
    return out.reindex(columns=SUMMARY_COLUMNS)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count of top-1 over seeds per (backbone, method, dataset) and
    row (budget, whole or cut short), with the epochs and learning rates the runs used."""
    if frame.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    out = with_budget(frame).groupby([*CELL_KEYS, *ROW_KEYS], sort=False, dropna=False)
    out = out.agg(
        epochs=("epochs", values_text),
        lr=("lr", values_text),
        cut_reason=("cut_reason", _joined_reasons),
        n=("top1", "size"),
        mean=("top1", "mean"),
        std=("top1", "std"),
        task_state_bytes=("task_state_bytes", "mean"),
        masked_weights=("masked_weights", "max"),
        owner_index_bytes=("owner_index_bytes", "mean"),
        classifier_bytes=("classifier_bytes", "mean"),
        protocol=("protocol", _joined),
        split=("split", _joined),
    )
    return out.reset_index()[SUMMARY_COLUMNS]


def _joined_reasons(values: pd.Series) -> str:
    return ", ".join(dict.fromkeys(x for v in values if v for x in str(v).split(", ")))


def label_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with each cell's row label: the method, its budget when the method has
    rows at several budgets (``piggyback (30 ep)``), and CUT_MARK when cut short."""
    if summary.empty:
        return summary.assign(row=pd.Series(dtype=str))
    several = summary.groupby(["backbone", "method"], sort=False).budget.transform(
        lambda b: b.nunique(dropna=False) > 1
    )
    labels = [
        method
        + (f" ({'?' if pd.isna(epochs) else format(epochs, 'g')} ep)" if split else "")
        + (f" {CUT_MARK}" if _yes(cut) else "")
        for method, epochs, cut, split in zip(
            summary.method, summary.budget, summary.cut_short, several, strict=True
        )
    ]
    return summary.assign(row=labels)


def _yes(flag: Any) -> bool:
    """A boolean cell (NaN where a frame had none) is set."""
    return bool(pd.notna(flag) and flag)


def _joined(values: pd.Series) -> str:
    return ",".join(sorted({str(v) for v in values}))


# --- one table per backbone ---------------------------------------------------------------
@dataclass
class BackboneTable:
    """Everything one backbone's table shows; ``cells`` has one row per cell and source."""

    backbone: str
    methods: list[str]
    datasets: list[str]
    cells: pd.DataFrame
    storage: pd.DataFrame
    sources: dict[str, str]
    notes: dict[str, int] = field(default_factory=dict)  # note text -> footnote number
    config_notes: list[str] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)
    bases: dict[str, list[str]] = field(default_factory=dict)  # fingerprint -> its rows
    published_storage: pd.DataFrame | None = None  # storage_mb rows: method, value, source_id
    rows: list[tuple[str, str]] = field(default_factory=list)  # (label, method), in order
    mix_budgets: bool = False  # a row's cells may have run at different budgets
    tuned: list[str] = field(default_factory=list)  # what the tuning protocol chose

    @property
    def has_published(self) -> bool:
        return bool(self.cells.published.notna().any())


def _ordered(first: Iterable[str], *more: Iterable[str]) -> list[str]:
    out = list(dict.fromkeys(first))
    for group in more:
        out += [x for x in dict.fromkeys(group) if x not in out]
    return out


def storage_frame(backbone: str, summary: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """Storage for all run tasks (MB) and bits per weight per task, per row (a summary
    without row labels: per method).

    Per-task methods: the base network plus every task file (finetune's task file is a whole
    network). Shared-state methods (PackNet): the shared state once, network included; their
    bits per task are the owner indices spread over the tasks plus one classifier.
    Bits per weight per task divide a task's stored bits by the trunk's prunable weights.
    """
    facts = backbone_facts(backbone)
    run_trunk = summary.masked_weights[summary.masked_weights > 0]
    trunk = run_trunk.max() if len(run_trunk) else (facts.trunk_weights if facts else None)
    base = facts.total_bytes if facts else float("nan")
    nan = float("nan")
    shared = shared_state_methods()
    labels = summary["row"] if "row" in summary.columns else summary.method
    out = []
    for row in rows:
        cells = summary[labels == row]
        tasks = len(cells)
        method = cells.method.iloc[0] if tasks else row
        storage = bits = nan
        if tasks and method in shared:
            storage = cells.task_state_bytes.mean() / MB
            per_task = cells.owner_index_bytes.mean() / tasks + cells.classifier_bytes.mean()
            bits = 8 * per_task / trunk if trunk else nan
        elif tasks:
            storage = (base + cells.task_state_bytes.sum(skipna=False)) / MB
            bits = (8 * cells.task_state_bytes / trunk).mean(skipna=False) if trunk else nan
        out.append(
            {"row": row, "method": method, "tasks": tasks, "storage_mb": storage,
             "bits_per_weight": bits}
        )  # fmt: skip
    return pd.DataFrame(out, columns=["row", "method", "tasks", "storage_mb", "bits_per_weight"])


def cell_frame(
    backbone: str,
    rows: list[tuple[str, str]],
    datasets: list[str],
    ours: pd.DataFrame,
    pub: pd.DataFrame,
) -> pd.DataFrame:
    """One row per (row, dataset) and published source: ours, the published value, Δ (a
    method's published values stand beside each of its rows)."""
    out = []
    for label, method in rows:
        for ds in datasets:
            mine = ours[(ours.row == label) & (ours.dataset == ds)]
            base = {"backbone": backbone, "method": method, "dataset": ds, "row": label, "n": 0}
            if len(mine):
                m = mine.iloc[0]
                base.update(n=int(m.n), mean=m["mean"], std=m["std"], protocol=m.protocol)
                base.update(split=m.split, task_state_bytes=m.task_state_bytes)
                base.update(epochs=m.epochs, lr=m.lr, cut_short=_yes(m.cut_short))
                base.update(cut_reason=m.cut_reason)
            theirs = pub[(pub.method == method) & (pub.dataset == ds)]
            out += [
                {
                    **base,
                    "published": p.published,
                    "published_metric": p.metric,
                    "published_value": p.value,
                    "source_id": p.source_id,
                    "source": p.source,
                    "note": p.note,
                    "diff": base.get("mean", float("nan")) - p.published,
                }
                for _, p in theirs.iterrows()
            ] or [base]
    cells = pd.DataFrame(out, columns=CELL_COLUMNS)
    cells["n"] = cells.n.astype(int)
    return cells


def rows_by_base(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Which of one backbone's cells ran over which pretrained base (``weights_fingerprint``;
    records older than the field: "not recorded"), when they span more than one: methods
    compared over different bases are compared less fairly.

    A method whose cells all share a base is named alone, else as ``method (datasets)``.
    """
    bases = frame.base.fillna("not recorded")
    if bases.nunique() < 2:
        return {}
    out: dict[str, list[str]] = {}
    for method, cells in frame.assign(base=bases).groupby("method", sort=True):
        for base, group in cells.groupby("base", sort=True):
            if cells.base.nunique() == 1:
                out.setdefault(base, []).append(method)
            else:
                out.setdefault(base, []).append(
                    f"{method} ({', '.join(sorted(set(group.dataset)))})"
                )
    return dict(sorted(out.items()))


def build_tables(
    records: list[dict[str, Any]], published: pd.DataFrame, selection: Selection | None = None
) -> list[BackboneTable]:
    """One table per backbone that has records or published numbers (``selection``: which
    backbones, methods and datasets, and what besides whole runs at one budget a row holds)."""
    sel = selection or Selection()
    check_selection(sel, records, published)
    kept, _ = select_records(records, sel)
    kept = [r for r in kept if not str(r.get("dataset")).startswith(OWN_TABLES)]
    frame, config_notes = choose_variants(
        select_datasets(records_frame(kept), sel), mix_budgets=sel.mix_budgets
    )
    summary = summarize(frame)
    scores = select_datasets(decathlon_scores(kept, mix_budgets=sel.mix_budgets), sel)
    if len(scores):
        summary = pd.concat([summary, scores], ignore_index=True) if len(summary) else scores
    summary = label_rows(summary)
    cells = zip(published.backbone, published.method, published.dataset, strict=True)
    published = published[[sel.wants(*c) for c in cells]]
    backbones = _ordered(published.backbone, sorted(summary.backbone.unique()))
    if sel.only_run:
        backbones = [bb for bb in backbones if bb in set(summary.backbone)]
    return [
        backbone_table(
            bb,
            published[published.backbone == bb],
            summary[summary.backbone == bb],
            frame[frame.backbone == bb],
            [n for n in config_notes if n.startswith(f"{bb} ")],
            sel,
        )
        for bb in backbones
    ]


def backbone_table(
    bb: str,
    published: pd.DataFrame,
    ours: pd.DataFrame,
    frame: pd.DataFrame,
    config_notes: list[str],
    sel: Selection,
) -> BackboneTable:
    """One backbone's table from its published numbers, cells (``ours``) and chosen runs."""
    pub_storage = published[published.metric == STORAGE_METRIC]
    pub = published[published.metric != STORAGE_METRIC]
    methods = _ordered(method_names(), pub.method, sorted(ours.method.unique()))
    methods = [m for m in methods if sel.wants(method=m)]
    rows = table_rows(methods, ours, sel.only_run)
    found = _ordered(pub.dataset, sorted(ours.dataset.unique()))
    if sel.only_run:
        found = [d for d in found if d in set(ours.dataset)]
    datasets = _ordered([d for d in PAPER_DATASETS if d in found], found)
    sources = dict(zip(pub.source_id, pub.source, strict=True)) | dict(
        zip(pub_storage.source_id, pub_storage.source, strict=True)
    )
    every_note = [*pub.note, *pub_storage.note]
    notes = {n: i + 1 for i, n in enumerate(dict.fromkeys(x for x in every_note if x))}
    cells = cell_frame(bb, rows, datasets, ours, pub)
    tasks = ours[~ours.dataset.isin(DECATHLON_SCORES)]
    return BackboneTable(
        backbone=bb,
        methods=methods,
        datasets=datasets,
        cells=cells,
        storage=storage_frame(bb, tasks, [label for label, _ in rows]),
        sources=sources,
        notes=notes,
        config_notes=config_notes,
        not_run=[] if sel.only_run else cells_not_run(cells, pub, methods, datasets),
        published_storage=pub_storage,
        bases=rows_by_base(frame),
        rows=rows,
        mix_budgets=sel.mix_budgets,
        tuned=tuning_lines(frame),
    )


def table_rows(methods: list[str], ours: pd.DataFrame, only_run: bool) -> list[tuple[str, str]]:
    """(label, method) per row: a method's rows by budget, whole runs first; a method never
    run has one row under its name (none when ``only_run``)."""
    rows: list[tuple[str, str]] = []
    for method in methods:
        mine = ours[ours.method == method].sort_values(["cut_short", "budget"], kind="stable")
        labels = list(dict.fromkeys(mine.row))
        if labels or not only_run:
            rows += [(label, method) for label in labels or [method]]
    return rows


def cells_not_run(
    cells: pd.DataFrame, pub: pd.DataFrame, methods: list[str], datasets: list[str]
) -> list[tuple[str, str]]:
    """(method, dataset) published for a method of this project, or in the grid of what ran,
    that no whole run of the method covers (a run cut short is not a run of the cell)."""
    ran = cells[cells.n > 0]
    whole = ran[~ran.cut_short.eq(True)]
    ran_cells = set(zip(whole.method, whole.dataset, strict=True))
    grid = [(m, d) for m in ran.method.unique() for d in ran.dataset.unique()]
    # published cells of methods this project has: a published-only method is no gap
    expected = [c for c in zip(pub.method, pub.dataset, strict=True) if method_named(c[0])]
    not_run = [c for c in dict.fromkeys([*expected, *grid]) if c not in ran_cells]
    return sorted(not_run, key=lambda c: (methods.index(c[0]), datasets.index(c[1])))


# --- rendering ------------------------------------------------------------------------------
def _fmt(x: float, spec: str = ".2f") -> str:
    return MISSING if pd.isna(x) else format(x, spec)


def _ours_text(cell: pd.Series) -> str:
    if cell.n == 0:
        return MISSING
    split = "" if cell.split == "test" else f", {cell.split}"
    if cell.n == 1 or pd.isna(cell["std"]):
        return f"{cell['mean']:.2f} (n={cell.n}{split})"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f} (n={cell.n}{split})"


def display_frame(table: BackboneTable) -> pd.DataFrame:
    """The table as strings: per row its budget (epochs) and learning rate, per dataset our
    cell, the published values and the differences, then storage."""
    published_ds = set(table.cells.dataset[table.cells.published.notna()])
    rows = []
    for label, method in table.rows:
        mine = table.cells[table.cells.row == label]
        row = {"method": label}
        row["epochs"] = values_text(mine.epochs.dropna()) or MISSING
        row["lr"] = values_text(mine.lr.dropna()) or MISSING
        for ds in table.datasets:
            cell = mine[mine.dataset == ds]
            row[ds] = _ours_text(cell.iloc[0])
            if ds not in published_ds:
                continue
            pub = cell[cell.published.notna()]
            groups = pub.groupby("published", sort=False)
            row[f"{ds} published"] = (
                " / ".join(
                    f"{value:.2f} [{','.join(_marks(g, table.notes))}]" for value, g in groups
                )
                or MISSING
            )
            row[f"{ds} Δ"] = (
                " / ".join(_fmt(g["diff"].iloc[0], "+.2f") for _, g in groups) or MISSING
            )
        rows.append(row | _storage_text(table, label, method))
    return pd.DataFrame(rows)


def _storage_text(table: BackboneTable, label: str, method: str) -> dict[str, str]:
    st = table.storage[table.storage.row == label].iloc[0]
    out = {"tasks run": str(int(st.tasks)), "storage (MB)": _fmt(st.storage_mb, ".3f")}
    stored = table.published_storage
    if stored is not None and len(stored):
        theirs = stored[stored.method == method]
        out["storage published (MB)"] = (
            " / ".join(
                f"{v:g} [{','.join(_marks(g, table.notes))}]"
                for v, g in theirs.groupby("value", sort=False)
            )
            or MISSING
        )
    out["bits/weight/task"] = _fmt(st.bits_per_weight, ".3f")
    return out


def _marks(group: pd.DataFrame, notes: dict[str, int]) -> list[str]:
    return [
        s + (f"*{notes[n]}" if n else "") for s, n in zip(group.source_id, group.note, strict=True)
    ]


def footnotes(table: BackboneTable) -> list[str]:
    """Sources, notes, disagreements, budgets, sweep choices and the cells not run, as lines."""
    published = (
        " Published top-1 errors are shown as 100 − error; Δ = ours − published."
        if table.has_published
        else " No published numbers exist for this backbone: ours only."
    )
    lines = [
        "Ours: top-1 accuracy (%) on the test split, mean ± sample std over seeds (n runs); "
        f"{MISSING} = never run.{published} Epochs and lr: the row's method.epochs (its "
        "training budget) and method.lr. Storage (MB) for all run tasks: the base network "
        "plus every task file (finetune: a whole network per task); PackNet: its one shared "
        "state (network, owner indices, classifiers). Bits/weight/task: a task's stored bits "
        "(classifier and file header included; PackNet: owner indices / tasks + classifier) "
        "per prunable trunk weight."
    ]
    if table.cells.split.fillna("test").ne("test").any():
        lines.append(
            "Cells marked val were evaluated on the validation split (the test labels are "
            "withheld); they are not comparable with published test numbers."
        )
    if set(DECATHLON_SCORES) & set(table.datasets):
        from piggyback_lab.reporting.decathlon import recipe_sources

        sources = recipe_sources(sorted(set(table.cells.method)))
        lines.append(
            "score / score_val: Visual Decathlon score S on the test / validation splits, "
            "mean over seeds that ran all ten domains. Recipes: "
            + "; ".join(f"{m}: {source}" for m, source in sources.items())
            + "."
        )
    lines += _source_lines(table) + _budget_lines(table)
    protocols = sorted({p for p in table.cells.protocol.dropna() for p in str(p).split(",")})
    if protocols:
        lines.append(f"Model selection protocol of our runs: {', '.join(protocols)}.")
    lines += [f"Sweep: {n}" for n in table.config_notes] + table.tuned
    if table.bases:
        lines.append(
            "Bases: these rows ran over different pretrained bases (weights_fingerprint): "
            + "; ".join(f"{base}: {', '.join(rows)}" for base, rows in table.bases.items())
            + "."
        )
    if table.not_run:
        lines.append("Not run yet: " + "; ".join(f"{m} × {d}" for m, d in table.not_run) + ".")
    return lines


def _source_lines(table: BackboneTable) -> list[str]:
    """The sources used, their notes, and the cells where sources disagree."""
    used = set(table.cells.source_id.dropna())
    if table.published_storage is not None:
        used |= set(table.published_storage.source_id)
    lines = [f"[{sid}] {src}" for sid, src in table.sources.items() if sid in used]
    lines += [f"*{i} {note}" for note, i in table.notes.items()]
    pub = table.cells[table.cells.published.notna()]
    pub = pub.drop_duplicates(["method", "dataset", "source_id"])  # once, not once per row
    for (method, ds), g in pub.groupby(["method", "dataset"], sort=False):
        if g.published.nunique() > 1:
            values = " vs ".join(
                f"{v:.2f} [{s}]" for v, s in zip(g.published, g.source_id, strict=True)
            )
            lines.append(f"Sources disagree on {method} {ds}: {values}; both are kept.")
    return lines


def tuning_texts(tuning: Mapping[str, Any] | None) -> dict[str, str]:
    """The tuning record of a final run as text: the space searched, its search seeds, the
    values chosen ("" for an untuned run)."""
    if not tuning:
        return {"space": "", "search_seeds": "", "chosen": ""}

    def num(v: Any) -> str:
        return format(v, "g") if isinstance(v, (int, float)) else str(v)

    space = tuning.get("space") or {}
    on = tuning.get("selected_on", "val")
    return {
        "space": "; ".join(f"{k} ∈ {{{', '.join(num(v) for v in vs)}}}" for k, vs in space.items())
        + f" on {on}",
        "search_seeds": ", ".join(num(s) for s in tuning.get("search_seeds") or []),
        "chosen": ", ".join(f"{k}={num(v)}" for k, v in (tuning.get("chosen") or {}).items()),
    }


def tuning_lines(frame: pd.DataFrame) -> list[str]:
    """Per method whose runs the tuning protocol chose: the space it searched and the
    values chosen per dataset (docs/tuning.md)."""
    lines = []
    for method, runs in frame.groupby("method", sort=True):
        notes = [c.get("tuning") for c in runs.config]
        chosen = {
            d: tuning_texts(n)["chosen"]
            for d, n in zip(runs.dataset, notes, strict=True)
            if isinstance(n, dict) and n.get("role") == "final"
        }
        if chosen:
            note = next(n for n in notes if isinstance(n, dict) and n.get("role") == "final")
            picks = ", ".join(f"{d}: {c}" for d, c in sorted(chosen.items()))
            lines.append(
                f"Tuned {method} (docs/tuning.md): {tuning_texts(note)['space']}, the final "
                f"runs trained on train + val and tested once; chosen: {picks}."
            )
    return lines


def _budget_lines(table: BackboneTable) -> list[str]:
    """Rows at different training budgets, budgets mixed within rows, rows cut short."""
    ran = table.cells[table.cells.n > 0]
    budgets = values_text(ran.epochs.dropna())
    lines = []
    if " / " in budgets and table.mix_budgets:
        lines.append(
            f"Budgets mixed (--mix-budgets): our cells ran at {budgets} epochs; a row's "
            "cells may differ in budget (its epochs column lists them), so the table "
            "compares runs trained for different lengths."
        )
    elif " / " in budgets:
        lines.append(
            f"Budgets differ across rows ({budgets} epochs): each row holds one budget (a "
            "method run at several has a row per budget, labelled with it); rows of "
            "different budgets are not an equal-training comparison."
        )
    cut = ran[ran.cut_short.eq(True)].drop_duplicates("row")
    if len(cut):
        why = "; ".join(f"{r}: {c}" for r, c in zip(cut.row, cut.cut_reason, strict=True))
        lines.append(
            f"{CUT_MARK} Cut short (shown by --include-cut-short): trained or evaluated on "
            f"part of the data, or a smoke run; not comparable with whole runs ({why})."
        )
    return lines


def to_markdown(table: BackboneTable) -> str:
    body = display_frame(table).to_markdown(index=False, disable_numparse=True)
    notes = "\n".join(f"- {line}" for line in footnotes(table))
    return f"### {table.backbone}\n\n{body}\n\n{notes}\n"


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "Δ": r"$\Delta$", "—": "--", "−": "$-$", "×": r"$\times$", "†": r"\dag{}",
}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(table: BackboneTable) -> str:
    df = display_frame(table)
    cols = "l" + "r" * (len(df.columns) - 1)
    out = io.StringIO()
    out.write(f"% generated by scripts/make_tables.py: {table.backbone} (needs booktabs)\n")
    out.write(f"\\begin{{tabular}}{{{cols}}}\n\\toprule\n")
    out.write(" & ".join(latex_escape(c) for c in df.columns) + " \\\\\n\\midrule\n")
    for row in df.itertuples(index=False):
        out.write(" & ".join(latex_escape(v) for v in row) + " \\\\\n")
    out.write("\\bottomrule\n\\end{tabular}\n")
    for line in footnotes(table):
        out.write(f"\n\\noindent{{\\footnotesize {latex_escape(line)}}}\n")
    return out.getvalue()


def to_csv(table: BackboneTable) -> str:
    """Every number of the table, one row per cell and published source, storage per method."""
    merged = table.cells.merge(table.storage, on=["row", "method"], how="left")
    return merged.to_csv(index=False)


def write_tables(tables: list[BackboneTable], out_dir: str | Path) -> list[Path]:
    """Markdown, LaTeX and CSV per backbone under ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    written = []
    for table in tables:
        for suffix, render in ((".md", to_markdown), (".tex", to_latex), (".csv", to_csv)):
            path = out_dir / f"{table.backbone}{suffix}"
            atomic_write_bytes(path, render(table).encode())
            written.append(path)
    not_run = pd.DataFrame(
        [(t.backbone, m, d) for t in tables for m, d in t.not_run], columns=CELL_KEYS
    )
    path = out_dir / "not_run.csv"
    atomic_write_bytes(path, not_run.to_csv(index=False).encode())
    return [*written, path]
