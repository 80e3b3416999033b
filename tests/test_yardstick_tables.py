"""Yardstick tables (VTAB-1k, FGVC): every number checked on records with known values."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from piggyback_lab.reporting.tables import Selection, build_tables, load_published
from piggyback_lab.reporting.yardstick import (
    FGVC,
    GROUP_MEANS,
    VTAB,
    YardstickTable,
    binary_entropy,
    build_yardstick_tables,
    mask_entropy_bound,
    to_markdown,
    write_yardstick_tables,
)
from piggyback_lab.runs.records import read_records, run_id
from tests.test_tables import PAPER, load_script

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = (
    ROOT / "results/reference/runs/mini_digits__efficientnet_lite0__piggyback__s0__dc6bdc5ddc.json"
)
BACKBONE = "vit_base_patch16_224"
GROUP = {t: g.lower() for g, tasks in VTAB.groups for t in tasks}
MASKED = 8_000_000  # masked weights of a piggyback task
DENSITY = 0.25  # its overall mask density: H(0.25) = 2 - 0.75 * log2(3) bits
RAW = 1_400_000  # its task file: 1 bit per masked weight (1e6 bytes) + 400 kB of classifier
SPACE = {"lr": [1e-4, 1e-3, 1e-2]}


def top1(method: str, i: int, seed: int) -> float:
    """Known numbers: piggyback's task i averages 50 + i over seeds 0-2 (std 1); lora's 60 + i."""
    return (50.0 if method == "piggyback" else 60.0) + i + seed - 1


def write_run(folder: Path, method: str, dataset: str, seed: int, acc: float, *,
              protocol: str = "final", group: str = "natural", lr: float = 1e-3,
              chosen: float | None = None, limit_train: float = 1.0) -> dict:  # fmt: skip
    """A run record shaped as the reference one, with this run's facts."""
    rec = copy.deepcopy(json.loads(TEMPLATE.read_text()))
    config = rec["config"]
    config["dataset"].update(name=dataset, group=group, protocol=protocol, seed=seed)
    config["method"] = {"name": method, "epochs": 100, "lr": lr, "lr_schedule": "cosine",
                        "warmup_epochs": 10, "batch_size": 64}  # fmt: skip
    config["backbone"]["name"] = BACKBONE
    config.update(seed=seed, protocol=protocol)
    config["trainer"]["limit_train_batches"] = limit_train
    config["tuning"] = None
    if chosen is not None:
        config["tuning"] = {"selected_on": "val", "space": SPACE, "search_seeds": [0],
                            "candidates": SPACE["lr"], "chosen": {"lr": chosen},
                            "val_top1": 70.0, "search_runs": []}  # fmt: skip
    rec.update(dataset=dataset, backbone=BACKBONE, method=method, seed=seed, protocol=protocol)
    rec.update(top1=acc, val_top1=acc, run_id=run_id(config), trainable_params=2_000_000)
    if method == "piggyback":
        rec.update(masked_weights=MASKED, mask_density_overall=DENSITY, task_state_bytes=RAW)
    else:
        rec.update(masked_weights=0, mask_density={}, mask_density_overall=None)
        rec.update(task_state_bytes=600_000)
    (folder / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return rec


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """2 methods x 19 VTAB tasks x 3 final seeds; lora tuned (lr 1e-3 on even tasks, 1e-2 on
    odd), piggyback untuned; lora's search runs (clean, 99%) and a piggyback run cut short
    (0%), neither a cell; piggyback on the five FGVC datasets, one seed."""
    d = tmp_path / "runs"
    d.mkdir()
    for i, task in enumerate(VTAB.tasks):
        for seed in range(3):
            pig = top1("piggyback", i, seed)
            write_run(d, "piggyback", f"vtab_{task}", seed, pig, group=GROUP[task], lr=1e-4)
            chosen = 1e-3 if i % 2 == 0 else 1e-2
            acc = top1("lora", i, seed)
            write_run(d, "lora", f"vtab_{task}", seed, acc, group=GROUP[task], chosen=chosen)
    for lr in SPACE["lr"]:
        write_run(d, "lora", "vtab_cifar", 0, 99.0, protocol="clean", lr=lr)
    write_run(d, "piggyback", "vtab_cifar", 0, 0.0, limit_train=0.1, lr=1e-4)
    for i, name in enumerate(FGVC.tasks):
        write_run(d, "piggyback", f"fgvc_{name}", 0, 80.0 + 2 * i, group="fgvc", lr=1e-4)
    return d


def tables_of(folder: Path, **selection: bool) -> dict[str, YardstickTable]:
    published = load_published(PAPER, include_yardstick=True)
    built = build_yardstick_tables(read_records(folder), published, Selection(**selection))
    return {f"{t.bench.name}_{t.backbone}": t for t in built}


def rows_of(table: YardstickTable) -> dict[str, dict[str, str]]:
    """Row label -> its cells' text, from the rendered Markdown's main table."""
    main = to_markdown(table).split("\n\n")[2]
    lines = [x for x in main.splitlines() if x.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {
        cells[0]: dict(zip(header, cells, strict=True))
        for cells in ([c.strip() for c in x.strip("|").split("|")] for x in lines[1:])
    }


def test_vtab_cells_and_both_averaging_conventions(runs: Path) -> None:
    table = tables_of(runs)[f"vtab_{BACKBONE}"]
    rows = rows_of(table)
    pig, lora = rows["piggyback"], rows["lora"]
    # search runs (clean, 99%) and the cut-short run (0%) are not cells
    assert lora["cifar"] == "60.00 ± 1.00 (n=3)" and pig["cifar"] == "50.00 ± 1.00 (n=3)"
    assert pig["smallnorb_ele"] == "68.00 ± 1.00 (n=3)"
    assert "piggyback †" not in rows
    # by hand: Natural = tasks 0-6 -> 53, Specialized = 7-10 -> 58.5, Structured = 11-18 -> 64.5
    assert (pig["Natural"], pig["Specialized"], pig["Structured"]) == ("53.00", "58.50", "64.50")
    assert pig["mean (19 tasks)"] == "59.00"  # 50 + mean(0..18)
    assert pig[GROUP_MEANS] == f"{(53 + 58.5 + 64.5) / 3:.2f}" == "58.67"
    assert lora["mean (19 tasks)"] == "69.00" and lora[GROUP_MEANS] == "68.67"
    assert pig["epochs"] == "100"
    md = to_markdown(table)
    assert "3 search or other-protocol runs left out, 1 cut short" in md
    assert "lora: lr ∈ {0.0001, 0.001, 0.01} on val (search seeds 0)" in md
    assert "piggyback: not tuned (lr 0.0001 as configured)" in md
    assert "piggyback: 100 epochs, cosine lr schedule, 10 warm-up epochs" in md
    tuning = md.split("Chosen per cell")[1]
    assert tuning.count("lr=0.001") == 10 and tuning.count("lr=0.01") == 9
    assert "untuned (lr=0.0001)" in tuning


def test_missing_tasks_give_a_dash_and_say_how_many(runs: Path) -> None:
    for path in runs.glob("vtab_dmlab__*lora*.json"):
        path.unlink()
    for path in runs.glob("vtab_kitti__*lora*.json"):
        path.unlink()
    lora = rows_of(tables_of(runs)[f"vtab_{BACKBONE}"])["lora"]
    assert lora["dmlab"] == lora["kitti"] == "—"
    assert lora["Natural"] == "63.00" and lora["Structured"] == "— (2 missing)"
    assert lora["mean (19 tasks)"] == lora[GROUP_MEANS] == "— (2 missing)"


def test_mask_entropy_bound_for_a_known_density(runs: Path) -> None:
    h = 2 - 0.75 * math.log2(3)  # H(0.25), by hand
    assert binary_entropy(DENSITY) == pytest.approx(h)
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    expected = MASKED * h / 8 + (RAW - MASKED / 8)  # masks at the bound + 400 kB classifier
    record = json.loads(next(runs.glob("vtab_cifar__*piggyback*")).read_text())
    assert mask_entropy_bound(record) == (pytest.approx(expected), "overall-density")
    # per-layer sizes, where a record has them: 1000 weights at 0.5 (1 bit each), 3000 at 1.0
    layered = {
        "masked_weights": 4000,
        "task_state_bytes": 900,
        "mask_density_overall": 0.875,
        "mask_sizes": {"a": 1000, "b": 3000},
        "mask_density": {"a": 0.5, "b": 1.0},
    }
    assert mask_entropy_bound(layered) == (1000 / 8 + 900 - 4000 / 8, "per-layer")
    assert mask_entropy_bound({"masked_weights": 0, "mask_density": {}})[1] == ""
    table = tables_of(runs)[f"vtab_{BACKBONE}"]
    rows = rows_of(table)
    assert rows["piggyback"]["mask entropy bound (MB/task)"] == f"{expected / 1e6:.3f}"
    assert rows["piggyback"]["stored (MB/task)"] == "1.400"
    assert rows["piggyback"]["trainable (M)"] == "2.000"
    assert rows["lora"]["mask entropy bound (MB/task)"] == "—"
    md = to_markdown(table)
    assert "overall-density bound" in md and "an entropy bound, not a file" in md


def test_fgvc_mean(runs: Path) -> None:
    table = tables_of(runs)[f"fgvc_{BACKBONE}"]
    pig = rows_of(table)["piggyback"]
    assert pig["cub"] == "80.00 (n=1)" and pig["cars"] == "88.00 (n=1)"
    assert pig["mean (5 tasks)"] == "84.00"  # (80 + 82 + 84 + 86 + 88) / 5
    assert "Natural" not in pig and GROUP_MEANS not in pig
    assert rows_of(table)["full_finetuning [m]"]["mean (5 tasks)"] == "88.54"


def test_published_rows_with_both_conventions(runs: Path) -> None:
    table = tables_of(runs)[f"vtab_{BACKBONE}"]
    rows = rows_of(table)
    csv = pd.read_csv(PAPER)
    lora = csv[(csv.method == "lora") & csv.dataset.str.startswith("vtab/")]
    values = dict(zip(lora.dataset.str.removeprefix("vtab/"), lora.value, strict=True))
    groups = [sum(values[t] for t in ts) / len(ts) for _, ts in VTAB.groups]
    row = rows["lora [n]"]
    assert row["cifar"] == f"{values['cifar']:g}" and row["trainable (M)"] == "0.290"
    assert row["mean (19 tasks)"] == f"{sum(values[t] for t in VTAB.tasks) / 19:.2f}"
    assert row[GROUP_MEANS] == f"{sum(groups) / 3:.2f}"
    assert abs(sum(values[t] for t in VTAB.tasks) / 19 - values["mean19"]) <= 0.01
    assert len([r for r in rows if r.endswith("[n]")]) == 20  # every V-PETL VTAB row
    md = to_markdown(table)
    assert "[n] V-PETL Bench README" in md and "Another protocol" in md
    assert "within 0.01 for 20 of 20 rows" in md


def test_paper_tables_leave_the_yardstick_rows_out() -> None:
    every = load_published(PAPER, include_yardstick=True)
    paper = load_published(PAPER)
    assert len(every) - len(paper) == 525
    assert not paper.dataset.str.startswith(("vtab/", "fgvc/")).any()
    assert list(every.source_id.unique()[:12]) == list(paper.source_id.unique())  # letters kept
    backbones = {t.backbone for t in build_tables([], paper)}
    assert "vit_base_patch16_224_in21k" not in backbones


def test_cli_writes_the_yardstick_tables(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert load_script().main(["--runs", str(runs), "--out", str(out), "--only-run"]) == 0
    tables = out / "tables"
    for name in (f"vtab_{BACKBONE}", f"fgvc_{BACKBONE}"):
        assert (tables / f"{name}.md").stat().st_size > 0
    cells = pd.read_csv(tables / f"vtab_{BACKBONE}.csv")
    ours = cells[(cells.kind == "ours") & (cells.group != "average")]
    assert len(ours) == 2 * 19 and (ours.n == 3).all()
    assert set(ours.chosen.dropna()) == {"lr=0.001", "lr=0.01"}
    mean19 = cells[(cells.row == "piggyback") & (cells.task == "mean (19 tasks)")]
    assert mean19["mean"].iloc[0] == pytest.approx(59.0)


def test_cut_short_runs_are_their_own_row_when_asked(runs: Path) -> None:
    table = tables_of(runs, include_cut_short=True)[f"vtab_{BACKBONE}"]
    rows = rows_of(table)
    assert rows["piggyback †"]["cifar"] == "0.00 (n=1)"
    assert rows["piggyback"]["cifar"] == "50.00 ± 1.00 (n=3)"
    write_yardstick_tables([table], runs.parent / "t")
    assert "Cut short" in (runs.parent / "t" / f"vtab_{BACKBONE}.md").read_text()


def test_a_record_naming_another_group_is_said(runs: Path) -> None:
    write_run(runs, "lora", "vtab_kitti", 3, 74.0, group="natural", chosen=1e-3)
    md = to_markdown(tables_of(runs)[f"vtab_{BACKBONE}"])
    assert "Records name another group for vtab_kitti (natural)" in md
    assert rows_of(tables_of(runs)[f"vtab_{BACKBONE}"])["lora"]["Structured"] == "74.50"
