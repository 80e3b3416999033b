"""The root config: where it lives, how it is composed outside a Hydra app, and how a
stored dataset name maps back to its config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from src.utils.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
DATASET_CONF = CONF_DIR / "dataset"


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, as a Hydra app would compose it
    (without the ``hydra`` node); a bad override is a UserError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    try:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its search path
            return hydra_compose(config_name, overrides=list(overrides))
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=list(overrides))
    except HydraException as err:
        raise UserError(f"bad config override: {err}") from None


def with_dataset(cfg: DictConfig, dataset: str) -> DictConfig:
    """A copy of the run config with ``dataset`` composed from conf/dataset/<dataset>.yaml
    (a PackNet sequence runs one such config per task)."""
    task_cfg = cfg.copy()
    with open_dict(task_cfg):
        task_cfg.dataset = compose([f"dataset={dataset}"]).dataset
    return task_cfg


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
