"""A wandb logger that never takes a run down: offline by default, offline on failure."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)


def sweep_group() -> str | None:
    """The sweep folder's name when this job is one of a Hydra sweep (``-m``), so a sweep's
    runs share a wandb group; None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra.sweep.dir).name or None


def make_wandb_logger(
    mode: str = "offline", group: str | None = None, **kwargs: Any
) -> WandbLogger:
    """A Lightning WandbLogger; ``mode=online`` falls back to offline with a warning when
    it cannot connect (no network, no API key, server down). ``group`` (null: a sweep's
    folder name, none for a single run) groups a sweep's runs."""
    from pytorch_lightning.loggers import WandbLogger

    group = group or sweep_group()
    if group:
        kwargs["group"] = group

    if mode == "online":
        try:
            logger = WandbLogger(mode="online", **kwargs)
            _ = logger.experiment  # connects now, so a failure surfaces here
            return logger
        except Exception as err:  # keep training
            log.warning("wandb online failed (%s); logging offline instead", err)
            os.environ["WANDB_MODE"] = "offline"
    return WandbLogger(mode="offline", **kwargs)
