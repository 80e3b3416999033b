"""Everything a run is made of, built from the root config with ``hydra.utils.instantiate``:
datamodule (``dataset._target_``), backbone (the registry), method (``method._target_``,
its optimizer a ``_partial_``), trainer, callbacks and loggers (config groups)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from torch import nn

from piggyback_lab.data.transforms import build_transforms
from piggyback_lab.methods.config import RUN_KEYS
from piggyback_lab.models import build_backbone, classifier_name, normalisation
from piggyback_lab.runs.config import dataset_config_for, one_line
from piggyback_lab.runs.console import EpochBar, EpochLine, progress_bars, quiet_lightning
from piggyback_lab.runs.identity import run_identity
from piggyback_lab.utils.errors import UserError

log = logging.getLogger(__name__)

# Keys of a method config that the run uses (naming, epochs, data loading), not the module.


def instantiate_checked(node: Any, what: str, **kwargs: Any) -> Any:
    """``instantiate`` that lets a UserError raised inside the target through as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"cannot build the {what} from its config: {one_line(err)}") from None


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The dataset's datamodule; images are normalised as the backbone's weights expect
    unless the dataset config says otherwise."""
    return instantiate_checked(
        cfg.dataset,
        "dataset",
        normalisation=normalisation(cfg.backbone.name, cfg.backbone.weights),
        _convert_="all",
    )


def build_image_transforms(cfg: DictConfig) -> tuple[Any, Any]:
    """(train, test) transforms of an ImageFolder dataset, normalised for the backbone."""
    transforms = OmegaConf.to_container(cfg.dataset.transforms, resolve=True)
    return build_transforms(transforms, normalisation(cfg.backbone.name, cfg.backbone.weights))


def ensure_backbone_weights(cfg: DictConfig) -> float:
    """Pretrain the mini benchmark's base when its cached weights file is missing; returns
    the seconds spent pretraining (0 when cached)."""
    bb = cfg.backbone
    if not (bb.get("pretrain") and bb.weights and not Path(bb.weights).exists()):
        return 0.0
    from piggyback_lab.runs.pretraining import pretrain
    from piggyback_lab.runs.resume import run_lock

    path = Path(bb.weights)
    with run_lock(path.with_suffix(""), wait=True):  # first runs at once: one pretrains
        if path.exists():  # the run waited for made them
            return 0.0
        log.info("base weights %s missing: pretraining them once", bb.weights)
        return pretrain(bb.name, cfg.paths.data_dir, path)["wall_time_s"]


def scores_pretrained(cfg: DictConfig) -> bool:
    """Whether this run scores the pretrained network as it is: its dataset is the one the
    backbone was trained on (``backbone.base_dataset``) and ``pretrained_as_is`` is on, as
    the paper's ImageNet column and the Decathlon's imagenet12 entry were made."""
    base = cfg.backbone.get("base_dataset")
    if not cfg.get("pretrained_as_is", False) or not base:
        return False
    own = dataset_config_for(str(base))
    return own is not None and own == dataset_config_for(cfg.dataset.name)


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The configured backbone with its pretrained weights and a fresh classifier (its own,
    when the run scores the pretrained network as it is)."""
    bb = cfg.backbone
    return build_backbone(
        bb.name, bb.weights, num_classes, scores_pretrained(cfg), bb.get("classifier")
    )


def method_settings(cfg: DictConfig, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The method config, resolved, without the keys the run itself uses."""
    drop = set(RUN_KEYS) | set(exclude)
    settings = OmegaConf.to_container(cfg.method, resolve=True)
    return {k: v for k, v in settings.items() if k not in drop}


def build_method(
    cfg: DictConfig,
    num_classes: int,
    model: nn.Module | None = None,
    exclude: tuple[str, ...] = (),
    **kwargs: Any,
) -> pl.LightningModule:
    """The method's LightningModule around ``model`` (default: the configured backbone)."""
    if model is None:
        model = build_model(cfg, num_classes)
    method = instantiate_checked(
        method_settings(cfg, exclude),
        f"method {cfg.method.name!r}",
        model=model,
        classifier=classifier_name(cfg.backbone.name, cfg.backbone.get("classifier")),
        backbone=cfg.backbone.name,
        num_classes=num_classes,
        _convert_="all",
        **kwargs,
    )
    method.channels_last = channels_last(cfg)
    return method


def _uses_cuda(cfg: DictConfig) -> bool:
    return torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")


def channels_last(cfg: DictConfig) -> bool:
    """``channels_last``: auto is on for CUDA."""
    value = cfg.get("channels_last", "auto")
    return _uses_cuda(cfg) if value == "auto" else bool(value)


def precision(cfg: DictConfig) -> str:
    """``trainer.precision``: auto is bf16-mixed on GPUs that support it, else 32-true."""
    value = cfg.trainer.precision
    if value != "auto":
        return value
    return "bf16-mixed" if _uses_cuda(cfg) and torch.cuda.is_bf16_supported() else "32-true"


def build_trainer(cfg: DictConfig, max_epochs: int, **kwargs: Any) -> pl.Trainer:
    """A Lightning Trainer from ``cfg.trainer``; ``kwargs`` override it (callbacks, logger,
    limits of one phase). Without progress bars it prints one line per epoch."""
    quiet_lightning()
    bars = progress_bars(kwargs.pop("enable_progress_bar", cfg.trainer.enable_progress_bar))
    callbacks = list(kwargs.pop("callbacks", []))
    callbacks.append(EpochBar() if bars else EpochLine())  # either way, one line per epoch
    if kwargs.get("logger"):  # the learning rate of every epoch, in the CSV (and wandb)
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    return instantiate_checked(
        cfg.trainer,
        "trainer",
        precision=precision(cfg),
        max_epochs=max_epochs,
        default_root_dir=str(cfg.paths.output_dir),
        enable_progress_bar=bars,
        callbacks=callbacks,
        **kwargs,
    )


def build_checkpoint(cfg: DictConfig, dirpath: Path, selects: bool) -> pl.Callback:
    """The run's own checkpoint callback (``callbacks.model_checkpoint``); without a
    validation split (``selects`` false) it monitors nothing and keeps the last epoch."""
    extra = {} if selects else {"monitor": None}
    return instantiate_checked(
        cfg.callbacks.model_checkpoint, "checkpoint callback", dirpath=str(dirpath), **extra
    )


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Every other callback of the ``callbacks`` group."""
    return [
        instantiate_checked(node, f"callback {name!r}")
        for name, node in cfg.get("callbacks", {}).items()
        if name != "model_checkpoint" and node is not None
    ]


def build_loggers(cfg: DictConfig, name: str | None = None) -> list:
    """Every logger of the ``logger`` group; ``name`` names this run's folder among them.
    A wandb run is named by the run id (unless ``name`` or ``logger.wandb.name`` says
    otherwise), so a record and its wandb run are found by one name."""
    loggers = []
    for key, node in cfg.get("logger", {}).items():
        if node is None:
            continue
        extra = {"name": name} if name else {}
        if "wandb" in str(node.get("_target_", "")).lower() and not name and not node.get("name"):
            extra["name"] = run_identity(cfg)[0]
        loggers.append(instantiate_checked(node, f"logger {key!r}", **extra))
    return loggers
