"""Preparing the yardstick's split-file benchmarks from their dataset configs: each task's
config (conf/dataset/vtab/*.yaml, conf/dataset/fgvc/*.yaml) says where it goes, its classes
and split sizes, so ``scripts/prepare_data.py`` checks a download exactly as a run will read
it (piggyback_lab.data.prepare_lists)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydra.utils import instantiate

from piggyback_lab.data.prepare_lists import find_task_folder, prepare_split_task
from piggyback_lab.runs.config import compose, dataset_config_names
from piggyback_lab.utils.errors import UserError

# What ``prepare_data.py <name>`` prepares: VTAB-1k's 19 task configs, or one FGVC dataset's.
SPLIT_FILE_DATASETS = {
    "vtab": "vtab/",
    **{f"fgvc_{n}": f"fgvc/{n}" for n in ("cub", "nabirds", "flowers", "dogs", "cars")},
}


def configs_of(name: str, tasks: str | None) -> list[str]:
    """The dataset configs ``name`` covers (``tasks``: a comma-separated subset of VTAB's)."""
    prefix = SPLIT_FILE_DATASETS[name]
    if not prefix.endswith("/"):
        return [prefix]
    known = [c for c in dataset_config_names() if c.startswith(prefix)]
    if not tasks:
        return known
    chosen = [f"{prefix}{t.strip()}" for t in tasks.split(",") if t.strip()]
    unknown = [c.removeprefix(prefix) for c in chosen if c not in known]
    if unknown:
        names = ", ".join(c.removeprefix(prefix) for c in known)
        raise UserError(f"--tasks: unknown {name} task(s) {', '.join(unknown)}; choose: {names}")
    return chosen


def prepare_split_files(
    name: str, source: str | Path, out: str | Path, tasks: str | None = None
) -> list[Path]:
    """Check every task of ``name`` found under ``source`` and install it under ``out``
    (each where its config reads it); a task not found is refused before any is written."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise UserError(f"{name}: source {source} is not a folder")
    plans = []
    for config in configs_of(name, tasks):
        cfg = compose([f"dataset={config}", f"paths.data_dir={Path(out).resolve()}"])
        dest = Path(cfg.dataset.root)
        found = find_task_folder(source, dest.name)
        plans.append((config, cfg, dest, found))
    missing = [config for config, _, _, found in plans if found is None]
    if missing:
        raise UserError(
            f"{name}: no folder for {', '.join(missing)} under {source} (expected "
            f"{', '.join(dest.name for c, _, dest, f in plans if f is None)}); pass --tasks "
            "to prepare some, or point --source at the folder holding them"
        )
    written = []
    for config, cfg, dest, found in plans:
        module = instantiate(cfg.dataset, root=str(found), _convert_="all")
        with tempfile.TemporaryDirectory() as scratch:
            counts = prepare_split_task(module, dest, Path(scratch))
        print(f"{config}: {dest} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        written.append(dest)
    return written
