"""On the data a backbone was trained on, the paper scores the pretrained network as it is
(its ImageNet column; the Decathlon's imagenet12): one test pass, no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from piggyback_lab.models import build_backbone
from piggyback_lab.runs.builders import build_datamodule
from piggyback_lab.runs.config import compose
from piggyback_lab.utils.errors import UserError
from tests.conftest import make_image_folder, tiny_overrides, train_in_process

CLASSES = 10  # minicnn's own classifier


def _overrides(tmp_path: Path, weights: Path, *extra: str) -> list[str]:
    """A 10-class tree declared the minicnn's own pretraining data."""
    data = make_image_folder(tmp_path / "own", classes=CLASSES, per_class=2)
    return [
        *tiny_overrides(tmp_path, weights, data, CLASSES),
        f"paths.output_dir={tmp_path / 'outputs'}",
        "backbone.base_dataset=mini_digits",
        *extra,
    ]


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def test_own_data_is_scored_as_the_pretrained_network_by_every_method(
    tmp_path: Path, minicnn_weights: Path
) -> None:
    own = _overrides(tmp_path, minicnn_weights)
    for method in ("piggyback", "finetune", "classifier_only"):
        train_in_process(*own, f"method={method}")
    train_in_process(*own, "method=piggyback", "method.mask_init=uniform", "method.mask_scale=1e-2")
    records = _records(tmp_path / "results")
    assert len(records) == 4
    assert all(r["pretrained_as_is"] and r["epochs"] == 0 for r in records)
    assert all(r["best_checkpoint"] is None for r in records)
    assert [r["val_top1"] for r in records] == pytest.approx([records[0]["val_top1"]] * 4)

    cfg = compose(own)
    datamodule = build_datamodule(cfg)
    datamodule.setup("test")
    model = build_backbone("minicnn", str(minicnn_weights), CLASSES, keep_classifier=True).eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in datamodule.test_dataloader())
    expected = 100.0 * hits / len(datamodule.test_set)
    assert [r["top1"] for r in records] == pytest.approx([expected] * 4, abs=1e-4)


def test_pretrained_as_is_false_trains_on_the_own_data(
    tmp_path: Path, minicnn_weights: Path
) -> None:
    train_in_process(*_overrides(tmp_path, minicnn_weights, "pretrained_as_is=false"))
    (record,) = _records(tmp_path / "results")
    assert record["pretrained_as_is"] is False and record["epochs"] == 1


def test_a_classifier_of_another_size_cannot_be_scored_as_it_is(minicnn_weights: Path) -> None:
    with pytest.raises(UserError, match=r"hold no 7-class classifier.*pretrained_as_is=false"):
        build_backbone("minicnn", str(minicnn_weights), 7, keep_classifier=True)


def test_under_faithful_the_one_test_pass_is_also_the_validation_score(
    tmp_path: Path, minicnn_weights: Path
) -> None:
    train_in_process(*_overrides(tmp_path, minicnn_weights, "protocol=faithful"))
    (record,) = _records(tmp_path / "results")
    assert record["pretrained_as_is"] and record["val_top1"] == record["top1"]


def test_the_classifier_stored_with_the_weights_is_read_by_name(minicnn_weights: Path) -> None:
    from piggyback_lab.models.registry import pretrained_classifier

    head = pretrained_classifier("minicnn", str(minicnn_weights))
    assert set(head) == {"weight", "bias"} and head["weight"].shape == (10, 128)
    assert pretrained_classifier("minicnn", None) == {}
