"""What makes two runs the same run: the effective config plus the base weights' tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from piggyback_lab.models import pretrained_state, weights_source
from piggyback_lab.runs.records import read_record, run_id
from piggyback_lab.taskfile import state_digest
from piggyback_lab.utils.errors import UserError
from piggyback_lab.utils.output import say

# Root keys that datasets read through their datamodule config (``val_fraction: ${val_fraction}``);
# a Visual Decathlon domain has its own val split and reads no val_fraction.
DATA_KEYS = ("val_fraction", "verify_images", "skip_bad_images")


def weights_fingerprint(backbone: str, weights: str | None) -> str | None:
    """SHA-256 (first 16 hex digits) over the base weights' tensors, not a file's bytes (a
    file's metadata may be written in any order), for a file and for weights an installed
    package provides; torchvision weights and timm tags stand for themselves (both
    libraries check their downloads against a hash)."""
    if not weights:
        return None
    source = weights_source(backbone, str(weights))
    if source == "file" and not Path(weights).is_file():
        return None  # the builder names the missing file with how to get it
    if source in ("file", "packaged"):  # a JAX .npz counts by its tensors as timm reads them
        return state_digest(pretrained_state(backbone, str(weights)))[:16]
    return f"{source}:{weights}"


def run_identity(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """(run id, the resolved config as recorded, with the base weights' fingerprint). A
    weights file counts by its tensors, not by where it lies."""
    config = OmegaConf.to_container(cfg, resolve=True)
    fingerprint = weights_fingerprint(cfg.backbone.name, cfg.backbone.weights)
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
