"""Run records: one self-describing JSON file per run under results/runs/.

The one place that names a run (``run_id``), builds a record (``run_record``: the same keys,
in the same order, for a trained task, a task of a sequence and an evaluation), stamps it
with where and with what it ran (``write_record``) and reads records back
(``read_record``, ``read_records``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from piggyback_lab.utils.atomic import atomic_write_json
from piggyback_lab.utils.checkout import CHECKOUT_ROOT
from piggyback_lab.utils.errors import UserError

RECORD_FORMAT = "piggyback-lab-record/1"
# Config keys that do not change what a run computes (where files go, how it is logged and
# shown). num_workers is not among them: each worker draws its own random augmentations.
NON_SEMANTIC_KEYS = ("paths", "logger", "force", "hydra", "keep_checkpoints", "tuning")
# Method keys that do not change what a run computes: the tuning grid it may be chosen from.
NON_SEMANTIC_METHOD_KEYS = ("search",)
# Method keys added after run ids were first pinned, with the value every earlier run had:
# at that value a key is left out of the hash, so earlier ids stay valid.
ADDED_METHOD_KEYS = {"lr_schedule": "step", "warmup_epochs": 0}
NON_SEMANTIC_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary")
# Backbone keys that only dataset configs read (the mini tasks' size is
# ``${oc.select:backbone.small_image_size,32}``): they count through the dataset's values.
NON_SEMANTIC_BACKBONE_KEYS = ("small_image_size",)


def code_paths_as_recorded(text: str) -> str:
    """Where the code lives is not what ran: the library was the package ``src`` until it
    became ``piggyback_lab``, and ids hash its dotted paths (``_target_``, a dataset's
    prepare hint) in that first spelling, so every id recorded before the move stays valid."""
    return text.replace("piggyback_lab.", "src.")


def run_id(config: dict[str, Any]) -> str:
    """Stable name of a run: dataset, backbone, method, seed and a hash of the effective config."""
    semantic = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    trainer = dict(semantic.get("trainer", {}))
    for key in NON_SEMANTIC_TRAINER_KEYS:
        trainer.pop(key, None)
    semantic["trainer"] = trainer
    if "method" in semantic:
        semantic["method"] = {
            k: v
            for k, v in semantic["method"].items()
            if k not in NON_SEMANTIC_METHOD_KEYS
            and not (k in ADDED_METHOD_KEYS and v == ADDED_METHOD_KEYS[k])
        }
    if "backbone" in semantic:
        backbone = semantic["backbone"]
        semantic["backbone"] = {
            k: v for k, v in backbone.items() if k not in NON_SEMANTIC_BACKBONE_KEYS
        }
    text = json.dumps(semantic, sort_keys=True, default=str)
    digest = hashlib.sha256(code_paths_as_recorded(text).encode()).hexdigest()
    return (
        f"{config['dataset']['name']}__{config['backbone']['name']}__"
        f"{config['method']['name']}__s{config['seed']}__{digest[:10]}"
    )


SOURCES = ("train", "eval")
# The facts every record has, in this order, under these names (``run_record``).
COMMON_KEYS = (
    "run_id", "source", "dataset", "backbone", "method", "seed", "protocol", "top1", "top5",
    "weights_fingerprint", "backbone_fingerprint", "task_file", "task_state_bytes",
    "wall_time_s",
)  # fmt: skip


def run_record(
    *,
    run_id: str,
    source: str,
    dataset: str,
    backbone: str,
    method: str,
    seed: int | None,
    protocol: str | None,
    top1: float | None,
    top5: float | None,
    weights_fingerprint: str | None,
    backbone_fingerprint: str | None,
    task_file: str,
    task_state_bytes: int,
    wall_time_s: float,
    **facts: Any,
) -> dict[str, Any]:
    """A record: the facts every record has, under one name each, then the method's and the
    run's own (``facts``). ``weights_fingerprint``: the base weights as given (the run
    identity's); ``backbone_fingerprint``: the trunk tensors the task is tied to."""
    if source not in SOURCES:
        raise ValueError(f"a record's source is one of {SOURCES}, not {source!r}")
    common = {
        "run_id": run_id,
        "source": source,
        "dataset": dataset,
        "backbone": backbone,
        "method": method,
        "seed": seed,
        "protocol": protocol,
        "top1": top1,
        "top5": top5,
        "weights_fingerprint": weights_fingerprint,
        "backbone_fingerprint": backbone_fingerprint,
        "task_file": task_file,
        "task_state_bytes": task_state_bytes,
        "wall_time_s": round(wall_time_s, 2),
    }
    return {**common, **facts}  # a common key in facts is a TypeError: each is a parameter


# Where untracked files are code or configs that a run may use (a method just added).
CODE_FOLDERS = ("src", "conf")


def code_version(root: Path = CHECKOUT_ROOT) -> dict[str, Any]:
    """The git commit of the code that ran, and whether the tree differed from it: local
    changes, or files git does not track under the code and config folders (listed)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        changed = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        untracked = git("ls-files", "--others", "--exclude-standard", "--", *CODE_FOLDERS)
    except (OSError, subprocess.CalledProcessError):
        return {"git": None, "dirty": None}
    listed = sorted(untracked.split())
    version = {"git": sha, "dirty": changed or bool(listed)}
    return {**version, "untracked": listed} if listed else version


def device_name(device: torch.device | None = None) -> str:
    """The accelerator a run used: the CUDA device's name, else the CPU's."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def write_record(
    path: str | Path, record: dict[str, Any], device: torch.device | None = None
) -> Path:
    """Write ``record`` atomically, stamped with the code, device, torch and finish time."""
    path = Path(path)
    atomic_write_json(
        path,
        {
            "format": RECORD_FORMAT,
            **record,
            "code_version": code_version(),
            "device": device_name(device),
            "torch": torch.__version__,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return path


def read_record(path: str | Path) -> dict[str, Any]:
    """One record; a truncated, corrupt or foreign file is a UserError naming it and why."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"record {path} cannot be read ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"record {path} is truncated or corrupt (not JSON: {err})") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"record {path} is not a {RECORD_FORMAT} record (format: {found!r})")
    return {**data, "record_path": str(path)}


def read_records(folder: str | Path, warn: bool = True) -> list[dict[str, Any]]:
    """Every record under ``folder`` (recursively). A JSON file that is not a whole record
    is left out, and named on stderr with the reason (``warn``)."""
    records = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            records.append(read_record(path))
        except UserError as err:
            if warn:
                print(f"warning: skipping {err}", file=sys.stderr)
    return records
