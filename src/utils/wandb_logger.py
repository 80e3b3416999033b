"""A wandb logger that never takes a run down: offline by default, offline on failure."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def make_wandb_logger(cfg: DictConfig, out_dir: Path):
    from pytorch_lightning.loggers import WandbLogger

    opts = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    mode = opts.pop("mode", "offline")
    kwargs = dict(save_dir=str(out_dir), config=OmegaConf.to_container(cfg, resolve=True), **opts)
    if mode == "online":
        try:
            logger = WandbLogger(mode="online", **kwargs)
            _ = logger.experiment  # connects now, so a failure surfaces here
            return logger
        except Exception as err:  # no network, no API key, server down: keep training
            log.warning("wandb online failed (%s); logging offline instead", err)
            os.environ["WANDB_MODE"] = "offline"
    return WandbLogger(mode="offline", **kwargs)
