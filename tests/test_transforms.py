"""The input pipelines as published (piggyback_lab/data/transforms.py): step by step, with the sizes
each step uses, for both styles, and what a config left unsaid defaults to."""

from __future__ import annotations

import pytest
from torchvision import transforms as T

from piggyback_lab.data.transforms import build_transforms
from piggyback_lab.runs.config import compose
from piggyback_lab.utils.errors import UserError

STATS = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}


def steps(pipeline: T.Compose) -> list[tuple]:
    """Each step as (class name, its size or mean/std)."""
    out = []
    for t in pipeline.transforms:
        if isinstance(t, T.Normalize):
            out.append(("Normalize", tuple(t.mean), tuple(t.std)))
        elif hasattr(t, "size"):
            out.append((type(t).__name__, t.size))
        else:
            out.append((type(t).__name__,))
    return out


NORMALIZE = [("ToTensor",), ("Normalize", (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))]


def test_resize_exact_resizes_both_splits_to_a_square_and_flips_in_training_only() -> None:
    train, test = build_transforms({"style": "resize_exact", "size": 224, "flip": True}, STATS)
    assert steps(train) == [("Resize", (224, 224)), ("RandomHorizontalFlip",), *NORMALIZE]
    assert steps(test) == [("Resize", (224, 224)), *NORMALIZE]


@pytest.mark.parametrize("size, resize", [(224, 256), (64, 73), (32, 37), (96, 110)])
def test_resize_crop_resizes_the_shorter_side_by_256_224_then_crops(size: int, resize: int) -> None:
    """The published test pipeline: Resize(256) then CenterCrop(224), scaled to any size."""
    train, test = build_transforms({"style": "resize_crop", "size": size, "flip": True}, STATS)
    crop = (size, size)
    assert steps(train) == [
        ("Resize", resize),
        ("RandomResizedCrop", crop),
        ("RandomHorizontalFlip",),
        *NORMALIZE,
    ]
    assert steps(test) == [("Resize", resize), ("CenterCrop", crop), *NORMALIZE]


def test_a_stated_resize_and_stats_win_and_flip_defaults_to_on() -> None:
    block = {"style": "resize_crop", "size": 32, "resize": 40, "mean": [0, 0, 0], "std": [1, 1, 1]}
    train, test = build_transforms(block, STATS)
    assert steps(test)[:2] == [("Resize", 40), ("CenterCrop", (32, 32))]
    assert steps(test)[-1] == ("Normalize", (0, 0, 0), (1, 1, 1))
    assert ("RandomHorizontalFlip",) in steps(train)  # no flip key: the published augmentation
    no_flip, _ = build_transforms({**block, "flip": False}, STATS)
    assert ("RandomHorizontalFlip",) not in steps(no_flip)


@pytest.mark.parametrize("given", [{}, {"mean": [0.5] * 3}, {"std": [0.2] * 3}])
def test_transforms_without_a_mean_and_a_std_are_refused(given: dict) -> None:
    with pytest.raises(UserError, match="need a mean and std"):
        build_transforms({"style": "resize_exact", "size": 32, **given})


def test_the_paper_datasets_compose_to_the_published_pipelines() -> None:
    """CUB and Cars (cropped) resize exactly to 224; the others resize to 256 and crop 224."""
    for dataset, style in [("cub", "resize_exact"), ("flowers", "resize_crop")]:
        block = compose([f"dataset={dataset}"]).dataset.transforms
        _, test = build_transforms(block, STATS)
        expected = (
            [("Resize", (224, 224))]
            if style == "resize_exact"
            else [("Resize", 256), ("CenterCrop", (224, 224))]
        )
        assert steps(test)[: len(expected)] == expected and block.style == style
