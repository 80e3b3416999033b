"""Paper-shaped result tables: our runs (mean ± std over seeds) beside the published numbers.

One table per backbone: rows are methods, columns are datasets; each of our cells sits next to
every published value for it (all sources, never one silently picked) and the difference.
Storage for all tasks and bits per weight per task come from the records' task state sizes.
"""

from __future__ import annotations

import io
import json
import math
import string
from collections.abc import Iterable
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
SUMMARY_COLUMNS = [
    *CELL_KEYS, "n", "mean", "std", "task_state_bytes", "masked_weights", "owner_index_bytes",
    "classifier_bytes", "protocol", "split",
]  # fmt: skip
CELL_COLUMNS = [
    *CELL_KEYS, "n", "mean", "std", "protocol", "split", "task_state_bytes", "published",
    "published_metric", "published_value", "source_id", "source", "note", "diff",
]  # fmt: skip
STORAGE_METRIC = "storage_mb"  # a published storage for all of a method's tasks, in MB
PAPER_DATASETS = ("imagenet", "cub", "cars", "flowers", "wikiart", "sketch")  # column order
MISSING = "—"
MB = 1e6


# --- inputs --------------------------------------------------------------------------------
def load_published(path: str | Path) -> pd.DataFrame:
    """The published numbers, with a comparable ``published`` value and a letter per source."""
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
    df["published"] = [
        ACCURACY_METRICS.get(m, lambda v: v)(v) for m, v in zip(df.metric, df.value, strict=True)
    ]
    ids = {s: _label(i) for i, s in enumerate(dict.fromkeys(df.source))}
    df["source_id"] = df.source.map(ids)
    return df


def _label(i: int) -> str:
    return string.ascii_lowercase[i] if i < 26 else f"s{i}"


def seedless(config: dict[str, Any]) -> dict[str, Any]:
    """The config with its seed fixed, the datamodule's copy of it (``dataset.seed``) too."""
    dataset = config.get("dataset")
    if isinstance(dataset, dict) and "seed" in dataset:
        config = {**config, "dataset": {**dataset, "seed": 0}}
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
        config = r.get("config") or {}
        rows.append(
            {
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
            }
        )
    columns = [*CELL_KEYS, "seed", "protocol", "split", "top1", "val_top1", "task_state_bytes"]
    columns += ["masked_weights", "owner_index_bytes", "classifier_bytes", "variant", "config"]
    columns += ["mask_density", "base"]
    return pd.DataFrame(rows, columns=columns)


def dataset_column(record: dict[str, Any]) -> str:
    """The published name of a record's dataset: a Decathlon domain, else the dataset name."""
    dataset = (record.get("config") or {}).get("dataset") or {}
    return str(dataset.get("domain") or record["dataset"])


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def choose_variants(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per cell, keep one configuration: of those with the most seeds, the one with the best
    mean validation top-1 (a configuration still missing seeds would otherwise win on a
    lucky one).

    A cell with runs of several configurations (a sweep) is not averaged across them; the
    returned notes say which keys differed and which values the table shows.
    """
    if frame.empty:
        return frame, []
    kept, notes = [], []
    for (bb, method, ds), cell in frame.groupby(CELL_KEYS, sort=False):
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
        notes.append(
            f"{bb} {method} {ds}: {cell.variant.nunique()} configurations differ in "
            f"{', '.join(keys)}; shown: {', '.join(f'{k}={shown.get(k)}' for k in keys)} "
            "(most seeds, then best mean validation top-1)"
        )
    return pd.concat(kept), notes


def decathlon_scores(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Decathlon score S over seeds per (backbone, method), as cells of the summary.

    "score" is S on the labelled test sets (comparable with the published S), "score_val" S
    on the validation splits; a seed counts only when all ten domains were run.
    """
    from piggyback_lab.reporting.decathlon import score_records

    rows = [
        {"backbone": r["backbone"], "method": r["method"], "dataset": name, "score": r[key],
         "protocol": r["protocol"], "split": split}
        for r in score_records(records)
        for name, key, split in (("score", "score_test", "test"), ("score_val", "score_val", "val"))
        if r[key] is not None
    ]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    out = (
        pd.DataFrame(rows)
        .groupby(CELL_KEYS, sort=False)
        .agg(
            n=("score", "size"),
            mean=("score", "mean"),
            std=("score", "std"),
            protocol=("protocol", _joined),
            split=("split", _joined),
        )
    )
    return out.reset_index().reindex(columns=SUMMARY_COLUMNS)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count of top-1 over seeds per (backbone, method, dataset)."""
    if frame.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    out = frame.groupby(CELL_KEYS, sort=False).agg(
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

    @property
    def has_published(self) -> bool:
        return bool(self.cells.published.notna().any())


def _ordered(first: Iterable[str], *more: Iterable[str]) -> list[str]:
    out = list(dict.fromkeys(first))
    for group in more:
        out += [x for x in dict.fromkeys(group) if x not in out]
    return out


def storage_frame(backbone: str, summary: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Storage for all run tasks (MB) and bits per weight per task.

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
    rows = []
    for method in methods:
        cells = summary[summary.method == method]
        tasks = len(cells)
        storage = bits = nan
        if tasks and method in shared:
            storage = cells.task_state_bytes.mean() / MB
            per_task = cells.owner_index_bytes.mean() / tasks + cells.classifier_bytes.mean()
            bits = 8 * per_task / trunk if trunk else nan
        elif tasks:
            storage = (base + cells.task_state_bytes.sum(skipna=False)) / MB
            bits = (8 * cells.task_state_bytes / trunk).mean(skipna=False) if trunk else nan
        rows.append(
            {"method": method, "tasks": tasks, "storage_mb": storage, "bits_per_weight": bits}
        )
    return pd.DataFrame(rows, columns=["method", "tasks", "storage_mb", "bits_per_weight"])


def cell_frame(
    backbone: str, methods: list[str], datasets: list[str], ours: pd.DataFrame, pub: pd.DataFrame
) -> pd.DataFrame:
    """One row per (method, dataset) and published source: ours, the published value, Δ."""
    rows = []
    for method in methods:
        for ds in datasets:
            mine = ours[(ours.method == method) & (ours.dataset == ds)]
            base = {"backbone": backbone, "method": method, "dataset": ds, "n": 0}
            if len(mine):
                m = mine.iloc[0]
                base.update(n=int(m.n), mean=m["mean"], std=m["std"], protocol=m.protocol)
                base.update(split=m.split, task_state_bytes=m.task_state_bytes)
            theirs = pub[(pub.method == method) & (pub.dataset == ds)]
            rows += [
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
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS)
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


def build_tables(records: list[dict[str, Any]], published: pd.DataFrame) -> list[BackboneTable]:
    """One table per backbone that has records or published numbers."""
    frame, config_notes = choose_variants(records_frame(records))
    scores = decathlon_scores(records)
    summary = summarize(frame)
    if len(scores):
        summary = pd.concat([summary, scores], ignore_index=True)
    backbones = _ordered(published.backbone, sorted(summary.backbone.unique()))
    tables = []
    for bb in backbones:
        pub = published[published.backbone == bb]
        pub_storage = pub[pub.metric == STORAGE_METRIC]
        pub = pub[pub.metric != STORAGE_METRIC]
        ours = summary[summary.backbone == bb]
        tasks = ours[~ours.dataset.isin(["score", "score_val"])]
        methods = _ordered(method_names(), pub.method, sorted(ours.method.unique()))
        found = _ordered(pub.dataset, sorted(ours.dataset.unique()))
        datasets = _ordered([d for d in PAPER_DATASETS if d in found], found)
        sources = dict(zip(pub.source_id, pub.source, strict=True)) | dict(
            zip(pub_storage.source_id, pub_storage.source, strict=True)
        )
        every_note = [*pub.note, *pub_storage.note]
        notes = {n: i + 1 for i, n in enumerate(dict.fromkeys(x for x in every_note if x))}
        cells = cell_frame(bb, methods, datasets, ours, pub)
        ran = cells[cells.n > 0]
        ran_cells = set(zip(ran.method, ran.dataset, strict=True))
        grid = [(m, d) for m in ran.method.unique() for d in ran.dataset.unique()]
        # published cells of methods this project has: a published-only method is no gap
        expected = [c for c in zip(pub.method, pub.dataset, strict=True) if method_named(c[0])]
        not_run = [c for c in dict.fromkeys([*expected, *grid]) if c not in ran_cells]
        tables.append(
            BackboneTable(
                backbone=bb,
                methods=methods,
                datasets=datasets,
                cells=cells,
                storage=storage_frame(bb, tasks, methods),
                sources=sources,
                notes=notes,
                config_notes=[n for n in config_notes if n.startswith(f"{bb} ")],
                not_run=sorted(not_run, key=lambda c: (methods.index(c[0]), datasets.index(c[1]))),
                published_storage=pub_storage,
                bases=rows_by_base(frame[frame.backbone == bb]),
            )
        )
    return tables


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
    """The table as strings: per dataset our cell, the published values and the differences."""
    published_ds = set(table.cells.dataset[table.cells.published.notna()])
    rows = []
    for method in table.methods:
        row = {"method": method}
        for ds in table.datasets:
            cell = table.cells[(table.cells.method == method) & (table.cells.dataset == ds)]
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
        st = table.storage[table.storage.method == method].iloc[0]
        row["tasks run"] = str(int(st.tasks))
        row["storage (MB)"] = _fmt(st.storage_mb, ".3f")
        stored = table.published_storage
        if stored is not None and len(stored):
            theirs = stored[stored.method == method]
            row["storage published (MB)"] = (
                " / ".join(
                    f"{v:g} [{','.join(_marks(g, table.notes))}]"
                    for v, g in theirs.groupby("value", sort=False)
                )
                or MISSING
            )
        row["bits/weight/task"] = _fmt(st.bits_per_weight, ".3f")
        rows.append(row)
    return pd.DataFrame(rows)


def _marks(group: pd.DataFrame, notes: dict[str, int]) -> list[str]:
    return [
        s + (f"*{notes[n]}" if n else "") for s, n in zip(group.source_id, group.note, strict=True)
    ]


def footnotes(table: BackboneTable) -> list[str]:
    """Sources, notes, disagreements, sweep choices and the cells not run, as lines."""
    published = (
        " Published top-1 errors are shown as 100 − error; Δ = ours − published."
        if table.has_published
        else " No published numbers exist for this backbone: ours only."
    )
    lines = [
        "Ours: top-1 accuracy (%) on the test split, mean ± sample std over seeds (n runs); "
        f"{MISSING} = never run.{published} Storage (MB) for all run tasks: the base network "
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
    if {"score", "score_val"} & set(table.datasets):
        from piggyback_lab.reporting.decathlon import recipe_sources

        sources = recipe_sources(sorted(set(table.cells.method)))
        lines.append(
            "score / score_val: Visual Decathlon score S on the test / validation splits, "
            "mean over seeds that ran all ten domains. Recipes: "
            + "; ".join(f"{m}: {source}" for m, source in sources.items())
            + "."
        )
    used = set(table.cells.source_id.dropna())
    if table.published_storage is not None:
        used |= set(table.published_storage.source_id)
    lines += [f"[{sid}] {src}" for sid, src in table.sources.items() if sid in used]
    lines += [f"*{i} {note}" for note, i in table.notes.items()]
    pub = table.cells[table.cells.published.notna()]
    for (method, ds), g in pub.groupby(["method", "dataset"], sort=False):
        if g.published.nunique() > 1:
            values = " vs ".join(
                f"{v:.2f} [{s}]" for v, s in zip(g.published, g.source_id, strict=True)
            )
            lines.append(f"Sources disagree on {method} {ds}: {values}; both are kept.")
    protocols = sorted({p for p in table.cells.protocol.dropna() for p in str(p).split(",")})
    if protocols:
        lines.append(f"Model selection protocol of our runs: {', '.join(protocols)}.")
    lines += [f"Sweep: {n}" for n in table.config_notes]
    if table.bases:
        lines.append(
            "Bases: these rows ran over different pretrained bases (weights_fingerprint): "
            + "; ".join(f"{base}: {', '.join(rows)}" for base, rows in table.bases.items())
            + "."
        )
    if table.not_run:
        lines.append("Not run yet: " + "; ".join(f"{m} × {d}" for m, d in table.not_run) + ".")
    return lines


def to_markdown(table: BackboneTable) -> str:
    body = display_frame(table).to_markdown(index=False, disable_numparse=True)
    notes = "\n".join(f"- {line}" for line in footnotes(table))
    return f"### {table.backbone}\n\n{body}\n\n{notes}\n"


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "Δ": r"$\Delta$", "—": "--", "−": "$-$", "×": r"$\times$",
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
    merged = table.cells.merge(table.storage, on="method", how="left")
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
