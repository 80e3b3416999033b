"""`python -m src.train` end to end on a tiny tree, and its bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from src.masking import read_task_file
from tests.conftest import run_module, tiny_overrides


@pytest.mark.parametrize("method", ["piggyback", "finetune", "classifier_only"])
def test_train_writes_record_and_task_file(method, tmp_path, tiny_folder, minicnn_weights) -> None:
    proc = run_module(
        "src.train", *tiny_overrides(tmp_path, minicnn_weights, tiny_folder), f"method={method}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = list((tmp_path / "results" / "runs").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["method"] == method and record["dataset"] == "mini_digits"
    assert 0.0 <= record["top1"] <= 100.0 and record["top5"] >= record["top1"]
    for key in (
        "seed",
        "config",
        "code_version",
        "wall_time_s",
        "task_state_bytes",
        "mask_density",
    ):
        assert key in record
    task = read_task_file(record["task_file"])
    assert task.meta["kind"] == {"piggyback": "piggyback", "finetune": "full"}.get(
        method, "classifier"
    )
    assert record["task_state_bytes"] == Path(record["task_file"]).stat().st_size
    if method == "piggyback":
        assert set(record["mask_density"]) == set(task.meta["layers"])
    assert "test top-1" in proc.stdout


def test_rerun_with_same_config_skips(tmp_path, tiny_folder, minicnn_weights) -> None:
    args = tiny_overrides(tmp_path, minicnn_weights, tiny_folder)
    assert run_module("src.train", *args).returncode == 0
    again = run_module("src.train", *args)
    assert again.returncode == 0 and "skip: record" in again.stdout
    assert len(list((tmp_path / "results" / "runs").glob("*.json"))) == 1


def _fails_cleanly(proc, *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out, out[-2000:]
    for needle in needles:
        assert needle in out, out[-2000:]


def test_missing_dataset_names_folder_and_prepare_command(tmp_path) -> None:
    proc = run_module("src.train", "dataset=cub", "backbone=resnet50", f"paths.data_dir={tmp_path}")
    _fails_cleanly(proc, f"{tmp_path}/cub/train not found", "python scripts/prepare_data.py cub")


@pytest.mark.parametrize(
    "override, needles",
    [
        ("dataset=imagenet_typo", ["dataset/imagenet_typo", "cub", "mini_digits"]),
        ("backbone=resnet5", ["backbone/resnet5", "resnet50", "vgg16_bn"]),
        ("method=pigyback", ["method/pigyback", "piggyback", "finetune"]),
    ],
)
def test_unknown_group_value_lists_the_choices(override, needles) -> None:
    _fails_cleanly(run_module("src.train", override), *needles)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("method.threshold=0", "threshold must be > 0"),
        ("method.lr=-1e-4", "method.lr must be a positive number"),
        ("method.mask_init=zeros", "unknown mask_init 'zeros'"),
        ("method.threshold_fn=sign", "unknown threshold function 'sign'"),
    ],
)
def test_bad_method_values_fail_cleanly(
    override, needle, tmp_path, tiny_folder, minicnn_weights
) -> None:
    proc = run_module(
        "src.train", *tiny_overrides(tmp_path, minicnn_weights, tiny_folder), override
    )
    _fails_cleanly(proc, needle)
    assert not (tmp_path / "results" / "runs").exists()
