"""Shared fixtures: tiny ImageFolder trees, random minicnn weights, running the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
# Property tests (Hypothesis): no per-example deadline, since two cores shared with other
# work make timings noise; derandomized under CI, so a failure there reproduces exactly.
settings.register_profile("project", deadline=None, derandomize=bool(os.environ.get("CI")))
settings.load_profile("project")
CONF = ROOT / "conf"


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 12) -> Path:
    """root/{train,test}/<class>/<n>.png with class-dependent brightness, so it is learnable."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", max(1, per_class // 2))):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = int(255 * (c + 0.5) / classes)
                pixels = np.clip(base + rng.integers(-20, 20, (size, size)), 0, 255).astype(
                    np.uint8
                )
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "tiny")


@pytest.fixture(scope="session")
def minicnn_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from piggyback_lab.models import build_backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "minicnn_random.safetensors"
    save_file(build_backbone("minicnn", None, 10).state_dict(), str(path))
    return path


# One epoch of tiny batches of the small CNN on the CPU, no pretraining, no worker processes.
TINY_BUDGET = [
    "backbone=minicnn",
    "backbone.pretrain=false",
    "method.epochs=1",
    "method.batch_size=4",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "num_workers=0",
]


def tiny_overrides(tmp_path: Path, weights: Path, data_root: Path, classes: int = 3) -> list[str]:
    """Overrides that make `src.train` run in seconds on a tiny ImageFolder tree."""
    return [
        "dataset=mini_digits",
        f"dataset.root={data_root}",
        f"dataset.num_classes={classes}",
        f"backbone.weights={weights}",
        *TINY_BUDGET,
        f"paths.results_dir={tmp_path / 'results'}",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]


def run_module(module: str, *args: str, cwd: Path = ROOT, timeout: int = 300):
    """Run ``python -m module args`` as a user would; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_on_minivit(tmp_path: Path, *method_overrides: str) -> tuple[dict, Path, Path]:
    """``src.train`` with ``method_overrides`` on random minivit weights and a tiny
    ImageFolder tree, as a user runs it; returns (its record, the weights, the data)."""
    from piggyback_lab.models import build_backbone
    from piggyback_lab.runs.records import read_records

    torch.manual_seed(0)
    weights = tmp_path / "minivit.safetensors"
    save_file(build_backbone("minivit", None, 10).state_dict(), str(weights))
    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=32)
    overrides = [o for o in tiny_overrides(tmp_path, weights, data) if o not in TINY_BUDGET]
    budget = [o.replace("=minicnn", "=minivit") for o in TINY_BUDGET]
    done = run_module(
        "src.train", *method_overrides, *overrides, *budget,
        f"hydra.run.dir={tmp_path / 'outputs' / 'job'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = read_records(tmp_path / "results" / "runs")
    return record, weights, data


def train_in_process(*overrides: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from piggyback_lab.runs import run

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # as under @hydra.main: the job's config has no hydra node
        del cfg["hydra"]
    assert run(cfg) is not None


def method_for(
    model, method: str = "piggyback", num_classes: int = 4, *overrides: str, backbone="minicnn"
):
    """The method module conf/method/<method>.yaml builds around ``model`` (a ``backbone``),
    with ``overrides`` of that config (e.g. ``method.lr=5e-3``)."""
    from piggyback_lab.runs.builders import build_method
    from piggyback_lab.runs.config import compose

    cfg = compose([f"method={method}", f"backbone={backbone}", "trainer=cpu", *overrides])
    return build_method(cfg, num_classes, model=model)


def tiny_net() -> torch.nn.Module:
    """conv -> pool -> Linear -> classifier ``fc``: a backbone with a conv and a Linear to
    mask, for tests of task files and hosts that need no data."""
    from collections import OrderedDict

    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 5, 3),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            mid=nn.Linear(5, 7),
            fc=nn.Linear(7, 4),
        )
    )


def assert_refused_by_fold_and_host(tf, net, classifier: str, message: str) -> None:
    """``tf`` (a TaskFile) is refused with ``message`` (a regex) both when folded into a
    fresh ``net()`` and when hosted beside it: the two ways a task meets a backbone."""
    from piggyback_lab.methods import method_of
    from piggyback_lab.methods.multitask import MultiTaskModel
    from piggyback_lab.utils.errors import UserError

    with pytest.raises(UserError, match=message):
        method_of(tf).fold(net(), tf, classifier)
    with pytest.raises(UserError, match=message):
        MultiTaskModel("sequential", None, [tf], model=net(), classifier=classifier)


def assert_folded_and_hosted_match(task, path: Path, net, classifier: str, x) -> None:
    """The task stored at ``path`` gives the trained ``task``'s outputs on ``x`` (within
    1e-5) both folded into a fresh ``net()`` and hosted beside it."""
    from piggyback_lab.methods.api import fold_task
    from piggyback_lab.methods.multitask import MultiTaskModel

    task.eval()
    with torch.no_grad():
        expected = task.model(x)
        folded = fold_task(net(), path, classifier=classifier)(x)
    hosted = MultiTaskModel("sequential", None, [path], model=net(), classifier=classifier)
    torch.testing.assert_close(folded, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(hosted.predict(x, path.stem), expected, rtol=0, atol=1e-5)


def edited_task_file(tf, tensors=None, layers=None, meta=None):
    """A copy of TaskFile ``tf`` with ``tensors(dict)`` and ``meta(dict)`` applied in place
    to copies of its tensors and metadata, and its ``layers`` replaced by ``layers(old)``:
    the corrupt files the task tests feed to each method's check."""
    from piggyback_lab.taskfile import TaskFile

    new_tensors, new_meta = dict(tf.tensors), {**tf.meta, "layers": dict(tf.meta["layers"])}
    if tensors:
        tensors(new_tensors)
    if layers:
        new_meta["layers"] = layers(new_meta["layers"])
    if meta:
        meta(new_meta)
    return TaskFile(path=tf.path, meta=new_meta, tensors=new_tensors)


def published_mask(**changes):
    """The published mask settings (conf/method/piggyback.yaml), with ``changes``."""
    from dataclasses import fields

    from piggyback_lab.methods.piggyback.layers import MaskConfig
    from piggyback_lab.runs.config import compose

    method = compose(["method=piggyback"]).method
    return MaskConfig(**{f.name: method[f.name] for f in fields(MaskConfig)} | changes)


def expected_masked_count(model: nn.Module, classifier: str) -> int:
    """Counted apart from the code under test: every Conv1d/2d/3d and Linear weight and every
    attention in_proj weight outside the classifier."""
    count = 0
    for name, module in model.named_modules():
        if name == classifier or name.startswith(classifier + "."):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            count += module.weight.numel()
        if isinstance(module, nn.MultiheadAttention):
            count += module.in_proj_weight.numel()
    return count
