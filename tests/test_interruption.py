"""A signal sent to a whole process group (a cluster's time limit, ``pkill -f``) ends the
DataLoader workers too, and torch's SIGCHLD handler reports their death as a RuntimeError
raised while the run's Interrupted unwinds. Seen here: a SIGTERMed sweep took that for one
job's failure and went on to the next job. The run is stopped all the same, with the
interrupted line and its signal's exit code, in a single run and in a sweep."""

from __future__ import annotations

import signal

import pytest
from omegaconf import OmegaConf

from piggyback_lab.runs import sweep
from piggyback_lab.utils.errors import Interrupted, exit_on_user_error, interruption_behind


def workers_die_while_unwinding() -> None:
    """What torch raises when its workers die during an interrupted run's teardown."""
    try:
        raise Interrupted(signal.SIGTERM)
    except Interrupted:
        raise RuntimeError("DataLoader worker (pid 749) is killed by signal: Terminated.")  # noqa: B904


def test_the_interruption_behind_an_exception_is_found() -> None:
    with pytest.raises(RuntimeError) as caught:
        workers_die_while_unwinding()
    stop = interruption_behind(caught.value)
    assert isinstance(stop, Interrupted) and stop.signum == signal.SIGTERM
    assert interruption_behind(RuntimeError("a job's own bug")) is None
    try:
        raise ValueError("outer") from RuntimeError("inner, no signal")
    except ValueError as err:
        assert interruption_behind(err) is None


def test_a_run_interrupted_under_its_workers_death_exits_with_the_signal_line(capsys) -> None:
    with pytest.raises(SystemExit) as code:
        exit_on_user_error(workers_die_while_unwinding)()
    assert code.value.code == 128 + signal.SIGTERM
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM"), lines


def test_a_job_interrupted_under_its_workers_death_stops_the_sweep(monkeypatch) -> None:
    monkeypatch.setattr(sweep, "run", lambda cfg: workers_die_while_unwinding())
    with pytest.raises(Interrupted):
        sweep.run_job(OmegaConf.create({}))


def test_a_jobs_own_failure_still_lets_the_sweep_go_on(monkeypatch) -> None:
    def bug(cfg):
        raise RuntimeError("a job's own bug")

    monkeypatch.setattr(sweep, "run", bug)
    monkeypatch.setattr(sweep, "in_multirun", lambda: True)
    outcome = sweep.run_job(OmegaConf.create({}))
    assert outcome == {"status": "failed", "reason": "RuntimeError: a job's own bug"}


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM])
def test_a_clusters_and_a_terminals_signals_end_a_run_with_one_line(signum, capsys) -> None:
    """SLURM's --signal (SIGUSR1) and a closed terminal (SIGHUP) killed a run with no line
    and a stale lock at a6ce102; now they stop it as SIGTERM does, handlers restored."""
    import os

    before = signal.getsignal(signum)

    def runs_until_signalled() -> None:
        os.kill(os.getpid(), signum)

    with pytest.raises(SystemExit) as code:
        exit_on_user_error(runs_until_signalled)()
    assert code.value.code == 128 + signum
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"error: stopped by {signum.name}")
    assert signal.getsignal(signum) == before
