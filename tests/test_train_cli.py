"""`python -m src.train` end to end on a tiny tree, and its bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from piggyback_lab.taskfile import read_task_file
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
    assert 0.0 <= record["top1"] <= 100.0
    assert record["top5"] is None  # 3 classes: top-5 would be 100% whatever was learned
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


def test_final_protocol_trains_on_all_of_train_and_keeps_the_last_epoch(
    tmp_path, tiny_folder, minicnn_weights
) -> None:
    import torch

    from piggyback_lab.data.datamodule import ImageFolderDataModule

    tf = {"style": "resize_exact", "size": 12, "flip": False, "mean": [0.5] * 3, "std": [0.5] * 3}
    dm = ImageFolderDataModule(tiny_folder, 3, tf, protocol="final", verify_images=False)
    dm.setup("fit")
    assert len(dm.train_set) == 12 and dm.val_set is None and dm.val_dataloader() == []

    args = [*tiny_overrides(tmp_path, minicnn_weights, tiny_folder), "protocol=final"]
    args.append("keep_checkpoints=true")  # to compare best.ckpt with last.ckpt
    proc = run_module("src.train", *args, "method.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = (tmp_path / "results" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["protocol"] == "final" and record["val_top1"] is None
    assert record["epochs"] == 2 and 0.0 <= record["top1"] <= 100.0
    ckpts = tmp_path / "outputs" / "checkpoints" / record["run_id"]
    kept, last = (torch.load(ckpts / f, weights_only=True) for f in ("best.ckpt", "last.ckpt"))
    assert kept["epoch"] == last["epoch"] == 1  # nothing selected: the last epoch is kept
    for key, value in last["state_dict"].items():
        assert torch.equal(kept["state_dict"][key], value), key
