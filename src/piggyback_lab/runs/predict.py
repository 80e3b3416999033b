"""Classify images with a stored task: the top-k class names (stored in the task file) per
image, as a table or as JSON lines. Images get the test transform of the task's dataset
config; a file that is not a readable image is named in a warning and the others go on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from piggyback_lab.methods import method_of
from piggyback_lab.methods.multitask import TASK_SUFFIX, MultiTaskModel, top_classes
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.models import build_backbone
from piggyback_lab.models.registry import classifier_name, pretrained_class_names
from piggyback_lab.runs.builders import build_image_transforms
from piggyback_lab.runs.config import compose
from piggyback_lab.runs.evaluate import compose_config, pick_device, training_overrides
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError, check_choice, check_integer

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


def load_images(
    paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]
) -> tuple[list[Path], torch.Tensor | None]:
    """Transformed images; files that are not images are named in a warning and skipped."""
    kept, tensors = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                tensors.append(transform(image.convert("RGB")))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
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


def predict_images(cfg: DictConfig, overrides: Sequence[str]) -> list[dict]:
    """Top-k predictions for every readable image (conf/predict.yaml); prints and returns
    them. ``overrides`` (of the training config) apply to the task's config. With no task,
    the backbone's own pretrained classifier predicts its own classes."""
    if not cfg.images:
        raise UserError(
            "usage: python -m src.predict [task=<file>] images=<files or folder> (no task: "
            "the backbone's own classifier, e.g. backbone=efficientnet_lite0)"
        )
    check_choice("format", cfg.format, FORMATS)
    k = check_integer("topk", cfg.topk)
    batch_size = check_integer("batch_size", cfg.batch_size)
    device = pick_device(str(cfg.device))
    tf = _single_task(cfg) if cfg.task else None
    if tf is not None:
        if not (tf.meta.get("dataset") or tf.meta.get("transforms")):
            raise UserError(
                f"task file {tf.path} names neither its dataset nor its test transforms; "
                "re-export it with export_task(..., transforms={'size': <pixels>})"
            )
        task_cfg = compose_config(
            tf.meta.get("dataset"), tf.meta["backbone"], overrides, tf.meta.get("transforms")
        )
    else:
        task_cfg = _pretrained_config(cfg, overrides)
    _, transform = build_image_transforms(task_cfg)
    paths, images = load_images(image_paths(str(cfg.images)), transform)
    if images is None:
        raise UserError(f"none of the files in images={cfg.images} is a readable image")
    weights = task_cfg.backbone.weights
    if tf is not None:
        host = MultiTaskModel(
            tf.meta["backbone"], str(weights) if weights else None, [tf], device=device,
            classifier=tf.meta.get("classifier"),
        )  # fmt: skip
        top = host.topk(images, tf.path.stem, k=k, batch_size=batch_size)
    else:
        bb = task_cfg.backbone
        head = classifier_name(bb.name, bb.get("classifier"))
        network = build_backbone(bb.name, str(weights), classifier=head)
        outputs = network.get_submodule(head).out_features
        names = pretrained_class_names(bb.name, str(weights), outputs)
        network = network.to(device).eval()
        with torch.no_grad():
            logits = torch.cat([network(b.to(device)).cpu() for b in images.split(batch_size)])
        top = top_classes(logits, names, k)
    results = [
        {"image": str(p), "topk": [{"class": c, "prob": round(q, 6)} for c, q in row]}
        for p, row in zip(paths, top, strict=True)
    ]
    for result in results:
        if cfg.format == "jsonl":
            print(json.dumps(result))
        else:
            guesses = "  ".join(f"{t['class']} {t['prob']:.3f}" for t in result["topk"])
            print(f"{result['image']}\t{guesses}")
    return results


def _single_task(cfg: DictConfig) -> TaskFile:
    tf = read_task(resolve_task(str(cfg.task), cfg.paths.tasks_dir))
    if method_of(tf).shared_network:
        raise UserError(
            f"{tf.path} holds its own network and several tasks (a {method_of(tf).name} "
            "state); predict takes a single-task file"
        )
    return tf


def _pretrained_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """With no task, the pretrained network predicts as it is; its images are prepared as
    its base dataset's test split is (``backbone.base_dataset``: ImageNet's resize 256,
    centre crop 224)."""
    bb = cfg.backbone
    if not bb.weights or not bb.get("base_dataset"):
        raise UserError(
            f"backbone {bb.name} has no pretrained classifier to predict with (weights "
            f"{bb.weights}, base_dataset {bb.get('base_dataset')}); pass task=<file>"
        )
    return compose_config(str(bb.base_dataset), None, overrides)


def predict(overrides: Sequence[str]) -> list[dict]:
    """``python -m src.predict`` in-process: conf/predict.yaml composed with ``overrides``."""
    return predict_images(compose(overrides, "predict"), training_overrides(overrides, "predict"))
