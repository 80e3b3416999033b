"""Pretrain the mini benchmark's base on Fashion-MNIST: ``python -m src.pretrain``.

Writes data/pretrained/<backbone>_fashion.safetensors and a JSON summary beside it
(``python -m src.train backbone=minicnn`` does this once by itself when the file is missing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from piggyback_lab.runs.pretraining import EPOCHS, pretrain
from piggyback_lab.utils.errors import exit_on_user_error


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minicnn")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument(
        "--out", type=Path, help="default: <data-dir>/pretrained/<backbone>_fashion.safetensors"
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    out = args.out or Path(args.data_dir) / "pretrained" / f"{args.backbone}_fashion.safetensors"
    pretrain(args.backbone, args.data_dir, out, args.epochs)


if __name__ == "__main__":
    main()
