"""A dry run of the paper's tables on CPU: the real VGG-16, VGG-16-BN, ResNet-50 and
DenseNet-121 (random weights) through prepare_data -> the reproduction presets (every
method, the ImageNet column scored as the pretrained network, and the PackNet sequence with
its base retrained on ImageNet) -> make tables, one batch per phase, on miniature archives
in the official formats. Slow: `make test-all` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from piggyback_lab.data.prepare import Expected
from piggyback_lab.models import build_backbone
from tests.conftest import ROOT
from tests.test_prepare import _prep, make_cars, make_cub
from tests.test_prepare_imagenet import MINI, make_imagenet

PAPER_BACKBONES = ("vgg16", "vgg16_bn", "resnet50", "densenet121")
ONE_BATCH = [
    "backbone.weights=null",  # random weights: nothing to download
    "method.epochs=1", "method.batch_size=2", "trainer=cpu", "num_workers=0",
    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1", "dataset.transforms.size=64", "++dataset.transforms.resize=72",
]  # fmt: skip


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=1200,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_every_paper_table_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "cub_src").mkdir(), (tmp_path / "cars_src").mkdir()
    _prep("cub", make_cub(tmp_path / "cub_src"), data, Expected(3, 6, 6))
    _prep("cars", make_cars(tmp_path / "cars_src"), data, Expected(3, 6, 6))
    _prep("imagenet", make_imagenet(tmp_path), data, MINI)
    paths = [f"paths.data_dir={data}", f"paths.results_dir={tmp_path / 'results'}",
             f"paths.log_dir={tmp_path / 'outputs'}"]  # fmt: skip
    for backbone in PAPER_BACKBONES:
        _run(
            "-m", "src.train", "-m", "experiment=paper_table", f"backbone={backbone}",
            "dataset=cub", "dataset.num_classes=3", *ONE_BATCH, *paths, cwd=tmp_path,
        )  # fmt: skip
        # the ImageNet column: the network as it is, its own 3-class head (random weights)
        weights = tmp_path / f"{backbone}.safetensors"
        save_file(build_backbone(backbone, None, 3).state_dict(), str(weights))
        _run(
            "-m", "src.train", "-m", "experiment=paper_table", f"backbone={backbone}",
            "dataset=imagenet", "dataset.num_classes=3", *ONE_BATCH, *paths,
            f"backbone.weights={weights}", cwd=tmp_path,
        )  # fmt: skip
        weights.unlink()
        _run(
            "-m", "src.train", "experiment=paper_packnet", f"backbone={backbone}",
            "method.tasks=[cub,cars]", "method.retrain_epochs=1", *ONE_BATCH, *paths,
            "++dataset.num_classes=3", cwd=tmp_path,
        )  # fmt: skip
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*.json")]
    cells = {(r["backbone"], r["method"], r["dataset"]) for r in records}
    for backbone in PAPER_BACKBONES:
        for method in ("classifier_only", "finetune", "piggyback"):
            assert (backbone, method, "cub") in cells
            assert (backbone, method, "imagenet") in cells
        assert {(backbone, "packnet", d) for d in ("imagenet", "cub", "cars")} <= cells
    as_is = [r for r in records if r["dataset"] == "imagenet" and r["method"] != "packnet"]
    assert len(as_is) == 12 and all(r["pretrained_as_is"] and r["epochs"] == 0 for r in as_is)
    retrained = [r for r in records if r["dataset"] == "imagenet" and r["method"] == "packnet"]
    assert all(r["task_position"] == 0 and r["pruned"] for r in retrained)
    assert all(r["protocol"] == "faithful" for r in records)
    assert all(r["config"]["trainer"]["precision"] == "32-true" for r in records)

    _run("scripts/make_tables.py", "--runs", str(tmp_path / "results" / "runs"),
         "--out", str(tmp_path / "results"), "--include-cut-short", cwd=ROOT)  # fmt: skip
    for backbone in PAPER_BACKBONES:
        table = (tmp_path / "results" / "tables" / f"{backbone}.md").read_text()
        assert "piggyback" in table and "packnet" in table
