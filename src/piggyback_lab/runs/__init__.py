"""The run layer: the one package that reads the root config. It builds a run's parts from
config (builders), names and records runs (identity, records), resumes them (resume), and
runs a single task (single) or a task sequence (sequence); evaluate and predict serve the
stored tasks. Entry points (src/*.py) and the reporting layer above it call it; the
library (masking, models, data, methods) never imports it."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def run(cfg: DictConfig) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Run the configured job: a method that names ``tasks`` runs them as one sequence
    (PackNet); any other trains ``dataset``. Returns the record(s), a recorded run's marked
    ``skipped``; None when a sequence was recorded already.
    Every check that needs no data runs first (src/piggyback_lab/runs/preflight.py)."""
    if cfg.method.get("tasks") is not None:
        from piggyback_lab.runs.sequence import run_sequence

        return run_sequence(cfg)
    from piggyback_lab.runs.preflight import preflight
    from piggyback_lab.runs.single import run_single

    preflight(cfg)
    return run_single(cfg)
