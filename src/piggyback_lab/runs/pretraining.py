"""Pretrain a small base network on Fashion-MNIST: the embedded benchmark's analogue of an
ImageNet checkpoint (cached under data/pretrained/; src.train does it once when missing)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from safetensors.torch import save as st_save
from torch.utils.data import DataLoader

from piggyback_lab.data.mini import fashion_tensors
from piggyback_lab.methods.finetune import Finetune
from piggyback_lab.models import build_backbone, classifier_name, normalisation
from piggyback_lab.runs.config import CONF_DIR
from piggyback_lab.runs.console import EpochLine, quiet_lightning
from piggyback_lab.utils.atomic import atomic_write_bytes, atomic_write_json
from piggyback_lab.utils.errors import UserError
from piggyback_lab.utils.output import say

# The base's own recipe (not a paper's): SGD with momentum, step decay before the last epoch.
EPOCHS, BATCH, LR, MOMENTUM, WEIGHT_DECAY = 2, 256, 0.1, 0.9, 5e-4


def pretrainable_backbones() -> list[str]:
    """Backbones whose config says they are pretrained here (``pretrain: true``)."""
    return sorted(
        p.stem
        for p in (CONF_DIR / "backbone").glob("*.yaml")
        if OmegaConf.load(p).get("pretrain") is True
    )


def pretrain(
    backbone: str, data_dir: str | Path, out: Path, epochs: int = EPOCHS, seed: int = 0
) -> dict:
    """Train ``backbone`` from scratch on Fashion-MNIST's training split; save its weights."""
    allowed = pretrainable_backbones()
    if backbone not in allowed:
        raise UserError(
            f"backbone {backbone!r} is not pretrained here (ImageNet backbones come with their "
            f"weights); choose one of: {', '.join(allowed)}"
        )
    if not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"pretraining needs epochs >= 1 (got {epochs!r})")
    start = time.time()
    pl.seed_everything(seed, verbose=False)
    norm = normalisation(backbone)
    train_set = fashion_tensors(data_dir, True, norm)
    test_set = fashion_tensors(data_dir, False, norm)
    module = Finetune(
        build_backbone(backbone, None, num_classes=10),
        classifier_name(backbone),
        backbone=backbone,
        num_classes=10,
        optimizer=functools.partial(torch.optim.SGD, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        lr=LR,
        lr_decay_every=max(1, epochs - 1),
        lr_decay_factor=0.1,
        train_bn=True,
    )
    quiet_lightning()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="auto", devices=1, logger=False, callbacks=[EpochLine()],
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(train_set, batch_size=BATCH, shuffle=True))
    test = trainer.test(module, DataLoader(test_set, batch_size=512), verbose=False)[0]
    state = {k: v.contiguous() for k, v in module.model.state_dict().items()}
    atomic_write_bytes(
        out, st_save(state, metadata={"backbone": backbone, "dataset": "fashion_mnist"})
    )
    summary = {
        "backbone": backbone,
        "dataset": "fashion_mnist",
        "epochs": epochs,
        "test_top1": 100.0 * float(test["test/top1"]),
        "wall_time_s": round(time.time() - start, 1),
        "weights": str(out),
    }
    atomic_write_json(out.with_suffix(".json"), summary)
    say(f"pretrained {backbone} on Fashion-MNIST: test top-1 {summary['test_top1']:.2f}% -> {out}")
    return summary
