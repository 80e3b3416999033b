"""`make tables` never mixes silently: budgets, runs cut short, filters, sweeps on validation."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from piggyback_lab.reporting.tables import (
    BackboneTable,
    Selection,
    build_tables,
    cut_short,
    load_published,
    records_frame,
    to_markdown,
)
from piggyback_lab.runs.records import read_records, run_id, write_record
from tests.test_tables import PAPER, load_script

WHOLE = {"limit_train_batches": 1.0, "limit_val_batches": 1.0, "limit_test_batches": 1.0}
SMOKE = {"limit_train_batches": 8, "limit_val_batches": 2, "limit_test_batches": 1.0}


def record(folder: Path, backbone: str, method: str, dataset: str, seed: int, top1: float,
           *, val_top1: float = 50.0, trainer: dict | None = None, results_dir: str = "results",
           **method_cfg) -> dict:  # fmt: skip
    """A run record as src.train writes it: the config's method, trainer and paths given."""
    config = {
        "dataset": {"name": dataset},
        "backbone": {"name": backbone},
        "method": {"name": method, **method_cfg},
        "seed": seed,
        "protocol": "clean",
        "trainer": {**WHOLE, **(trainer or {})},
        "paths": {"results_dir": results_dir},
    }
    rid = run_id(config)
    rec = {
        "run_id": rid, "dataset": dataset, "backbone": backbone, "method": method, "seed": seed,
        "protocol": "clean", "top1": top1, "val_top1": val_top1, "epochs": method_cfg.get("epochs"),
        "task_state_bytes": 40_000.0, "masked_weights": 0, "config": config,
    }  # fmt: skip
    write_record(folder / f"{rid}.json", rec)
    return rec


def tables_of(folder: Path, **selection: bool) -> dict[str, BackboneTable]:
    built = build_tables(read_records(folder), load_published(PAPER), Selection(**selection))
    return {t.backbone: t for t in built}


def rows_of(table: BackboneTable) -> dict[str, dict[str, str]]:
    """Row label -> its cells' text for cub, from the rendered Markdown."""
    lines = [x for x in to_markdown(table).splitlines() if x.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {
        cells[0]: dict(zip(header, cells, strict=True))
        for cells in ([c.strip() for c in x.strip("|").split("|")] for x in lines[2:])
    }


@pytest.fixture
def budgets(tmp_path: Path) -> Path:
    """Piggyback on cub at 30 epochs (3 seeds) and at 3 (one seed, a better validation
    score), LoRA at 3: the old table showed one piggyback row beside LoRA, budgets unsaid."""
    d = tmp_path / "runs"
    for seed, acc in enumerate((80.0, 82.0, 84.0)):
        record(d, "minicnn", "piggyback", "cub", seed, acc, val_top1=70.0, epochs=30, lr=1e-4)
    record(d, "minicnn", "piggyback", "cub", 0, 60.0, val_top1=90.0, epochs=3, lr=1e-4)
    record(d, "minicnn", "lora", "cub", 0, 75.0, epochs=3, lr=1e-3)
    return d


def test_a_method_at_two_budgets_gets_a_row_per_budget_each_stating_it(budgets: Path) -> None:
    table = tables_of(budgets)["minicnn"]
    rows = rows_of(table)
    assert rows["piggyback (3 ep)"]["cub"] == "60.00 (n=1)"
    assert rows["piggyback (30 ep)"]["cub"] == "82.00 ± 2.00 (n=3)"
    assert "piggyback" not in rows  # no row that hides its budget
    long = rows["piggyback (30 ep)"]
    assert (long["epochs"], long["lr"]) == ("30", "0.0001")
    assert (rows["lora"]["epochs"], rows["lora"]["lr"]) == ("3", "0.001")  # one budget: plain
    assert rows["finetune"]["epochs"] == "—"  # never run: no budget to state
    md = to_markdown(table)
    assert "Budgets differ across rows (3 / 30 epochs)" in md
    csv = table.cells.set_index("row")
    assert csv.loc["piggyback (30 ep)", "epochs"] == "30" and csv.loc["lora", "lr"] == "0.001"
    st = table.storage.set_index("row")
    assert st.tasks["piggyback (3 ep)"] == 1 and st.tasks["piggyback (30 ep)"] == 1


def test_mix_budgets_puts_a_methods_budgets_in_one_row_and_says_so(
    budgets: Path, tmp_path: Path
) -> None:
    rows = rows_of(tables_of(budgets, mix_budgets=True)["minicnn"])
    assert rows["piggyback"]["cub"] == "82.00 ± 2.00 (n=3)"  # most seeds, across budgets
    assert rows["piggyback"]["epochs"] == "30" and rows["lora"]["epochs"] == "3"
    out = tmp_path / "out"
    load_script().main(["--runs", str(budgets), "--out", str(out), "--mix-budgets"])
    md = (out / "tables" / "minicnn.md").read_text()
    assert "Budgets mixed (--mix-budgets): our cells ran at 3 / 30 epochs" in md
    assert "differ in method.epochs; shown: method.epochs=30" in md


def test_cut_short_runs_are_left_out_unless_asked_and_then_marked(tmp_path: Path, capsys) -> None:
    d = tmp_path / "runs"
    record(d, "minicnn", "piggyback", "cub", 0, 80.0, epochs=30, lr=1e-4)
    record(d, "minicnn", "piggyback", "cub", 1, 99.0, val_top1=99.0, epochs=2, lr=1e-4,
           trainer=SMOKE, results_dir="outputs/smoke/results")  # fmt: skip
    record(d, "minicnn", "finetune", "cub", 0, 97.0, epochs=30, lr=1e-3,
           trainer={"limit_train_batches": 0.25})  # fmt: skip
    rows = rows_of(tables_of(d)["minicnn"])
    assert rows["piggyback"]["cub"] == "80.00 (n=1)" and rows["finetune"]["cub"] == "—"
    assert not any("†" in label for label in rows)

    out = tmp_path / "out"
    load_script().main(["--runs", str(d), "--out", str(out)])
    assert "left out 2 runs cut short" in capsys.readouterr().out
    assert "†" not in (out / "tables" / "minicnn.md").read_text()
    assert (out / "figures" / "accuracy_vs_storage_minicnn.png").exists()

    load_script().main(["--runs", str(d), "--out", str(out), "--include-cut-short"])
    md = (out / "tables" / "minicnn.md").read_text()
    rows = rows_of(tables_of(d, include_cut_short=True)["minicnn"])
    assert rows["piggyback (30 ep)"]["cub"] == "80.00 (n=1)"  # never merged with a smoke run
    assert rows["piggyback (2 ep) †"]["cub"] == "99.00 (n=1)"
    assert rows["finetune †"]["cub"] == "97.00 (n=1)"
    assert "† Cut short (shown by --include-cut-short)" in md
    assert "trainer.limit_train_batches=8, trainer.limit_val_batches=2, debug=smoke" in md
    assert "finetune †: trainer.limit_train_batches=0.25" in md
    assert "finetune × cub" in md  # a run cut short does not fill its cell


def test_what_counts_as_cut_short() -> None:
    def config(**trainer) -> dict:
        return {"config": {"trainer": {**WHOLE, **trainer}, "protocol": trainer.pop("p", "x")}}

    assert cut_short(config()) == [] and cut_short({}) == []
    assert cut_short(config(limit_train_batches=1)) == ["trainer.limit_train_batches=1"]  # 1 batch
    assert cut_short(config(limit_test_batches=0.5)) == ["trainer.limit_test_batches=0.5"]
    assert cut_short(config(limit_val_batches=0, p="final")) == []  # final: nothing held out
    assert cut_short(config(limit_val_batches=0)) == ["trainer.limit_val_batches=0"]
    packnet = {"config": {"trainer": WHOLE, "method": {"limit_train_batches": 0.1}}}
    assert cut_short(packnet) == ["method.limit_train_batches=0.1"]
    smoke = {"config": {"paths": {"results_dir": "outputs/smoke/results"}}}
    assert cut_short(smoke) == ["debug=smoke"]


def test_filters_select_and_only_run_drops_what_never_ran(
    budgets: Path, tmp_path: Path, capsys
) -> None:
    record(budgets, "resnet50", "piggyback", "cub", 0, 81.0, epochs=30)
    record(budgets, "resnet50", "finetune", "cars", 0, 88.0, epochs=30)
    record(budgets, "resnet50", "lora", "flowers", 0, 90.0, epochs=30)
    out = tmp_path / "out"
    script = load_script()
    script.main([
        "--runs", str(budgets), "--out", str(out), "--backbone", "resnet50",
        "--method", "piggyback,finetune", "--dataset", "cub", "--dataset", "cars",
    ])  # fmt: skip
    assert {p.stem for p in (out / "tables").glob("*.md")} == {"resnet50"}
    r50 = pd.read_csv(out / "tables" / "resnet50.csv")
    assert set(r50.method) == {"piggyback", "finetune"} and set(r50.dataset) == {"cub", "cars"}
    assert "cells not run yet" in capsys.readouterr().out  # finetune × cub, piggyback × cars

    only = tmp_path / "only"
    script.main(["--runs", str(budgets), "--out", str(only), "--only-run"])
    printed = capsys.readouterr().out
    assert "not run yet" not in printed
    assert {p.stem for p in (only / "tables").glob("*.md")} == {"minicnn", "resnet50"}
    md = (only / "tables" / "resnet50.md").read_text()
    assert "Not run yet" not in md and "| classifier_only" not in md and "imagenet" not in md
    assert set(pd.read_csv(only / "tables" / "resnet50.csv").method) == {
        "piggyback", "finetune", "lora"
    }  # fmt: skip

    with pytest.raises(SystemExit) as err:
        script.main(["--runs", str(budgets), "--out", str(out), "--method", "pigyback"])
    assert err.value.code == 2 and "--method pigyback: no record" in capsys.readouterr().err


def test_a_sweep_figure_plots_validation_top1_labelled_with_its_legend_outside(
    tmp_path: Path, monkeypatch
) -> None:
    from piggyback_lab.reporting import figures

    d = tmp_path / "runs"
    for lr, val, tests in ((1e-4, 40.0, (90.0, 92.0)), (1e-3, 45.0, (10.0, 12.0))):
        for seed, acc in enumerate(tests):
            record(d, "minicnn", "piggyback", "cub", seed, acc, val_top1=val + seed, lr=lr)
    frame = records_frame(read_records(d))
    [(label, pts)] = figures.sweep_lines(frame, "method.lr").items()
    assert label == "cub" and list(pts.index) == [1e-4, 1e-3]
    assert list(pts["mean"]) == [40.5, 45.5]  # validation top-1, not test (91, 11)
    assert pts["std"].tolist() == pytest.approx([math.sqrt(0.5)] * 2)

    seen = {}

    def capture(fig, path: Path) -> Path:
        ax = fig.axes[0]
        fig.canvas.draw()
        legend = ax.get_legend().get_window_extent()
        seen[path.name] = (ax.get_xlabel(), ax.get_ylabel(), legend.x0 >= ax.bbox.x1)
        return path

    monkeypatch.setattr(figures, "save_figure", capture)
    figures.plot_sweeps(frame, tmp_path)
    assert seen == {
        "sweep_lr_minicnn_piggyback.png": ("learning rate (lr)", "validation top-1 (%)", True)
    }
    assert figures.readable("method.threshold") == "threshold"


def test_configurations_that_differ_only_in_where_files_lie_are_one() -> None:
    """The same run over the same base in two clones (data and weights at other paths) is
    one configuration; a table note never prints a machine's path (a6ce102 printed them)."""
    from piggyback_lab.reporting.tables import differing_keys, variant_key

    def config(clone: str) -> dict:
        return {
            "seed": 1, "weights_fingerprint": "abc",
            "dataset": {"name": "d", "root": f"{clone}/data/d", "data_dir": f"{clone}/data"},
            "backbone": {"name": "b", "weights": f"{clone}/data/pretrained/b.safetensors"},
            "method": {"name": "m", "lr": 0.1},
        }  # fmt: skip

    here, there = config("/home/a/clone"), config("/srv/b/clone")
    assert variant_key(here) == variant_key(there)
    assert differing_keys([here, there]) == []
    other = {**there, "weights_fingerprint": "def"}
    assert differing_keys([here, other]) == ["backbone.weights", "weights_fingerprint"]
