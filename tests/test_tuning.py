"""The tuning protocol: a declared grid chosen on validation, final runs at n seeds tested
once, recorded with what was searched and chosen; resumable; through the tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from piggyback_lab.runs.config import compose
from piggyback_lab.runs.records import read_records
from piggyback_lab.runs.tuning import (
    candidates,
    check_cell,
    choose,
    hydra_value,
    search_space,
    tuning_note,
)
from piggyback_lab.utils.errors import UserError
from tests.conftest import ROOT, run_module


def test_the_grid_is_every_combination_in_declared_order() -> None:
    grid = candidates({"lr": [1e-3, 1e-2], "r": [4, 8]})
    assert grid == [
        {"lr": 1e-3, "r": 4}, {"lr": 1e-3, "r": 8}, {"lr": 1e-2, "r": 4}, {"lr": 1e-2, "r": 8},
    ]  # fmt: skip


def test_choose_takes_the_best_mean_and_the_first_on_a_tie() -> None:
    a, b, c = {"lr": 1}, {"lr": 2}, {"lr": 3}
    assert choose([(a, [50.0, 60.0]), (b, [56.0, 54.0]), (c, [40.0])]) == (a, 55.0)
    assert choose([(a, [None]), (b, [10.0])]) == (b, 10.0)  # a failed candidate is left out
    with pytest.raises(UserError, match="no candidate"):
        choose([(a, [None])])


def test_each_method_declares_a_grid_of_its_own_settings() -> None:
    for method in ("piggyback", "finetune", "classifier_only", "lora", "parallel_adapters"):
        space = search_space(compose([f"method={method}"]).method)
        assert len(space["lr"]) == 3
    # A key of the grid is changed as any key, added with + and dropped with ~.
    method = compose(["method=lora", "method.search.lr=[1e-3]", "+method.search.r=[4,16]"]).method
    assert search_space(method) == {"lr": [1e-3], "r": [4, 16]}
    method = compose(["method=lora", "~method.search.lr", "+method.search.r=[4]"]).method
    assert search_space(method) == {"r": [4]}


@pytest.mark.parametrize(
    "search, message",
    [("+method.search.treshold=[1]", "no setting method.treshold"),
     ("method.search.lr=[]", "empty list")],
)  # fmt: skip
def test_a_bad_grid_is_refused(search: str, message: str) -> None:
    method = compose(["method=piggyback", search]).method
    with pytest.raises(UserError, match=message):
        search_space(method)


def test_a_cell_may_not_fix_what_the_protocol_sets() -> None:
    check_cell(["dataset=mini_digits", "method=lora"])
    for override in ("seed=3", "protocol=faithful", "+tuning=x"):
        with pytest.raises(UserError, match="the tuning protocol sets"):
            check_cell([override])


def test_the_note_reads_back_through_hydra_as_written() -> None:
    note = tuning_note(
        {"lr": [1e-4, 0.1], "optimizer.weight_decay": [0.0]},
        [({"lr": 1e-4, "optimizer.weight_decay": 0.0}, [51.25]),
         ({"lr": 0.1, "optimizer.weight_decay": 0.0}, [None])],
        {"lr": 1e-4, "optimizer.weight_decay": 0.0}, 51.25, [0], ["run's id"],
    )  # fmt: skip
    parsed = OverridesParser.create().parse_overrides([f"tuning={hydra_value(note)}"])[0]
    assert parsed.value() == note


def test_the_run_id_ignores_the_grid_and_the_tuning_note() -> None:
    from piggyback_lab.runs.identity import run_identity

    base = ["method=classifier_only", "paths.output_dir=/unused"]
    plain = compose(base)
    noted = compose([*base, "method.search.lr=[1.0]", "tuning={role:final,x:1}"])
    assert run_identity(plain)[0] == run_identity(noted)[0]


def _tune(tmp_path: Path, *extra: str):
    return run_module(
        "src.train", "-m", "hydra/sweeper=tuning", "dataset=mini_digits",
        "method=classifier_only", "method.search.lr=[1e-4,0.05]", "hydra.sweeper.seeds=[0,1,2]",
        "method.epochs=1", "trainer.limit_val_batches=1.0", "num_workers=0",
        "trainer.enable_progress_bar=false", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.log_dir={tmp_path / 'logs'}", *extra, timeout=600,
    )  # fmt: skip


def test_tuning_a_real_network_chooses_on_validation_and_tests_three_seeds(
    tmp_path: Path,
) -> None:
    """EfficientNet-Lite0's real ImageNet weights on the digits: two learning rates searched
    on validation, the better one trained at three seeds on train + val, tested once."""
    result = _tune(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = read_records(tmp_path / "results" / "runs")
    search = [r for r in records if r["config"]["tuning"]["role"] == "search"]
    final = [r for r in records if r["config"]["tuning"]["role"] == "final"]
    assert len(search) == 2 and {r["protocol"] for r in search} == {"clean"}
    assert all(r["top1"] is None and r["val_top1"] is not None for r in search)  # never tested
    assert len(final) == 3 and {r["protocol"] for r in final} == {"final"}
    best = max(search, key=lambda r: r["val_top1"])  # ties: the grid's first, 1e-4
    if search[0]["val_top1"] == search[1]["val_top1"]:
        best = min(search, key=lambda r: r["config"]["method"]["lr"])
    note = final[0]["config"]["tuning"]
    assert note["chosen"] == {"lr": best["config"]["method"]["lr"]}
    assert {r["config"]["method"]["lr"] for r in final} == {best["config"]["method"]["lr"]}
    assert sorted(note["search_runs"]) == sorted(r["run_id"] for r in search)
    assert {r["seed"] for r in final} == {0, 1, 2} and all(r["top1"] > 10 for r in final)
    sweep = next((tmp_path / "logs" / "multiruns").iterdir())
    assert json.loads((sweep / "tuning.json").read_text())[0]["tuning"]["chosen"] == note["chosen"]

    again = _tune(tmp_path)  # resumable: every run is recorded, nothing trains
    assert again.returncode == 0 and "5 jobs: 0 ran, 5 skipped" in again.stdout

    tables = run_module(
        "scripts.make_tables", "--runs", str(tmp_path / "results" / "runs"),
        "--out", str(tmp_path / "tables"), "--only-run", cwd=ROOT,
    )  # fmt: skip
    assert tables.returncode == 0, tables.stderr
    table = (tmp_path / "tables" / "tables" / "efficientnet_lite0.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| classifier_only"))
    assert "n=3" in row  # the final runs; the search runs are no cells
    chosen = format(note["chosen"]["lr"], "g")
    assert "Tuned classifier_only (docs/tuning.md): lr ∈ {0.0001, 0.05} on val" in table
    assert f"chosen: mini_digits: lr={chosen}." in table


def test_the_sweeper_is_the_presets_and_composes() -> None:
    for preset in ("vtab", "fgvc"):
        cfg = compose([f"experiment={preset}"], config_name="config")
        assert cfg.method.lr_schedule == "cosine" and cfg.method.epochs == 100
    text = (ROOT / "conf" / "hydra" / "sweeper" / "tuning.yaml").read_text()
    assert OmegaConf.create(text).seeds == [0, 1, 2]
