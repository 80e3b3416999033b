"""The "trust" issue's leftovers: each class of fault below ran, or misled, before its fix.

Out-of-range method values (an lr of -1 trained by gradient ascent), top-5 of 5 classes or
fewer (always 100%), terminal output that erased each epoch's line, wandb runs named at
random, Python API misuse ending in raw errors, 16-bit PNGs clipped to white, links and
FIFOs among the images, and Hydra's own folders and job count ending in tracebacks.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from piggyback_lab.utils.errors import UserError
from tests.conftest import ROOT, make_image_folder, run_module


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# --- 1. values that must be in a range ----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=affine_masks", "method.affine_lr=-1"], "method.affine_lr must be a positive"),
        (["method.optimizer.weight_decay=-1e-4"], "weight_decay must be a number >= 0"),
        (["method=packnet", "method.base_retrain.lr=0"], "base_retrain.lr must be a positive"),
        (["method=packnet", "method.retrain_lr=-1e-3"], "method.retrain_lr must be a positive"),
        (["method=packnet", "method.retrain_epochs=-1"], "retrain_epochs must be an integer >= 0"),
        (["method=finetune", "method.optimizer.momentum=1.5"], "momentum must be in [0, 1)"),
        (["method=lora", "method.r=0"], "method.r must be an integer >= 1"),
        (["method.lr=nan"], "method.lr must be a positive"),
        (["method.lr_decay_factor=0"], "method.lr_decay_factor must be a number in (0, 1]"),
        (["method.epochs=0"], "method.epochs must be an integer >= 1"),
        (["method.batch_size=-4"], "method.batch_size must be an integer >= 1"),
        (["method.mask_scale=-1e-2"], "method.mask_scale must be a positive"),
    ],
)  # fmt: skip
def test_an_out_of_range_method_value_is_refused_at_composition(
    overrides: list[str], message: str
) -> None:
    from piggyback_lab.runs.config import compose

    with pytest.raises(UserError) as err:
        compose(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def _numeric_fields(config: type, where: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(config):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if dataclasses.is_dataclass(default):
            out += _numeric_fields(type(default), f"{where}{f.name}.")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            out.append(f"{where}{f.name}")
    return out


def test_every_rate_length_batch_and_decay_setting_of_every_method_has_a_range() -> None:
    """The kind, not the example: every learning rate, epoch count, batch size, weight decay
    and decay step of every registered method config is checked by one rule table."""
    from piggyback_lab.methods import config_named, config_names
    from piggyback_lab.methods.ranges import range_of

    kinds = ("lr", "epochs", "batch_size", "weight_decay", "lr_decay_every", "lr_decay_factor")
    for name in config_names():
        for key in _numeric_fields(config_named(name)):
            leaf = key.rpartition(".")[2]
            if leaf.endswith(kinds):
                assert range_of(leaf) is not None, f"{name}: {key} has no range"


def test_every_default_is_in_its_range() -> None:
    from piggyback_lab.methods import config_named, config_names
    from piggyback_lab.methods.ranges import check_settings

    for name in config_names():
        check_settings(config_named(name)(), "method.")


def test_wrap_refuses_an_out_of_range_setting() -> None:
    from piggyback_lab import wrap
    from tests.conftest import tiny_net

    with pytest.raises(UserError, match=r"affine_lr must be a positive number \(> 0\), not -1"):
        wrap(tiny_net(), "affine_masks", classifier="fc", num_classes=3, affine_lr=-1)
    with pytest.raises(UserError, match="classifier_lr must be a positive number"):
        wrap(tiny_net(), "piggyback", classifier="fc", num_classes=3, classifier_lr=0.0)


def test_a_negative_learning_rate_on_the_command_line_is_one_error_line() -> None:
    proc = run_module("src.train", "method=affine_masks", "method.affine_lr=-1", timeout=120)
    _one_error_line(proc, "method.affine_lr must be a positive number (> 0), not -1")


# --- 2. top-5 only where it says something -------------------------------------------------


def test_top5_is_left_out_for_five_classes_or_fewer() -> None:
    from piggyback_lab.methods.base import accuracy_metrics, top_k_score

    assert sorted(accuracy_metrics(5)) == ["top1"]
    assert sorted(accuracy_metrics(6)) == ["top1", "top5"]
    assert top_k_score({"test/top5": 1.0}, 5, 3) is None
    assert top_k_score({"test/top5": 0.5}, 5, 10) == 50.0
    assert top_k_score({}, 5, 10) is None


def test_a_task_module_logs_no_validation_top5_for_three_classes() -> None:
    from piggyback_lab import wrap
    from tests.conftest import tiny_net

    three = wrap(tiny_net(), "piggyback", classifier="fc", num_classes=3)
    assert sorted(three.val_metrics) == ["val/top1"]
    ten = wrap(tiny_net(), "piggyback", classifier="fc", num_classes=10)
    assert sorted(ten.val_metrics) == ["val/top1", "val/top5"]


def test_scores_text_and_tables_take_a_record_without_top5() -> None:
    from piggyback_lab.reporting.tables import records_frame
    from piggyback_lab.runs.console import scores_text

    record = {"backbone": "minicnn", "method": "piggyback", "dataset": "d", "top1": 90.0}
    assert scores_text({**record, "top5": None}) == "test top-1 90.00%"
    assert scores_text({**record, "top5": 99.0}) == "test top-1 90.00%  top-5 99.00%"
    frame = records_frame([{**record, "top5": None, "run_id": "r"}])
    assert list(frame["top1"]) == [90.0]


def test_src_eval_scores_no_top5_for_three_classes() -> None:
    from piggyback_lab.runs.evaluate import _score

    class Host:
        def predict(self, x: torch.Tensor, name: str, batch_size: int) -> torch.Tensor:
            return torch.nn.functional.one_hot(x.long().flatten(), 3).float()

    class Data:
        root = "d"

        def test_dataloader(self) -> list:
            return [(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))]

    top1, top5, n = _score(Host(), "t", Data(), 3, 8)
    assert (round(top1, 2), top5, n) == (66.67, None, 3)


# --- 3. terminal output -------------------------------------------------------------------


def _cfg(tmp_path: Path, *overrides: str) -> Any:
    from piggyback_lab.runs.config import compose

    cfg = compose(["trainer=cpu", f"paths.log_dir={tmp_path}", *overrides])
    cfg.paths.output_dir = str(tmp_path / "out")
    return cfg


def test_on_a_terminal_each_epoch_keeps_its_line_and_top1_is_in_percent(tmp_path: Path) -> None:
    from piggyback_lab.runs.builders import build_trainer
    from piggyback_lab.runs.console import EpochBar, shown_metrics

    trainer = build_trainer(_cfg(tmp_path), 2, enable_progress_bar=True, logger=False)
    [bar] = [c for c in trainer.callbacks if isinstance(c, EpochBar)]
    assert bar._leave is True
    shown = shown_metrics({"val/top1": 0.2, "val/top5": 0.75, "train/loss": 1.5})
    assert shown == {"val/top1": "20.00%", "val/top5": "75.00%", "train/loss": 1.5}


def test_the_start_banner_says_what_runs_what_trains_and_where_it_goes(tmp_path: Path) -> None:
    from piggyback_lab import wrap
    from piggyback_lab.runs.console import run_banner
    from tests.conftest import tiny_net

    cfg = _cfg(tmp_path)
    task = wrap(tiny_net(), "piggyback", classifier="fc", num_classes=3)
    total = sum(p.numel() for p in task.model.parameters())
    lines = run_banner(cfg, "rid123", task, Path("r/rid123.json"), Path("t/rid123.safetensors"))
    assert "rid123" in lines[0] and "piggyback on mini_digits" in lines[0]
    assert f"trains {task.trainable_parameter_count():,} of {total:,} parameters" in lines[1]
    assert "r/rid123.json" in lines[2] and "t/rid123.safetensors" in lines[2]


# --- 4. wandb and the learning rate ---------------------------------------------------------


def test_a_wandb_run_is_named_by_the_run_id(tmp_path: Path, monkeypatch) -> None:
    from pytorch_lightning.loggers import WandbLogger

    from piggyback_lab.runs.builders import build_loggers
    from piggyback_lab.runs.identity import run_identity

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = _cfg(tmp_path, "logger=wandb", "backbone=minicnn", "backbone.pretrain=false")
    cfg.backbone.weights = None
    [logger] = [lg for lg in build_loggers(cfg) if isinstance(lg, WandbLogger)]
    assert logger._wandb_init["name"] == run_identity(cfg)[0]
    assert "group" not in logger._wandb_init


def test_a_sweeps_wandb_runs_share_the_sweep_folder_as_group(tmp_path: Path, monkeypatch) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from pytorch_lightning.loggers import WandbLogger

    from piggyback_lab.utils.wandb_logger import make_wandb_logger
    from tests.conftest import CONF

    monkeypatch.setenv("WANDB_MODE", "disabled")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweep_dir = f"hydra.sweep.dir={tmp_path}/multiruns/2026-01-02_03-04-05"
        cfg = compose("config", return_hydra_config=True, overrides=[sweep_dir])
    cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        logger = make_wandb_logger(save_dir=str(tmp_path), project="p", name="rid")
    finally:
        HydraConfig.instance().cfg = None
    assert isinstance(logger, WandbLogger)
    assert logger._wandb_init["group"] == "2026-01-02_03-04-05"


class _Tiny(__import__("pytorch_lightning").LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def train_dataloader(self) -> Any:
        data = torch.utils.data.TensorDataset(torch.randn(8, 2))
        return torch.utils.data.DataLoader(data, batch_size=4)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.5)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, 0.1)]


def test_the_csv_log_holds_each_epochs_learning_rate(tmp_path: Path) -> None:
    import pandas as pd
    from pytorch_lightning.loggers import CSVLogger

    from piggyback_lab.runs.builders import build_trainer

    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = build_trainer(_cfg(tmp_path), 2, logger=[logger], enable_checkpointing=False)
    trainer.fit(_Tiny())
    frame = pd.read_csv(Path(logger.log_dir) / "metrics.csv")
    [column] = [c for c in frame.columns if c.startswith("lr-")]
    assert sorted(frame[column].dropna().round(6)) == [0.05, 0.5]


# --- 5. the Python API's misuse -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classifier": "fcx", "num_classes": 3}, "classifier='fcx' names no layer"),
        ({"classifier": "fcx"}, "classifier='fcx' names no layer"),
        ({"classifier": "conv", "num_classes": 3}, "names a Conv2d, not a Linear layer"),
        ({"classifier": "fc", "num_classes": 0}, "num_classes must be an integer >= 2"),
        ({"classifier": "fc", "num_classes": -1}, "num_classes must be an integer >= 2"),
    ],
)
def test_wrap_misuse_is_one_user_error(kwargs: dict, message: str) -> None:
    from piggyback_lab import wrap
    from tests.conftest import tiny_net

    net = tiny_net()
    assert isinstance(net.get_submodule("fc"), nn.Linear)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        wrap(net, "piggyback", **kwargs)


@pytest.mark.parametrize("num_classes", [0, -3])
def test_build_backbone_refuses_no_classes(num_classes: int) -> None:
    from piggyback_lab import build_backbone

    with pytest.raises(UserError, match="num_classes must be an integer >= 1"):
        build_backbone("minicnn", None, num_classes)


def test_bitfit_on_a_model_without_biases_is_refused_at_wrap_time(tmp_path: Path) -> None:
    from piggyback_lab import wrap

    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    with pytest.raises(UserError, match="bitfit needs biases: this Sequential has none"):
        wrap(net, "bitfit", classifier="3")


# --- 6. images ------------------------------------------------------------------------------


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path: Path) -> None:
    from piggyback_lab.data.datamodule import load_rgb

    values = np.full((8, 8), 32768, dtype=np.uint16)  # half of 16-bit white
    values[0, 0], values[0, 1] = 0, 65535
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(load_rgb(str(path), "d"))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert rgb[4, 4].tolist() == [128, 128, 128]
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]


def _module(root: Path) -> Any:
    from piggyback_lab.data.datamodule import ImageFolderDataModule

    transforms = {"style": "resize_exact", "size": 12, "flip": False}
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    return ImageFolderDataModule(root, 3, transforms, num_workers=0, normalisation=norm)


def test_a_link_to_a_parent_folder_inside_a_class_is_refused(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data")
    os.symlink(root / "train", root / "train" / "c0" / "everything")
    with pytest.raises(UserError, match=r"c0/everything links to .*remove the link"):
        _module(root).setup("fit")


def test_a_link_to_a_folder_outside_the_dataset_is_followed(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data")
    extra = make_image_folder(tmp_path / "extra") / "train" / "c0"
    os.symlink(extra, root / "train" / "c0" / "more")
    dm = _module(root)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 12 + 4


def test_a_fifo_among_the_images_is_refused_not_waited_on(tmp_path: Path) -> None:
    from piggyback_lab.data.datamodule import load_rgb

    root = make_image_folder(tmp_path / "data")
    fifo = root / "train" / "c1" / "stuck.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=r"stuck\.png is not a regular file"):
        _module(root).setup("fit")
    with pytest.raises(UserError, match="is not a regular file"):
        load_rgb(str(fifo), "d")  # the loader itself never opens it


# --- 7. Hydra's own settings ----------------------------------------------------------------


def test_an_unwritable_hydra_run_dir_is_one_error_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a folder under a file cannot be made, even by root
    proc = run_module("src.train", f"hydra.run.dir={blocker}/run", timeout=120)
    _one_error_line(proc, "hydra.run.dir", str(blocker))


def test_a_sweep_of_zero_jobs_is_one_error_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", "-m", "hydra/launcher=local_parallel",
         "hydra.launcher.n_jobs=0", "method.lr=1e-3,1e-2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    _one_error_line(proc, "hydra.launcher.n_jobs=0")
