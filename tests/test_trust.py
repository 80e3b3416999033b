"""Results you can trust: run identity, corrupt records, sweeps that survive a bad job,
image checks that see a same-size change, one run per id at a time, quiet logs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from piggyback_lab.models import build_backbone
from piggyback_lab.runs.config import compose
from piggyback_lab.runs.identity import run_identity
from piggyback_lab.runs.resume import run_lock
from piggyback_lab.utils.errors import UserError
from tests.conftest import run_module, tiny_overrides


def _records(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "results" / "runs").glob("*.json"))


def test_num_workers_and_the_base_weights_change_the_run_id(
    tmp_path: Path, minicnn_weights: Path
) -> None:
    base = ["backbone=minicnn", f"backbone.weights={minicnn_weights}", "paths.output_dir=x"]
    rid, config = run_identity(compose([*base, "num_workers=2"]))
    assert run_identity(compose([*base, "num_workers=0"]))[0] != rid
    assert config["weights_fingerprint"] and len(config["weights_fingerprint"]) == 16
    other = tmp_path / "copy.safetensors"
    other.write_bytes(minicnn_weights.read_bytes())  # the same tensors: the same run
    assert (
        run_identity(
            compose(["backbone=minicnn", f"backbone.weights={other}", "paths.output_dir=x"])
        )[0]
        == rid
    )
    torch.manual_seed(1)  # other tensors under the same file name: another run
    save_file(build_backbone("minicnn", None, 10).state_dict(), str(other))
    assert (
        run_identity(
            compose(["backbone=minicnn", f"backbone.weights={other}", "paths.output_dir=x"])
        )[0]
        != rid
    )
    assert (
        run_identity(compose(["backbone=minicnn", "backbone.weights=null", "paths.output_dir=x"]))[
            0
        ]
        != rid
    )
    # where things go and how they are shown do not change what a run computes
    shown = compose(
        [*base, "num_workers=2", "paths.results_dir=elsewhere", "keep_checkpoints=true"]
    )
    assert run_identity(shown)[0] == rid


def test_truncated_record_is_named_by_tables_and_run_again_by_train(
    tmp_path: Path, minicnn_weights: Path, tiny_folder: Path
) -> None:
    args = tiny_overrides(tmp_path, minicnn_weights, tiny_folder)
    assert run_module("src.train", *args).returncode == 0
    [record] = _records(tmp_path)
    whole = json.loads(record.read_text())
    record.write_text(record.read_text()[:200])  # as a killed copy or a full disk leaves it

    tables = run_module(
        "scripts.make_tables", "--runs", str(tmp_path / "results" / "runs"),
        "--out", str(tmp_path / "tables"),
    )  # fmt: skip
    assert tables.returncode == 0, tables.stderr[-2000:]
    assert f"warning: skipping record {record} is truncated or corrupt" in tables.stderr

    again = run_module("src.train", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"re-running: record {record} is truncated or corrupt" in again.stdout
    assert json.loads(record.read_text())["top1"] == whole["top1"]  # whole again, same result


def test_a_sweep_with_a_bad_value_runs_the_others_and_names_the_failed_job(
    tmp_path: Path, minicnn_weights: Path, tiny_folder: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = run_module(
        "src.train", "-m", *tiny_overrides(tmp_path, minicnn_weights, tiny_folder),
        "method.threshold=4e-3,1e-2,6e-3", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(_records(tmp_path)) == 2  # the job after the failed one ran too
    assert "sweep: 3 jobs: 2 ran, 0 skipped, 1 failed" in proc.stdout
    assert "failed: job 1 (method.threshold=0.01): with mask_init='1s' the mask_scale" in (
        proc.stdout
    )
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert (summary["ran"], summary["skipped"], summary["failed"]) == (2, 0, 1)
    [failed] = [job for job in summary["jobs"] if job["status"] == "failed"]
    assert "method.threshold=0.01" in failed["overrides"] and "threshold" in failed["reason"]
    assert "must exceed the threshold" in (sweep_dir / "1" / "train.log").read_text()


def test_image_check_sees_a_same_size_change(tmp_path: Path, tiny_folder: Path) -> None:
    from piggyback_lab.data.datamodule import ImageFolderDataModule

    tf = {"style": "resize_exact", "size": 12, "flip": False, "mean": [0.5] * 3, "std": [0.5] * 3}

    def setup() -> None:
        ImageFolderDataModule(tiny_folder, 3, tf, protocol="faithful").setup("fit")

    setup()  # verified: the stamp caches the clean result
    image = tiny_folder / "train" / "c1" / "2.png"
    size, stat = image.stat().st_size, image.stat()
    image.write_bytes(b"\0" * size)  # corrupt, same size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(UserError, match=r"1 image\(s\) cannot be decoded: .*c1/2.png"):
        setup()


def test_a_second_run_of_the_same_id_is_refused_while_the_first_holds_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "checkpoints" / "run"
    holder = rf"already running \(process {os.getpid()} holds"
    with run_lock(folder), pytest.raises(UserError, match=holder), run_lock(folder):
        pass
    with run_lock(folder):  # released: free again
        pass
    assert not (tmp_path / "checkpoints" / "run.lock").exists()


def test_a_killed_runs_lock_is_free_while_its_forked_workers_live(tmp_path: Path) -> None:
    """A run's DataLoader workers are forked with its lock's descriptor; SIGKILL the run and
    they live on for a while. The resume must not be refused for their sake."""
    from pytorch_lightning.utilities import rank_zero_only  # noqa: F401  (before forking)

    folder, worker_pid = tmp_path / "run", tmp_path / "worker.pid"
    run = os.fork()
    if run == 0:  # the run: lock, fork a worker that outlives it, die by SIGKILL
        try:
            with run_lock(folder):
                worker = os.fork()
                if worker == 0:
                    time.sleep(60)
                    os._exit(0)
                worker_pid.write_text(str(worker))
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.waitpid(run, 0)
    worker = int(worker_pid.read_text())
    try:
        with run_lock(folder):  # free, though the worker lives
            pass
    finally:
        os.kill(worker, signal.SIGKILL)


def test_a_finished_run_is_quiet_in_a_log_file_and_leaves_no_checkpoints(
    tmp_path: Path, minicnn_weights: Path, tiny_folder: Path
) -> None:
    args = [
        a for a in tiny_overrides(tmp_path, minicnn_weights, tiny_folder) if "progress" not in a
    ]
    proc = run_module("src.train", *args, "method.epochs=2")  # stdout is a pipe, not a TTY
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "\r" not in out and "Tip" not in out and "GPU available" not in out
    assert "limit_train_batches" not in out and "UserWarning" not in out, out
    lines = proc.stdout.splitlines()  # the banner (3 lines), each epoch, the result
    assert [line.split(" ")[0] for line in lines[:3]] == ["run", "trains", "record"]
    assert [line.split("  ")[0] for line in lines[3:5]] == ["epoch 1/2", "epoch 2/2"]
    assert "test top-1" in lines[-1] and len(lines) == 6
    [record] = _records(tmp_path)
    assert json.loads(record.read_text())["wall_time_s"] > 0
    assert not list((tmp_path / "outputs" / "checkpoints").iterdir())  # removed when done


def test_the_lock_guards_a_record_whatever_the_log_folder(
    tmp_path: Path, minicnn_weights: Path, tiny_folder: Path
) -> None:
    """Two identical runs writing one results folder, from other log folders: the second
    is refused while the first trains, and only one record is written."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    def args(logs: str) -> list[str]:
        tiny = tiny_overrides(tmp_path, minicnn_weights, tiny_folder)
        return [*(a for a in tiny if not a.startswith("paths.log_dir")),
                f"paths.log_dir={tmp_path / logs}", "method.epochs=500"]  # fmt: skip

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args("logs_a")], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "logs_a").rglob("last.ckpt")):
            assert first.poll() is None
            time.sleep(0.05)
        second = run_module("src.train", *args("logs_b"))
        assert second.returncode == 2 and "this run is already running" in second.stderr
        assert first.poll() is None  # still training: the refusal was the lock's
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait()
    assert _records(tmp_path) == []  # neither wrote a record
    assert not list((tmp_path / "results" / "runs").glob("*.lock"))  # released with it


def test_a_run_at_chance_is_named_so() -> None:
    """lr=1e9 drove the mini run to a constant output: loss ln(10), top-1 0%, recorded as a
    result with no word (the audit); lr=1e6 ended at loss 2.62 and top-1 0%, which the loss
    rule missed. The record now says at_chance, and a warning names why, when the loss ends
    at ln(classes) or the selected top-1 is no better than guessing."""
    import math
    from types import SimpleNamespace

    import torch

    from piggyback_lab.runs.single import chance_reason

    def trainer(loss: float | None) -> SimpleNamespace:
        metrics = {} if loss is None else {"train/loss": torch.tensor(loss)}
        return SimpleNamespace(callback_metrics=metrics)

    assert "ln(10)" in chance_reason(trainer(math.log(10)), 10, 50.0)
    assert chance_reason(trainer(math.log(10) * 1.0005), 10, 50.0)
    assert chance_reason(trainer(math.log(10) * 1.01), 10, 50.0) is None  # a slow start
    assert chance_reason(trainer(0.3), 10, 50.0) is None
    assert chance_reason(trainer(None), 10, 50.0) is None
    assert "0.00% is no better than chance" in chance_reason(trainer(2.62), 10, 0.0)
    assert chance_reason(trainer(2.0), 10, 10.0)  # exactly a guess
    assert chance_reason(trainer(2.0), 10, 10.5) is None
    assert chance_reason(trainer(None), 10, math.nan) is None  # nothing scored


def test_the_record_says_the_precision_that_ran(
    tmp_path: Path, minicnn_weights: Path, tiny_folder: Path
) -> None:
    """16-mixed on a CPU runs in bf16 (Lightning's choice): the record says bf16-mixed."""
    args = tiny_overrides(tmp_path, minicnn_weights, tiny_folder)
    proc = run_module("src.train", *args, "trainer.precision=16-mixed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [record] = _records(tmp_path)
    assert json.loads(record.read_text())["precision"] == "bf16-mixed"


def test_first_runs_at_once_pretrain_the_base_once(tmp_path: Path, monkeypatch) -> None:
    """Three first runs started together: one pretrains, the others wait for its file."""
    import threading
    import time

    from omegaconf import OmegaConf

    import piggyback_lab.runs.pretraining as pretraining
    from piggyback_lab.runs.builders import ensure_backbone_weights

    weights = tmp_path / "pretrained" / "base.safetensors"
    calls = []

    def slow_pretrain(backbone, data_dir, out, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"weights")
        return {"wall_time_s": 0.5}

    monkeypatch.setattr(pretraining, "pretrain", slow_pretrain)
    cfg = OmegaConf.create(
        {"backbone": {"name": "minicnn", "pretrain": True, "weights": str(weights)},
         "paths": {"data_dir": str(tmp_path)}}
    )  # fmt: skip
    spent = []
    runs = [threading.Thread(target=lambda: spent.append(ensure_backbone_weights(cfg)))
            for _ in range(3)]  # fmt: skip
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(calls) == 1 and sorted(spent) == [0.0, 0.0, 0.5]
    assert weights.read_bytes() == b"weights"


def test_a_write_that_fails_after_training_leaves_neither_file_and_keeps_the_checkpoints(
    tmp_path: Path, minicnn_weights: Path, tiny_folder: Path, monkeypatch
) -> None:
    import errno

    import piggyback_lab.runs.single as single
    from piggyback_lab.utils.errors import UserError
    from tests.conftest import train_in_process

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(single, "write_record", full_disk)
    args = [*tiny_overrides(tmp_path, minicnn_weights, tiny_folder),
            f"paths.output_dir={tmp_path / 'outputs' / 'job'}"]  # fmt: skip
    with pytest.raises(UserError, match=r"results cannot be written \(No space left"):
        train_in_process(*args)
    assert not list((tmp_path / "results").rglob("*.safetensors"))  # no task file alone
    assert _records(tmp_path) == []
    assert list((tmp_path / "outputs" / "checkpoints").rglob("last.ckpt"))  # kept to resume
