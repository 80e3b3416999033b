"""Classify images with a stored task: ``python -m src.predict task=<file> images=<files|folder>``.

Prints the top-k class names (stored in the task file) per image, as a table or as JSON
lines. Arguments are ``key=value``:

  task=<file or name>        a task file, or the name of one under paths.tasks_dir
  images=<file>[,<file>...] | <folder>   a folder is read recursively (hidden files skipped)
  topk=<k>                   (default 5)
  format=table|jsonl         (default table)
  device=auto|cpu|cuda       (default auto)
  batch_size=<n>             (default 64)
  <any other key=value>      a Hydra override of conf/config.yaml, e.g. backbone.weights=...

Images get the test transform of the task's dataset config. A file that is not a readable
image is named in a warning on stderr and the others go on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from src.data.transforms import build_transforms
from src.errors import UserError, exit_on_user_error
from src.eval import compose_config, parse_args, pick_device, positive_int
from src.masking.taskfile import read_task_file
from src.multitask import TASK_SUFFIX, MultiTaskModel

FORMATS = ("table", "jsonl")


def image_paths(spec: str) -> list[Path]:
    """Files named by a comma-separated list or a folder (recursively, hidden files skipped)."""
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part)
        if path.is_dir():
            paths.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
            )
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"image file or folder {path} does not exist")
    if not paths:
        raise UserError(f"no files found in images={spec}")
    return paths


def load_images(paths: Sequence[Path], transform) -> tuple[list[Path], torch.Tensor | None]:
    """Transformed images; files that are not images are named in a warning and skipped."""
    kept, tensors = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                tensors.append(transform(image.convert("RGB")))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            print(f"warning: skipping {path}: not a readable image ({err})", file=sys.stderr)
            continue
        kept.append(path)
    return kept, torch.stack(tensors) if tensors else None


def resolve_task(spec: str, tasks_dir: str) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    named = Path(tasks_dir) / (spec if spec.endswith(TASK_SUFFIX) else spec + TASK_SUFFIX)
    if named.is_file():
        return named
    raise UserError(f"task {spec!r} is neither a file nor a task under {tasks_dir}")


def predict(argv: Sequence[str]) -> list[dict]:
    """Top-k predictions for every readable image; prints them and returns them."""
    args, overrides = parse_args(
        argv, {"task": None, "images": None, "topk": "5", "format": "table", "device": "auto",
               "batch_size": "64"},
    )  # fmt: skip
    if not args["task"] or not args["images"]:
        raise UserError("usage: python -m src.predict task=<file> images=<files or folder>")
    if args["format"] not in FORMATS:
        raise UserError(f"unknown format {args['format']!r}; choose one of: {', '.join(FORMATS)}")
    k = positive_int("topk", args["topk"])
    batch_size = positive_int("batch_size", args["batch_size"])
    base = compose_config(None, None, overrides)
    tf = read_task_file(resolve_task(args["task"], base.paths.tasks_dir))
    if tf.kind == "packnet":
        raise UserError(f"{tf.path} is a PackNet state; predict takes a single-task file")
    cfg = compose_config(tf.meta["dataset"], tf.meta["backbone"], overrides)
    _, transform = build_transforms(cfg.dataset.transforms)
    paths, images = load_images(image_paths(args["images"]), transform)
    if images is None:
        raise UserError(f"none of the files in images={args['images']} is a readable image")
    weights = cfg.backbone.weights
    model = MultiTaskModel(
        tf.meta["backbone"], str(weights) if weights else None, [tf],
        device=pick_device(args["device"]),
    )  # fmt: skip
    top = model.topk(images, tf.path.stem, k=k, batch_size=batch_size)
    results = [
        {"image": str(p), "topk": [{"class": c, "prob": round(q, 6)} for c, q in row]}
        for p, row in zip(paths, top, strict=True)
    ]
    for result in results:
        if args["format"] == "jsonl":
            print(json.dumps(result))
        else:
            guesses = "  ".join(f"{t['class']} {t['prob']:.3f}" for t in result["topk"])
            print(f"{result['image']}\t{guesses}")
    return results


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    predict(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
