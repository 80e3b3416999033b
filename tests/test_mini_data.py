"""The embedded datasets built from Fashion-MNIST's idx files (piggyback_lab/data/mini.py), on a
fake
Fashion-MNIST written in the real idx format, whose pixels say where each image came from."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piggyback_lab.data import mini
from piggyback_lab.utils.errors import UserError

SPLIT_MARK = {"train": 1, "t10k": 2}


def write_fake_fashion(data_dir: Path, per_class: dict[str, int]) -> None:
    """data_dir/FashionMNIST/raw/<split>-{images-idx3,labels-idx1}-ubyte, where pixel (0, 0)
    is the label, (0, 1) the split and (0, 2), (0, 3) the image's index in its file."""
    raw = data_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n_per_class in per_class.items():
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), n_per_class))
        images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels
        images[:, 0, 1] = SPLIT_MARK[split]
        images[:, 0, 2], images[:, 0, 3] = np.divmod(np.arange(len(labels)), 256)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(labels), 28, 28) + images.tobytes()
        )
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, len(labels)) + labels.tobytes()
        )


def read_tree(split_dir: Path) -> list[tuple[str, np.ndarray]]:
    return [
        (png.parent.name, np.asarray(Image.open(png))) for png in sorted(split_dir.glob("*/*.png"))
    ]


def test_fashion_mnist_subset_keeps_the_official_split_and_balances_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_fashion(tmp_path, {"train": 7, "t10k": 5})
    monkeypatch.setattr(mini, "SUBSET_TRAIN_PER_CLASS", 4)
    monkeypatch.setattr(mini, "SUBSET_TEST_PER_CLASS", 3)
    out = mini.prepare_mini_task("fashion_mnist_subset", tmp_path)
    for split, mark, per_class in (("train", 1, 4), ("test", 2, 3)):
        images = read_tree(out / split)
        assert len(images) == 10 * per_class
        folders = sorted({folder for folder, _ in images})
        assert folders == [f"{c:02d}_{name}" for c, name in enumerate(mini.FASHION_CLASSES)]
        for folder, pixels in images:
            assert pixels[0, 0] == int(folder[:2])  # filed under its own label
            assert pixels[0, 1] == mark  # train images from the train file, test from t10k
        indices = [int(p[0, 2]) * 256 + int(p[0, 3]) for _, p in images]
        assert len(set(indices)) == len(indices)


def test_fashion_mnist_subset_is_the_same_draw_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mini, "SUBSET_TRAIN_PER_CLASS", 4)
    monkeypatch.setattr(mini, "SUBSET_TEST_PER_CLASS", 3)
    trees = []
    for name in ("a", "b"):
        write_fake_fashion(tmp_path / name, {"train": 7, "t10k": 5})
        out = mini.prepare_mini_task("fashion_mnist_subset", tmp_path / name)
        trees.append([(f, p.tobytes()) for f, p in read_tree(out / "train")])
    assert trees[0] == trees[1]


def test_fashion_mnist_subset_refuses_a_split_with_too_few_images_of_a_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_fashion(tmp_path, {"train": 3, "t10k": 5})
    monkeypatch.setattr(mini, "SUBSET_TRAIN_PER_CLASS", 4)
    with pytest.raises(UserError, match="fewer than 4 images"):
        mini.prepare_mini_task("fashion_mnist_subset", tmp_path)
    assert not (tmp_path / "mini" / "fashion_mnist_subset").exists()  # nothing half-written
