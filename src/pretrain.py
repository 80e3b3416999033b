"""Pretrain the mini benchmark's base network on Fashion-MNIST (cached; run once).

``python -m src.pretrain`` writes data/pretrained/minicnn_fashion.safetensors, the
analogue of an ImageNet checkpoint for the embedded benchmark, plus a JSON summary.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytorch_lightning as pl
from safetensors.torch import save as st_save
from torch.utils.data import DataLoader

from src.backbones import build_backbone, classifier_name
from src.data.mini import fashion_tensors
from src.errors import exit_on_user_error
from src.methods.finetune import Finetune
from src.utils.atomic import atomic_write_bytes, atomic_write_json

DEFAULT_OUT = Path("data/pretrained/minicnn_fashion.safetensors")
EPOCHS, BATCH, LR = 2, 256, 0.1


def pretrain(
    backbone: str, data_dir: str | Path, out: Path, epochs: int = EPOCHS, seed: int = 0
) -> dict:
    """Train ``backbone`` from scratch on Fashion-MNIST's training split; save its weights."""
    start = time.time()
    pl.seed_everything(seed, verbose=False)
    train_set, test_set = fashion_tensors(data_dir, True), fashion_tensors(data_dir, False)
    module = Finetune(
        build_backbone(backbone, None, num_classes=10),
        classifier_name(backbone),
        backbone=backbone,
        num_classes=10,
        optimizer="sgd",
        lr=LR,
        momentum=0.9,
        weight_decay=5e-4,
        lr_decay_every=max(1, epochs - 1),
    )
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="auto", devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
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
    print(
        f"pretrained {backbone} on Fashion-MNIST: test top-1 {summary['test_top1']:.2f}% -> {out}"
    )
    return summary


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minicnn")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    pretrain(args.backbone, args.data_dir, args.out, args.epochs)


if __name__ == "__main__":
    main()
