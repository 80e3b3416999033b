"""Hydra sweeper running the tuning protocol (piggyback_lab.runs.tuning) through any launcher:
the search jobs of every cell as one batch, then the final jobs as another, so a local,
joblib or SLURM launcher runs each phase in parallel."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from piggyback_lab.runs.tuning import (
    candidates,
    check_cell,
    choose,
    hydra_value,
    image_steps,
    method_overrides,
    search_space,
    tuning_note,
)
from piggyback_lab.utils.atomic import atomic_write_json

log = logging.getLogger(__name__)
# What a search run records under ``tuning`` (tables leave these runs out of their cells).
SEARCH_NOTE = "tuning={role:search,selected_on:val}"


class TuningSweeper(BasicSweeper):
    """Cells from ``params`` and the command line as Hydra's basic sweeper makes them; for
    each, the method's grid at ``search_seeds`` (protocol=clean), then the choice at
    ``seeds`` (protocol=final). ``<sweep dir>/tuning.json`` lists every cell's choice."""

    def __init__(
        self,
        seeds: Sequence[int] = (0, 1, 2),
        search_seeds: Sequence[int] = (0,),
        params: dict[str, str] | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.seeds = [int(s) for s in seeds]
        self.search_seeds = [int(s) for s in search_seeds]
        self.job_index = 0

    def sweep(self, arguments: list[str]) -> Any:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        cells = [cell for batch in self.split_arguments(overrides, None) for cell in batch]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        plans = [self._plan(cell) for cell in cells]
        search_jobs = [job for plan in plans for _, _, job in plan["search"]]
        log.info(plan_line(plans, len(self.seeds)))
        results = iter(self._launch(search_jobs))
        finals, chosen = [], []
        for plan in plans:
            scored = _scores(plan, results, self.search_seeds)
            if scored is None:
                continue
            chosen.append(scored)
            finals += self._finals(plan["cell"], scored["tuning"])
        atomic_write_json(sweep_dir / "tuning.json", chosen)
        return [self._launch(finals)] if finals else []

    def _plan(self, cell: list[str]) -> dict[str, Any]:
        check_cell(cell)
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(cell))
        space = search_space(cfg.method)
        search = [
            (
                candidate,
                seed,
                [
                    *cell,
                    *method_overrides(candidate),
                    "protocol=clean",
                    f"seed={seed}",
                    SEARCH_NOTE,
                ],
            )
            for candidate in candidates(space)
            for seed in self.search_seeds
        ]
        steps = image_steps(cfg, len(candidates(space)), len(self.search_seeds), len(self.seeds))
        return {"cell": cell, "space": space, "search": search, "image_steps": steps}

    def _finals(self, cell: list[str], note: dict[str, Any]) -> list[list[str]]:
        chosen = method_overrides(note["chosen"])
        tuning = f"tuning={hydra_value(note)}"
        return [[*cell, *chosen, "protocol=final", f"seed={s}", tuning] for s in self.seeds]

    def _launch(self, jobs: list[list[str]]) -> Sequence[JobReturn]:
        if not jobs:
            return []
        self.validate_batch_is_legal(jobs)
        returns = self.launcher.launch(jobs, initial_job_idx=self.job_index)
        self.job_index += len(jobs)
        return returns


def plan_line(plans: list[dict[str, Any]], seeds: int) -> str:
    """What the sweep will train: its runs and, where datasets state their split sizes,
    its training image-steps (images x epochs)."""
    search = sum(len(plan["search"]) for plan in plans)
    line = f"tuning: {len(plans)} cells: {search} search runs, then {len(plans) * seeds} final runs"
    steps = [plan["image_steps"] for plan in plans]
    if steps and all(s is not None for s in steps):
        searched, final = (sum(s[i] for s in steps) for i in (0, 1))
        line += f"; {searched / 1e6:.2f} M + {final / 1e6:.2f} M training image-steps"
    return line


def _scores(plan: dict[str, Any], results: Any, seeds: list[int]) -> dict[str, Any] | None:
    """The cell's choice from its search jobs' outcomes; None (said) when none scored."""
    scored, runs, per_candidate = [], [], len(seeds)
    for index in range(0, len(plan["search"]), per_candidate):
        scores = []
        for _ in range(per_candidate):
            outcome = next(results).return_value
            found = outcome.get("results", []) if isinstance(outcome, dict) else []
            scores.append(found[0].get("val_top1") if found else None)
            runs += [r["run_id"] for r in found]
        scored.append((plan["search"][index][0], scores))
    try:
        chosen, val_top1 = choose(scored)
    except Exception as err:
        log.error("error: %s: %s; no final runs for it", " ".join(plan["cell"]), err)
        return None
    note = tuning_note(plan["space"], scored, chosen, val_top1, seeds, runs)
    log.info("tuning %s: chose %s (val top-1 %.2f)", " ".join(plan["cell"]), chosen, val_top1)
    return {"cell": plan["cell"], "tuning": note}
