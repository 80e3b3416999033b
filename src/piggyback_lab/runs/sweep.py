"""Jobs of a sweep (``-m``): a failing job neither stops nor hides the others.

``run_job`` runs one job; under a multirun it turns a failure into an outcome instead of an
exit, so Hydra's sweeper goes on. ``SweepSummary`` (a Hydra callback, conf/config.yaml)
stores each job's outcome in its own folder, so launchers that run jobs in other
processes are counted too, and at the end prints ran / skipped / failed with the reasons,
writes them to ``<sweep dir>/summary.json`` and exits 2 when a job failed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from piggyback_lab.runs import run
from piggyback_lab.utils.atomic import atomic_write_json
from piggyback_lab.utils.errors import (
    EXIT_USER_ERROR,
    STOP_SIGNALS,
    SWEEP_PARENT,
    Interrupted,
    UserError,
    interrupted_message,
    interruption_behind,
    log_error,
    reports_stops,
    stop_child_programs,
    user_message,
)

log = logging.getLogger(__name__)
OUTCOME = "outcome.json"
# What a job's outcome says of each run it ran or found recorded (the tuning sweeper reads it).
RESULT_KEYS = ("run_id", "val_top1", "top1", "epochs")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one job; returns its outcome: ``status`` ran / skipped / failed and the reason.

    Outside a multirun a failure is raised as it is (one ``error:`` line, exit 2)."""
    try:
        result = run(cfg)
    except UserError as err:
        if not in_multirun():
            raise
        message = user_message(err)
        log_error(message)
        return {"status": "failed", "reason": message}
    except (Exception, Interrupted) as err:
        # A signal ends the whole sweep (also one sent to the process group, whose dead
        # loader workers raise over it); one job's bug or out-of-memory does not.
        stop = interruption_behind(err)
        if stop is not None:
            if in_multirun():
                hydra = HydraConfig.get()
                write_outcome(hydra, {"status": "interrupted", "reason": f"stopped by {stop}"})
                if reports_stops():  # else the sweep's parent sums up (a joblib worker)
                    summarize(Path(hydra.sweep.dir))
            raise stop from None
        if not in_multirun():
            raise
        log.debug("job failed", exc_info=True)  # the traceback goes to the job's log file
        reason = f"{type(err).__name__}: {err}"
        log_error(f"{reason} (traceback in the job's log file)")
        return {"status": "failed", "reason": reason}
    records = result if isinstance(result, list) else [] if result is None else [result]
    ran = [r for r in records if not r.get("skipped")]
    return {
        "status": "ran" if ran else "skipped",
        "run_ids": [r["run_id"] for r in ran],
        "results": [{k: r.get(k) for k in RESULT_KEYS} for r in records],
    }


def sweep_keys(overrides: list[list[str]]) -> set[str]:
    """The keys whose values differ between jobs (what the sweep varies)."""
    values: dict[str, set[str]] = {}
    for job in overrides:
        for override in job:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1}


STATUSES = ("ran", "skipped", "failed", "interrupted")


def write_outcome(hydra: DictConfig, outcome: dict[str, Any]) -> None:
    """One job's outcome, in its own folder (``hydra``: the job's hydra config)."""
    out = Path(hydra.runtime.output_dir) / OUTCOME
    overrides = list(hydra.overrides.task)
    atomic_write_json(out, {"job": hydra.job.num, **outcome, "overrides": overrides})


def summarize(sweep_dir: Path) -> dict[str, int]:
    """Count the outcomes found under ``sweep_dir``, write summary.json, name the jobs that
    failed or were interrupted; returns the counts."""
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{OUTCOME}"))]
    counts = {s: sum(j["status"] == s for j in jobs) for s in STATUSES}
    atomic_write_json(sweep_dir / "summary.json", {**counts, "jobs": jobs})
    print(
        f"sweep: {len(jobs)} jobs: {counts['ran']} ran, {counts['skipped']} skipped, "
        f"{counts['failed']} failed, {counts['interrupted']} interrupted "
        f"(summary: {sweep_dir / 'summary.json'})"
    )
    swept = sweep_keys([job["overrides"] for job in jobs])
    for job in jobs:
        if job["status"] in ("failed", "interrupted"):
            named = " ".join(
                o for o in job["overrides"] if not swept or o.split("=", 1)[0] in swept
            )  # with one job known, all of its overrides
            print(f"  {job['status']}: job {job['job']} ({named}): {job['reason']}")
    return counts


def mark_unfinished(sweep_dir: Path, reason: str, output_subdir: str = ".hydra") -> None:
    """Write an interrupted outcome for every job that started (its folder holds Hydra's
    config) but left no outcome: a worker stopped before it could write its own."""
    for saved in sorted(sweep_dir.glob(f"*/{output_subdir}/hydra.yaml")):
        job_dir = saved.parent.parent
        if not (job_dir / OUTCOME).exists():
            hydra = OmegaConf.load(saved).hydra
            hydra.runtime.output_dir = str(job_dir)
            write_outcome(hydra, {"status": "interrupted", "reason": reason})


def stop_sweep(config: DictConfig, signum: int) -> NoReturn:
    """A sweep's parent, on a stop signal: stop the jobs' workers (each writes its job's
    outcome), name the jobs left unfinished, write the summary, one line, exit 128 + signal."""
    for other in STOP_SIGNALS:  # one line, however many signals follow
        signal.signal(other, signal.SIG_IGN)
    stop = Interrupted(signum)
    stop_child_programs()
    sweep_dir = Path(config.hydra.sweep.dir)
    mark_unfinished(sweep_dir, f"stopped by {stop}", config.hydra.output_subdir or ".hydra")
    summarize(sweep_dir)
    log_error(interrupted_message(stop))
    sys.exit(128 + signum)


class SweepSummary(Callback):
    """Counts a sweep's outcomes and says which jobs failed, and why; a stop signal to the
    sweep's process stops its workers too (``stop_sweep``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEEP_PARENT] = str(os.getpid())  # jobs in other processes stay quiet
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda number, frame: stop_sweep(config, number))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        outcome = job_return._return_value
        if job_return.status != JobStatus.COMPLETED or not isinstance(outcome, dict):
            outcome = {"status": "failed", "reason": repr(outcome)}
        write_outcome(config.hydra, outcome)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if summarize(Path(config.hydra.sweep.dir))["failed"]:
            sys.exit(EXIT_USER_ERROR)
