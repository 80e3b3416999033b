"""Sweeps (Hydra multirun) are resumable; DDP keeps ranks identical; launcher configs compose."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, make_image_folder, run_module, tiny_overrides


def _records(tmp_path):
    return sorted((tmp_path / "results" / "runs").glob("*.json"))


def test_two_by_two_multirun_is_resumable(tmp_path, tiny_folder, minicnn_weights) -> None:
    args = [
        "-m",
        *tiny_overrides(tmp_path, minicnn_weights, tiny_folder),
        "method.threshold=4e-3,6e-3",
        "method.lr=1e-4,1e-3",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    first = run_module("src.train", *args, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    records = _records(tmp_path)
    assert len(records) == 4
    grid = {(r["config"]["method"]["threshold"], r["config"]["method"]["lr"]) for r in map(
        lambda p: json.loads(p.read_text()), records)}  # fmt: skip
    assert grid == {(4e-3, 1e-4), (4e-3, 1e-3), (6e-3, 1e-4), (6e-3, 1e-3)}
    mtimes = [p.stat().st_mtime_ns for p in records]

    again = run_module("src.train", *args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip: record") == 4 and "test top-1" not in again.stdout
    assert [p.stat().st_mtime_ns for p in _records(tmp_path)] == mtimes


def test_epoch_order_is_one_permutation_shared_out_by_rank() -> None:
    """One process reads the (seed, epoch) permutation in full; two DDP ranks each take every
    other place of that same order with the same per-place seeds, and Lightning keeps the
    sampler (a DistributedSampler) instead of putting bare indices in its place."""
    from torch.utils.data import DistributedSampler

    from piggyback_lab.data.datamodule import EpochSeededSampler

    data = list(range(7))
    alone = list(EpochSeededSampler(data, seed=3, epoch=2))
    generator = torch.Generator().manual_seed(3 * 100_003 + 2)
    assert [index for index, _ in alone] == torch.randperm(7, generator=generator).tolist()
    assert len({seed for _, seed in alone}) == 7
    ranks = [list(EpochSeededSampler(data, 3, 2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [len(share) for share in ranks] == [4, 4]  # padded to a multiple of the ranks
    assert ranks[0][:4] == alone[0::2] and ranks[1][:3] == alone[1::2]
    assert ranks[1][3][0] == alone[0][0]  # the pad repeats the order's start
    assert isinstance(EpochSeededSampler(data, 0), DistributedSampler)


def test_ddp_on_cpu_keeps_ranks_identical_and_writes_one_record(tmp_path, minicnn_weights) -> None:
    """Two CPU ranks: one record and task file, every rank with the same task, and a test
    top-1 over the 9 test images themselves (a distributed test sampler would pad them to
    10 with a repeat), as a single-process eval of the task file finds it."""
    from piggyback_lab.runs.evaluate import evaluate

    data = make_image_folder(tmp_path / "tiny", classes=3, per_class=6)  # 9 test images
    proc = run_module(
        "src.train",
        *tiny_overrides(tmp_path, minicnn_weights, data),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.deterministic=false",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(tmp_path)
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["world_size"] == 2 and record["ranks_agree"] is True
    tasks = list((tmp_path / "results" / "tasks").glob("*.safetensors"))
    assert len(tasks) == 1
    (alone,) = evaluate([f"tasks={tasks[0]}", f"out={tmp_path / 'evals'}", "backbone=minicnn",
                         f"backbone.weights={minicnn_weights}", f"dataset.root={data}",
                         f"paths.results_dir={tmp_path / 'results'}"])  # fmt: skip
    assert alone["n_test"] == 9 and alone["top1"] == pytest.approx(record["top1"])


@pytest.mark.parametrize("launcher, key", [("slurm", "partition"), ("local_parallel", "n_jobs")])
def test_launcher_configs_compose(launcher: str, key: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert key in cfg.hydra.launcher and "_target_" in cfg.hydra.launcher


def test_submitit_launcher_prints_with_cfg_job() -> None:
    proc = run_module("src.train", "--cfg", "hydra", "hydra/launcher=slurm")
    assert (
        proc.returncode == 0 and "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout
    )


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_presets_compose(experiment: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    if cfg.method.name == "packnet":  # one job runs the whole sequence
        from piggyback_lab.runs.config import dataset_config_names

        assert len(cfg.method.tasks) >= 2 and set(cfg.method.tasks) <= set(dataset_config_names())
    else:
        assert cfg.hydra.sweeper.params


def _batch_count_with_two_loader_workers() -> int:
    from torch.utils.data import TensorDataset

    from piggyback_lab.data.datamodule import SplitDataModule

    data = SplitDataModule(batch_size=4, num_workers=2, protocol="clean", seed=0)
    return sum(1 for _ in data._loader(TensorDataset(torch.zeros(12, 3)), shuffle=False))


def test_loader_workers_start_inside_a_joblib_worker() -> None:
    """hydra/launcher=local_parallel runs each job in a loky process, whose start method
    cannot start DataLoader workers (AttributeError: 'Process' object has no attribute 'env')."""
    from joblib import Parallel, delayed

    jobs = [delayed(_batch_count_with_two_loader_workers)() for _ in range(2)]
    assert Parallel(n_jobs=2, backend="loky")(jobs) == [3, 3]


def test_a_presets_dataset_settings_reach_every_task_of_a_sequence(monkeypatch) -> None:
    """A PackNet sequence composes each task's dataset config anew: what a preset set on the
    run's dataset (here a flip) must reach every task, and each task's size must follow the
    run's backbone (Lite0's small_image_size 64, not the mini tasks' 32)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from piggyback_lab.runs.config import compose, with_dataset

    # outside a Hydra app, as here; an earlier test in this process may have set one
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)

    tasks = "method.tasks=[mini_digits,fashion_mnist_subset]"
    lite0 = compose(["experiment=real_transfer", "method=packnet", tasks])
    preset = compose(["backbone=minicnn", "method=packnet", tasks])
    plain = preset.copy()
    OmegaConf.update(preset, "dataset.transforms.flip", True)  # as a preset's `dataset:` would
    for task in ("mini_digits", "fashion_mnist_subset"):
        ran = with_dataset(lite0, task).dataset
        assert (ran.name, ran.transforms.size) == (task, 64)
        assert ran.root == compose([f"dataset={task}"]).dataset.root
        assert with_dataset(preset, task).dataset.transforms.flip is True
        assert with_dataset(plain, task).dataset.transforms == {
            "style": "resize_exact", "size": 32, "flip": False}  # fmt: skip
