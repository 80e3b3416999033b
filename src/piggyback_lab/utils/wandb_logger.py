"""A wandb logger that never takes a run down: offline by default, offline on failure."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)


def make_wandb_logger(mode: str = "offline", **kwargs: Any) -> WandbLogger:
    """A Lightning WandbLogger; ``mode=online`` falls back to offline with a warning when
    it cannot connect (no network, no API key, server down)."""
    from pytorch_lightning.loggers import WandbLogger

    if mode == "online":
        try:
            logger = WandbLogger(mode="online", **kwargs)
            _ = logger.experiment  # connects now, so a failure surfaces here
            return logger
        except Exception as err:  # keep training
            log.warning("wandb online failed (%s); logging offline instead", err)
            os.environ["WANDB_MODE"] = "offline"
    return WandbLogger(mode="offline", **kwargs)
