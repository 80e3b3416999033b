"""Dry runs of the yardstick's presets: ``experiment=vtab`` and ``experiment=fgvc`` with the
real ViT-B/16 architecture (random weights: the hub is out of reach) on miniatures of every
task, one batch per phase, through the tuning protocol and the tables, which print both VTAB
means and the bytes a task costs. Slow: ~35 s a run on 2 CPU cores (docs/testing.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from piggyback_lab.runs.records import read_records
from tests.conftest import ROOT, run_module
from tests.yardstick_data import FGVC_DATASETS, MINI_VTAB_SIZES, make_fgvc, make_vtab

ONE_BATCH = [
    "method=piggyback", "backbone.weights=null", "method.epochs=1", "method.batch_size=2",
    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1", "num_workers=0", "hydra.sweeper.seeds=[0]",
]  # fmt: skip


def _dry_run(tmp_path: Path, preset: str, *extra: str) -> list[dict]:
    result = run_module(
        "src.train", "-m", f"experiment={preset}", *ONE_BATCH, *extra,
        f"paths.data_dir={tmp_path / 'data'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.log_dir={tmp_path / 'logs'}", timeout=3600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return read_records(tmp_path / "results" / "runs")


def _tables(tmp_path: Path, benchmark: str) -> str:
    result = run_module(
        "scripts.make_tables", "--runs", str(tmp_path / "results" / "runs"),
        "--out", str(tmp_path / "out"), "--include-cut-short", "--only-run", cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return (tmp_path / "out" / "tables" / f"{benchmark}_vit_base_patch16_224.md").read_text()


@pytest.mark.slow
def test_the_vtab_preset_runs_all_19_tasks_through_tuning_and_the_tables(tmp_path: Path) -> None:
    make_vtab(tmp_path / "data" / "vtab-1k")
    records = _dry_run(tmp_path, "vtab", "method.search.lr=[1e-4]", f"++{MINI_VTAB_SIZES}")
    final = [r for r in records if r["config"]["tuning"]["role"] == "final"]
    assert len(records) == 38 and len(final) == 19
    assert {r["config"]["method"]["lr_schedule"] for r in final} == {"cosine"}
    table = _tables(tmp_path, "vtab")
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "mean (19 tasks)" in header and "mean of group means" in header
    row = next(line for line in table.splitlines() if line.startswith("| piggyback"))
    assert row.count("(n=1)") == 19 and "—" not in row.split("|")[-6]  # both means printed
    assert "stored (MB/task)" in header and "mask entropy bound" in header


@pytest.mark.slow
def test_the_fgvc_preset_runs_the_five_datasets_through_tuning_and_the_tables(
    tmp_path: Path,
) -> None:
    for name in FGVC_DATASETS:
        make_fgvc(tmp_path / "data" / "fgvc", name)
    records = _dry_run(
        tmp_path, "fgvc", "method.search.lr=[1e-4,1e-3]", "++dataset.split_sizes=null"
    )
    final = [r for r in records if r["config"]["tuning"]["role"] == "final"]
    assert len(records) == 15 and len(final) == 5
    assert all(r["config"]["tuning"]["space"] == {"lr": [1e-4, 1e-3]} for r in final)
    table = _tables(tmp_path, "fgvc")
    row = next(line for line in table.splitlines() if line.startswith("| piggyback"))
    assert row.count("(n=1)") == 5
