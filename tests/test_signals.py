"""Stop signals end every kind of work with one ``error:`` line and leave nothing running:
a sweep's parent on the joblib launcher (its loky workers trained on for minutes after it
died, with no line and no summary), a CPU DDP run signalled as a group (rank 1 printed
Hydra's traceback or a second line), and a dataset preparation with pool workers (their
tracebacks, hangs, and hidden temporary trees left in --out for good after a kill).

Each test starts its command in a session of its own and signals only that."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from piggyback_lab.data import prepare as P
from piggyback_lab.data.prepare import Expected, prepare_dataset
from tests.conftest import ROOT, make_image_folder, tiny_overrides
from tests.test_prepare import make_presplit

REAL_PROCESS = P._process


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` in a new session (its own process group), stdout and stderr into ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_until(ready, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def _children() -> dict[int, int]:
    """pid -> parent pid of every process on the machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def _descendants(pid: int) -> set[int]:
    parents, found, todo = _children(), set(), [pid]
    while todo:
        parent = todo.pop()
        kids = {p for p, pp in parents.items() if pp == parent} - found
        found |= kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _all_gone(pids: set[int], timeout: float) -> set[int]:
    """The ``pids`` still running after up to ``timeout`` seconds."""
    deadline = time.time() + timeout
    while (alive := {p for p in pids if _alive(p)}) and time.time() < deadline:
        time.sleep(0.2)
    return alive


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    """What ``proc`` printed, once it has ended (a hang fails the test)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout} s after the signal:\n{log.read_text()[-3000:]}")
    return log.read_text()


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the test's own process group (nothing, when all went well)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _epoch_seen(log: Path):
    return lambda: "epoch 1/" in log.read_text()


def test_sigterm_to_a_joblib_sweeps_parent_stops_its_workers_and_writes_the_summary(
    tmp_path: Path, minicnn_weights: Path
) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=24, size=16)
    sweep, log = tmp_path / "sweep", tmp_path / "log.txt"
    args = [
        "-m", *tiny_overrides(tmp_path, minicnn_weights, data), "method.epochs=200",
        "seed=0,1,2,3", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    proc = _start([sys.executable, "-m", "src.train", *args], log)
    try:
        _wait_until(_epoch_seen(log), proc, log)
        workers = _descendants(proc.pid)
        assert workers
        proc.send_signal(signal.SIGTERM)  # the parent alone
        out = _finish(proc, log, timeout=60)
        assert not _all_gone(workers, 30), out[-3000:]
    finally:
        _kill_session(proc)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert len(_errors(out)) == 1 and "stopped by SIGTERM" in _errors(out)[0], out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["interrupted"] >= 1 and summary["ran"] == 0, summary
    assert all("SIGTERM" in j["reason"] for j in summary["jobs"])


@pytest.mark.slow
def test_sigterm_to_a_cpu_ddp_runs_group_is_one_line_from_rank_zero(
    tmp_path: Path, minicnn_weights: Path
) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=24, size=16)
    log = tmp_path / "log.txt"
    args = [
        *tiny_overrides(tmp_path, minicnn_weights, data), "method.epochs=200", "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.deterministic=false",
    ]  # fmt: skip
    proc = _start([sys.executable, "-m", "src.train", *args], log)
    try:
        _wait_until(_epoch_seen(log), proc, log)
        ranks = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        out = _finish(proc, log, timeout=60)
        assert not _all_gone(ranks, 30), out[-3000:]
    finally:
        _kill_session(proc)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert len(_errors(out)) == 1 and "stopped by SIGTERM" in _errors(out)[0], out[-3000:]
    assert "Traceback" not in out and "Error executing job" not in out, out[-3000:]
    assert not list((tmp_path / "results" / "runs").glob("*"))  # no record, no lock


def slow_process(args: tuple) -> str | None:
    """The real per-image work, slowed so that a signal lands mid-preparation."""
    time.sleep(0.02)
    return REAL_PROCESS(args)


PREPARE_SLOWLY = (
    "import runpy, sys; from piggyback_lab.data import prepare; import tests.test_signals as t; "
    "prepare._process = t.slow_process; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_preparation_with_pool_workers_is_one_line_and_leaves_nothing(
    tmp_path: Path, signum: signal.Signals
) -> None:
    src = make_presplit(tmp_path / "src", classes=2, train=150, test=50)
    out, log = tmp_path / "out", tmp_path / "log.txt"
    script = str(ROOT / "scripts" / "prepare_data.py")
    cmd = [sys.executable, "-c", PREPARE_SLOWLY, script, "flowers", "--source", str(src),
           "--out", str(out), "--workers", "2", "--allow-count-mismatch"]  # fmt: skip
    proc = _start(cmd, log)
    try:
        _wait_until(
            lambda: any(any(p.rglob("*.jpg")) for p in out.glob(".flowers.*.tmp")), proc, log
        )
        pool = _descendants(proc.pid)
        os.killpg(proc.pid, signum)  # as a cluster's time limit or Ctrl-C on a terminal
        text = _finish(proc, log, timeout=60)
        assert not _all_gone(pool, 10), text[-3000:]
    finally:
        _kill_session(proc)
    assert proc.returncode == 128 + signum, text[-3000:]
    assert len(_errors(text)) == 1 and f"stopped by {signum.name}" in _errors(text)[0], text
    assert "Traceback" not in text, text[-3000:]
    assert not (out / "flowers").exists() and not list(out.glob(".flowers.*")), list(out.iterdir())


def test_a_preparation_removes_the_temporary_trees_a_killed_one_left(tmp_path: Path) -> None:
    src, out = make_presplit(tmp_path / "src"), tmp_path / "out"
    stale = [out / ".flowers.source.xyz", out / ".flowers.abc.tmp", out / ".flowers.q1.old"]
    others = [out / ".cub.abc.tmp", out / ".flowersx.source.q", out / "notes"]
    for folder in stale + others:
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "0.jpg").write_bytes(b"half")
    root = prepare_dataset(
        "flowers", src, out, expected=Expected(2, 6, 4), checksums={}, workers=2, progress=False
    )
    assert root == out / "flowers" and len(list(root.rglob("*.jpg"))) == 10
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
