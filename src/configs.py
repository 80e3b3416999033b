"""Where the Hydra configs live, and how a stored dataset name maps back to its config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DATASET_CONF = CONF_DIR / "dataset"


def dataset_config_names() -> list[str]:
    """Every dataset config as ``dataset=`` names it (cub, decathlon/aircraft, ...)."""
    return sorted(
        p.relative_to(DATASET_CONF).with_suffix("").as_posix() for p in DATASET_CONF.rglob("*.yaml")
    )


def dataset_config_for(dataset: str) -> str | None:
    """The config of a dataset stored by its config name or by its ``name`` field
    (task files and records store ``decathlon_dtd`` for ``dataset=decathlon/dtd``)."""
    names = dataset_config_names()
    if dataset in names:
        return dataset
    for config in names:
        if OmegaConf.load(DATASET_CONF / f"{config}.yaml").get("name") == dataset:
            return config
    return None
