"""Miniatures of the yardstick's benchmarks in their real on-disk layouts: VTAB-1k task
folders as NOAH's get_vtab1k.py writes them and FGVC official folders with VPT's split
files, a few real images (scikit-learn's digits, upscaled, saved as JPEG) per split."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import CONF

VTAB_TASKS = sorted(p.stem for p in (CONF / "dataset" / "vtab").glob("*.yaml"))
FGVC_DATASETS = sorted(p.stem for p in (CONF / "dataset" / "fgvc").glob("*.yaml"))
# Sizes of a miniature's splits, and the overrides that tell a run about them.
MINI_VTAB = {"train": 6, "val": 3, "test": 4}
MINI_VTAB_SIZES = "dataset.split_sizes={train:6,val:3,trainval:9}"
MINI_FGVC = {"train": 2, "val": 1, "test": 1}  # per class


def dataset_config(config: str) -> dict:
    """A dataset config's own keys (not composed): num_classes, root's last part, image_dir."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / f"{config}.yaml"))
    raw["folder"] = raw["root"].rsplit("/", 1)[1]
    return raw


@functools.cache
def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images * 255 / 16).astype(np.uint8)


def _digit(index: int, size: int = 16) -> Image.Image:
    images = _digits()
    return Image.fromarray(images[index % len(images)]).resize((size, size)).convert("RGB")


def make_vtab_task(root: Path, task: str) -> Path:
    """``root/<folder>`` with images/<split>/NNNNNN.jpg and the four lists."""
    cfg = dataset_config(f"vtab/{task}")
    folder = root / cfg["folder"]
    lines: dict[str, list[str]] = {}
    index = 0
    for split, count in MINI_VTAB.items():
        name = {"train": "train800", "val": "val200", "test": "test"}[split]
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = f"images/{name}/{i:06d}.jpg"
            _digit(index).save(folder / path)
            lines.setdefault(name, []).append(f"{path} {index % cfg['num_classes']}")
            index += 1
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for name, rows in lines.items():
        (folder / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return folder


def make_vtab(root: Path, tasks: list[str] | None = None) -> Path:
    for task in tasks or VTAB_TASKS:
        make_vtab_task(root, task)
    return root


def make_fgvc(root: Path, name: str) -> Path:
    """The official folder of FGVC dataset ``name``: images in one folder per class under
    its image folder, and VPT's train/val/test.json with 1-based class ids."""
    cfg = dataset_config(f"fgvc/{name}")
    folder = root / cfg["folder"]
    images = folder / cfg.get("image_dir", "")
    splits: dict[str, dict[str, int]] = {s: {} for s in MINI_FGVC}
    index = 0
    for label in range(1, cfg["num_classes"] + 1):
        class_dir = f"{label:03d}.class_{label}"
        (images / class_dir).mkdir(parents=True, exist_ok=True)
        for split, per_class in MINI_FGVC.items():
            for _ in range(per_class):
                relative = f"{class_dir}/{index:05d}.jpg"
                _digit(index).save(images / relative)
                splits[split][relative] = label
                index += 1
    for split, mapping in splits.items():
        (folder / f"{split}.json").write_text(json.dumps(mapping))
    return folder


def fgvc_sizes(name: str) -> str:
    """The override that states a miniature's split sizes."""
    k = dataset_config(f"fgvc/{name}")["num_classes"]
    return "dataset.split_sizes={" + ",".join(f"{s}:{n * k}" for s, n in MINI_FGVC.items()) + "}"
