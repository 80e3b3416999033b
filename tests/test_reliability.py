"""Resume after SIGKILL, determinism, safe loading, atomic outputs, and clear bad-input messages."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from piggyback_lab.models import build_backbone
from piggyback_lab.runs.config import compose
from piggyback_lab.runs.identity import run_identity
from piggyback_lab.taskfile import read_task_file, state_digest
from piggyback_lab.utils.atomic import atomic_dir, atomic_path, atomic_write_json
from piggyback_lab.utils.errors import UserError
from tests.conftest import ROOT, make_image_folder, run_module, tiny_overrides


class _Exploit:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _Exploit(marker)}, fh)
    return path


def _fails_cleanly(proc, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-2000:]
    for needle in needles:
        assert needle in out, out[-2000:]
    return out


def _final_state(results: Path) -> tuple[dict, str]:
    (record_path,) = (results / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    digest = state_digest(read_task_file(record["task_file"]).tensors)
    numbers = {k: record[k] for k in ("top1", "top5", "val_top1", "epochs", "mask_density")}
    return numbers, digest


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path, minicnn_weights):
    """With the loader a user gets (num_workers=2, its workers fetching ahead) and random
    flips on: the killed and resumed run ends with the uninterrupted run's masks."""
    data = make_image_folder(tmp_path / "data", classes=3, per_class=12, size=16)
    common = [
        "method.epochs=3",
        "method.batch_size=2",
        "method.lr=1e-3",
        "dataset.transforms.flip=true",
    ]

    def args(name: str) -> list[str]:
        tiny = tiny_overrides(tmp_path / name, minicnn_weights, data)
        return [*(o for o in tiny if not o.startswith("num_workers=")), *common]

    clean = run_module("src.train", *args("a"), timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "src.train", *args("b")]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = next((tmp_path / "b" / "outputs").glob("checkpoints/*/"), None)
    deadline = time.time() + 300
    while time.time() < deadline and not (last and (last / "last.ckpt").exists()):
        time.sleep(0.05)
        last = last or next((tmp_path / "b" / "outputs").glob("checkpoints/*/"), None)
    time.sleep(0.3)  # into the next epoch
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "b" / "results").rglob("*.json"))  # no record from a killed run

    resumed = run_module("src.train", *args("b"), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    assert _final_state(tmp_path / "b" / "results") == _final_state(tmp_path / "a" / "results")


def test_checkpoint_from_another_config_or_with_code_is_refused(
    tmp_path, tiny_folder, minicnn_weights
):
    args = [*tiny_overrides(tmp_path, minicnn_weights, tiny_folder), "keep_checkpoints=true"]
    assert run_module("src.train", *args, "seed=1").returncode == 0
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    target = tmp_path / "outputs" / "checkpoints" / ckpt_dir.name.replace("__s1__", "__s0__")
    # the seed-1 checkpoint, placed where the seed-0 run of otherwise equal config looks
    other = [*args, "seed=1", "method.lr=2e-4"]  # the folder this config resumes from
    rid_dir = ckpt_dir.parent / run_identity(compose([*other, "paths.output_dir=x"]))[0]
    rid_dir.mkdir()
    (rid_dir / "last.ckpt").write_bytes((ckpt_dir / "last.ckpt").read_bytes())
    _fails_cleanly(run_module("src.train", *other), "belongs to another config")

    marker = tmp_path / "pwned"
    _plant_pickle(rid_dir / "last.ckpt", marker)
    _fails_cleanly(run_module("src.train", *other), "cannot be loaded safely")
    assert not marker.exists() and not target.exists()


def test_malicious_weights_file_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = _plant_pickle(tmp_path / "resnet.pth", marker)
    with pytest.raises(UserError, match="not a plain state_dict"):
        build_backbone("minicnn", str(path), 10)
    assert not marker.exists()


def test_corrupt_images_are_named_or_skipped_with_a_count(tmp_path, minicnn_weights) -> None:
    data = make_image_folder(tmp_path / "data")
    bad = data / "train" / "c1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    args = tiny_overrides(tmp_path, minicnn_weights, data)
    _fails_cleanly(
        run_module("src.train", *args),
        "1 image(s) cannot be decoded",
        "broken.png",
        "skip_bad_images=true",
    )
    ok = run_module("src.train", *args, "skip_bad_images=true")
    assert ok.returncode == 0, ok.stderr[-2000:]
    (record,) = (tmp_path / "results" / "runs").glob("*.json")
    assert [Path(p).name for p in json.loads(record.read_text())["skipped_images"]] == [
        "broken.png"
    ]


@pytest.mark.parametrize(
    "damage, needle",
    [("empty", "has no class folders"), ("classes", "has 2 class folders, expected 3")],
)
def test_unusable_dataset_folder(tmp_path, minicnn_weights, damage, needle) -> None:
    data = make_image_folder(tmp_path / "data")
    if damage == "empty":
        for child in (data / "train").iterdir():
            for f in child.iterdir():
                f.unlink()
            child.rmdir()
    else:
        for split in ("train", "test"):
            for f in (data / split / "c2").iterdir():
                f.unlink()
            (data / split / "c2").rmdir()
    _fails_cleanly(
        run_module("src.train", *tiny_overrides(tmp_path, minicnn_weights, data)), needle
    )


def test_atomic_outputs_leave_nothing_half_written(tmp_path) -> None:
    target = tmp_path / "record.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"ok": 1}
    folder = tmp_path / "dataset"
    with pytest.raises(RuntimeError), atomic_dir(folder) as tmp:
        (tmp / "train").mkdir()
        raise RuntimeError("killed")
    assert not folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_wandb_online_failure_falls_back_to_offline(tmp_path, monkeypatch, caplog) -> None:
    from hydra import compose, initialize_config_dir
    from pytorch_lightning.loggers import WandbLogger

    from piggyback_lab.runs.builders import build_loggers
    from tests.conftest import CONF

    def no_network(self):
        raise ConnectionError("no route to api.wandb.ai")

    monkeypatch.setattr(WandbLogger, "experiment", property(no_network))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["logger=wandb", "logger.wandb.mode=online", f"paths.data_dir={tmp_path}"],
        )
    cfg.paths.output_dir = str(tmp_path)
    [logger] = [lg for lg in build_loggers(cfg) if isinstance(lg, WandbLogger)]
    assert isinstance(logger, WandbLogger) and logger._wandb_init["mode"] == "offline"
    assert "logging offline instead" in caplog.text


def test_same_seed_gives_same_initial_state() -> None:
    torch.manual_seed(3)
    a = build_backbone("minicnn", None, 5).state_dict()
    torch.manual_seed(3)
    b = build_backbone("minicnn", None, 5).state_dict()
    assert state_digest(a) == state_digest(b)


def test_first_time_pretraining_does_not_change_the_run(tmp_path, tiny_folder, monkeypatch) -> None:
    """A run that pretrains its base in-process equals one that finds the base cached."""
    from safetensors.torch import save_file

    import piggyback_lab.runs.pretraining
    from tests.conftest import train_in_process

    calls = []

    def fake_pretrain(backbone, data_dir, out, **kwargs):  # draws random numbers, as training does
        torch.rand(1000)
        save_file(build_backbone(backbone, None, 10).state_dict(), str(out))
        calls.append(out)
        return {"wall_time_s": 0.0}

    monkeypatch.setattr(piggyback_lab.runs.pretraining, "pretrain", fake_pretrain)
    weights = tmp_path / "base.safetensors"
    results = []
    for name in ("first", "cached"):  # the first run pretrains, the second finds the file
        args = tiny_overrides(tmp_path / name, weights, tiny_folder)
        args = [a for a in args if a != "backbone.pretrain=false"]
        train_in_process(*args, f"paths.output_dir={tmp_path / name / 'out'}")
        results.append(_final_state(tmp_path / name / "results"))
    assert results[0] == results[1]
    assert calls == [weights]  # the first run pretrained (here: a stand-in), the second not


def test_random_states_survive_a_json_round_trip() -> None:
    import random

    import numpy as np

    from piggyback_lab.utils.random_state import rng_state, set_rng_state

    def draws() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    stored = json.loads(json.dumps(rng_state()))  # as a progress file holds it
    first = draws()
    assert draws() != first
    set_rng_state(stored)
    assert draws() == first


def _start_then_terminate(
    args: list[str], checkpoints: Path, signum: int = signal.SIGTERM, group: bool = False
) -> subprocess.CompletedProcess:
    """Start ``python -m src.train args``, send ``signum`` (SIGTERM: as SLURM does at a job's
    time limit) once its first checkpoint is written, to the process alone or to its whole
    process group (Ctrl-C on a terminal reaches the loader workers too), and wait for it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not list(checkpoints.rglob("last.ckpt")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_ends_a_run_with_its_signal_code_and_one_line_on_how_to_resume(
    tmp_path, minicnn_weights
):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=24, size=16)
    args = [*tiny_overrides(tmp_path, minicnn_weights, data), "method.epochs=8"]
    proc = _start_then_terminate(args, tmp_path / "outputs" / "checkpoints")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: stopped by SIGTERM"), errors
    assert "same command again" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "results" / "runs").exists()  # nothing recorded for it
    assert _says_on_start(args, "resuming from")  # (that resuming is exact: the SIGKILL test)


def test_ctrl_c_with_loader_workers_is_one_line_not_their_tracebacks(tmp_path, minicnn_weights):
    """SIGINT to the process group, as a terminal sends it, with 2 loader workers: at
    a6ce102 each worker printed its KeyboardInterrupt traceback before the run's line."""
    data = make_image_folder(tmp_path / "data", classes=3, per_class=24, size=16)
    args = [*tiny_overrides(tmp_path, minicnn_weights, data), "method.epochs=8", "num_workers=2"]
    checkpoints = tmp_path / "outputs" / "checkpoints"
    proc = _start_then_terminate(args, checkpoints, signal.SIGINT, group=True)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: stopped by SIGINT"), errors


def _says_on_start(args: list[str], needle: str) -> bool:
    """Whether ``python -m src.train args`` prints ``needle`` before it ends; it is killed
    as soon as it has."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        return any(needle in line for line in proc.stdout)
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_during_a_sweep_writes_its_summary_naming_the_interrupted_job(
    tmp_path, minicnn_weights
):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=24, size=16)
    sweep = tmp_path / "sweep"
    args = [
        "-m", *tiny_overrides(tmp_path, minicnn_weights, data), "method.epochs=50",
        "seed=0,1", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    proc = _start_then_terminate(args, tmp_path / "outputs" / "checkpoints")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["interrupted"] == 1 and summary["ran"] == 0
    [job] = summary["jobs"]
    assert job["status"] == "interrupted" and job["job"] == 0 and "SIGTERM" in job["reason"]
    [line] = [x for x in proc.stdout.splitlines() if x.strip().startswith("interrupted: job 0")]
    assert "seed=0" in line and "SIGTERM" in line
