"""The embedded mini benchmark: a base dataset and four target tasks that need no download.

The base network is pretrained on Fashion-MNIST's training split. The target tasks are
built from images the base never saw (Fashion-MNIST's test split, shifted in domain) and
from another source (scikit-learn's bundled digits), and are written as ImageFolder PNG
trees, so training on them runs the same code path as CUB or Flowers.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from piggyback_lab.utils.atomic import atomic_dir
from piggyback_lab.utils.errors import UserError, check_choice

FASHION_CLASSES = [
    "tshirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]  # fmt: skip
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]  # fmt: skip
TRAIN_PER_TASK, TEST_PER_TASK = 1500, 500
# fashion_mnist_subset: Fashion-MNIST's own train/test split, cut to a 2-core CPU budget
# (images per class, drawn with a fixed seed from each split).
SUBSET_TRAIN_PER_CLASS, SUBSET_TEST_PER_CLASS = 150, 100

Split = tuple[np.ndarray, np.ndarray]  # uint8 images (N, H, W), int labels (N,)


def load_fashion_mnist(data_dir: str | Path, train: bool) -> Split:
    """Fashion-MNIST from data/, else Debian's package, else torchvision's download."""
    from torchvision.datasets import FashionMNIST

    root = Path(data_dir)
    raw = root / "FashionMNIST" / "raw"
    if not all((raw / f).exists() for f in FASHION_FILES) and all(
        (FASHION_SYSTEM_DIR / f"{f}.gz").exists() for f in FASHION_FILES
    ):
        raw.mkdir(parents=True, exist_ok=True)
        for f in FASHION_FILES:
            with gzip.open(FASHION_SYSTEM_DIR / f"{f}.gz") as src, open(raw / f, "wb") as dst:
                shutil.copyfileobj(src, dst)
    try:
        ds = FashionMNIST(str(root), train=train, download=not (raw / FASHION_FILES[0]).exists())
    except Exception as err:
        raise UserError(
            f"Fashion-MNIST is not available ({err}). Install Debian's dataset-fashion-mnist "
            f"(apt-get install dataset-fashion-mnist), or put the four idx files in {raw}"
        ) from None
    return ds.data.numpy(), ds.targets.numpy()


def _pick(labels: np.ndarray, start: int, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """A fixed, disjoint slice of a seeded permutation: (train indices, test indices)."""
    order = np.random.default_rng(1234).permutation(len(labels))
    chunk = order[start : start + n_train + n_test]
    return chunk[:n_train], chunk[n_train:]


def _fashion_task(start: int, shift: Callable[[np.ndarray], np.ndarray]):
    def build(data_dir: Path) -> tuple[Split, Split, list[str]]:
        images, labels = load_fashion_mnist(data_dir, train=False)
        tr, te = _pick(labels, start, TRAIN_PER_TASK, TEST_PER_TASK)
        return (shift(images[tr]), labels[tr]), (shift(images[te]), labels[te]), FASHION_CLASSES

    return build


def _per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` indices of each class in a fixed permutation, in that order."""
    order = np.random.default_rng(1234).permutation(len(labels))
    classes = np.unique(labels)
    picked = [order[labels[order] == c][:per_class] for c in classes]
    short = [int(c) for c, idx in zip(classes, picked, strict=True) if len(idx) < per_class]
    if short:
        raise UserError(f"Fashion-MNIST has fewer than {per_class} images of classes {short}")
    return np.sort(np.concatenate(picked))


def _fashion_subset(data_dir: Path) -> tuple[Split, Split, list[str]]:
    """Fashion-MNIST's official split, class-balanced: a target for ImageNet backbones (the
    mini bases are pretrained on its train split, so for them it is no transfer)."""
    splits = []
    for train, per_class in ((True, SUBSET_TRAIN_PER_CLASS), (False, SUBSET_TEST_PER_CLASS)):
        images, labels = load_fashion_mnist(data_dir, train=train)
        idx = _per_class(labels, per_class)
        splits.append((images[idx], labels[idx]))
    return splits[0], splits[1], FASHION_CLASSES


def _digits(data_dir: Path) -> tuple[Split, Split, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack(
        [np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in small]
    )
    tr, te = _pick(digits.target, 0, len(digits.target) - TEST_PER_TASK, TEST_PER_TASK)
    names = [f"digit{d}" for d in range(10)]
    return (images[tr], digits.target[tr]), (images[te], digits.target[te]), names


MINI_TASKS: dict[str, Callable[[Path], tuple[Split, Split, list[str]]]] = {
    "mini_digits": _digits,
    "mini_fashion_rot": _fashion_task(0, lambda x: np.rot90(x, k=1, axes=(1, 2)).copy()),
    "mini_fashion_neg": _fashion_task(2000, lambda x: 255 - x),
    "mini_fashion_flip": _fashion_task(4000, lambda x: x[:, ::-1, :].copy()),
    "fashion_mnist_subset": _fashion_subset,
}


def _write_split(folder: Path, split: Split, class_names: list[str]) -> None:
    images, labels = split
    for idx, name in enumerate(class_names):
        (folder / f"{idx:02d}_{name}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / f"{label:02d}_{class_names[label]}" / f"{i:05d}.png")


def prepare_mini_task(name: str, data_dir: str | Path) -> Path:
    """Write data/mini/<name>/{train,test}/<class>/*.png once; atomic (temp dir + rename)."""
    check_choice("mini task", name, MINI_TASKS)
    out = Path(data_dir) / "mini" / name
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    train, test, class_names = MINI_TASKS[name](Path(data_dir))
    with atomic_dir(out) as tmp:
        _write_split(tmp / "train", train, class_names)
        _write_split(tmp / "test", test, class_names)
    return out


def fashion_tensors(
    data_dir: str | Path, train: bool, normalisation: Mapping, size: int = 32
) -> torch.utils.data.TensorDataset:
    """Fashion-MNIST as 3x32x32 tensors in memory, for pretraining the base; normalised
    with the mean/std its backbone registers (one value per channel, the same for all)."""
    images, labels = load_fashion_mnist(data_dir, train)
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(normalisation["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalisation["std"]).view(1, 3, 1, 1)
    x = ((x - mean) / std).contiguous()
    return torch.utils.data.TensorDataset(x, torch.from_numpy(labels).long())
