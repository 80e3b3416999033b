"""Run records: one self-describing JSON file per run under results/runs/."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from src.utils.atomic import atomic_write_json

RECORD_FORMAT = "piggyback-lab-record/1"
# Config keys that do not change what a run computes (where files go, how it is logged).
NON_SEMANTIC_KEYS = ("paths", "logger", "force", "num_workers", "hydra")


def run_id(config: dict[str, Any]) -> str:
    """Stable name of a run: dataset, backbone, method, seed and a hash of the effective config."""
    semantic = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    trainer = dict(semantic.get("trainer", {}))
    trainer.pop("enable_progress_bar", None)
    semantic["trainer"] = trainer
    digest = hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()
    return (
        f"{config['dataset']['name']}__{config['backbone']['name']}__"
        f"{config['method']['name']}__s{config['seed']}__{digest[:10]}"
    )


def code_version() -> dict[str, Any]:
    """The git commit of the code that ran, and whether the tree had local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root, capture_output=True, text=True, check=True,
            ).stdout.strip()
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"git": None, "dirty": None}
    return {"git": sha, "dirty": dirty}


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    path = Path(path)
    atomic_write_json(path, {"format": RECORD_FORMAT, **record})
    return path


def read_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every record under ``folder`` (recursively), skipping files of other formats."""
    records = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("format") == RECORD_FORMAT:
            records.append({**data, "record_path": str(path)})
    return records
