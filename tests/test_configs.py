"""Every config group composes, and the defaults follow the published recipes."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

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


def test_default_is_the_mini_benchmark() -> None:
    cfg = _compose()
    assert (cfg.dataset.name, cfg.backbone.name, cfg.method.name) == (
        "mini_digits",
        "minicnn",
        "piggyback",
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
