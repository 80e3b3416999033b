"""What makes two runs the same run: the effective config plus the base weights' tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.masking import state_digest
from src.models import WEIGHT_FILE_SUFFIXES, load_state_dict_file
from src.runs.records import read_record, run_id
from src.utils.errors import UserError
from src.utils.output import say

# Root keys that datasets read through their datamodule config (``val_fraction: ${val_fraction}``);
# a Visual Decathlon domain has its own val split and reads no val_fraction.
DATA_KEYS = ("val_fraction", "verify_images", "skip_bad_images")


def weights_fingerprint(weights: str | None) -> str | None:
    """SHA-256 (first 16 hex digits) over a weights file's tensors, not its bytes (a file's
    metadata may be written in any order); a torchvision weights name stands for itself
    (torchvision checks its download against the hash in its URL)."""
    if not weights:
        return None
    path = Path(weights)
    if path.suffix not in WEIGHT_FILE_SUFFIXES:
        return f"torchvision:{weights}"
    if not path.is_file():
        return None  # the builder names the missing file with how to get it
    return state_digest(load_state_dict_file(path))[:16]


def run_identity(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """(run id, the resolved config as recorded, with the base weights' fingerprint). A
    weights file counts by its tensors, not by where it lies."""
    config = OmegaConf.to_container(cfg, resolve=True)
    fingerprint = weights_fingerprint(cfg.backbone.weights)
    config["weights_fingerprint"] = fingerprint
    hashed = {**config, "backbone": {**config["backbone"], "weights": fingerprint}}
    for key in DATA_KEYS:  # a root data key the dataset's loader does not read changes nothing
        if key not in config["dataset"]:
            hashed.pop(key, None)
    return run_id(hashed), config


def existing_record(path: Path) -> dict[str, Any] | None:
    """The finished run's record, said on stdout; None when the run must (re-)run: no
    record, or one that is truncated or corrupt (named on stdout)."""
    if not path.exists():
        return None
    try:
        record = read_record(path)
        top1 = record["top1"]
    except (UserError, KeyError) as err:
        why = err if isinstance(err, UserError) else f"record {path} has no top1"
        say(f"re-running: {why}")
        return None
    shown = "untested" if top1 is None else f"recorded top-1 {float(top1):.2f}%"
    say(f"skip: record {path} exists ({shown}); force=true re-runs")
    return record
