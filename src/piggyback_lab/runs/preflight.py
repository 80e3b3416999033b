"""One validation pass before any work: config values with their keys and ranges, output
folders writable, backbone weights resolvable. A problem is a UserError naming the key."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from piggyback_lab.data.datamodule import PROTOCOLS
from piggyback_lab.methods.base import check_schedule
from piggyback_lab.methods.ranges import check_schema_values
from piggyback_lab.models import BACKBONES, build_backbone, weights_source
from piggyback_lab.models.registry import check_weights_name
from piggyback_lab.runs.config import check_paths, check_writable_folder
from piggyback_lab.utils.errors import UserError, check_choice, check_integer, check_positive

MAX_SEED = 2**32 - 1  # numpy's seeds (seed_everything seeds numpy too)
LOGGED_METRICS = (
    "val/top1",
    "val/top5",
    "train/loss",
)  # what src/piggyback_lab/methods/base.py logs


# Root switches a run reads as booleans: a string ("no", "maybe") is not one of them.
SWITCHES = ("force", "keep_checkpoints", "verify_images", "skip_bad_images", "pretrained_as_is")
# Lightning's run-length keys: a run's length is its method's (method.epochs and schedule).
RUN_LENGTH_KEYS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "max_time")


def check_switches(cfg: DictConfig) -> None:
    """Booleans are booleans; channels_last is auto, true or false."""
    for key in SWITCHES:
        if key in cfg and not isinstance(cfg[key], bool):
            raise UserError(f"{key} must be true or false (got {cfg[key]!r})")
    value = cfg.get("channels_last", "auto")
    if value != "auto" and not isinstance(value, bool):
        raise UserError(f"channels_last must be auto, true or false (got {value!r})")


def check_trainer_keys(cfg: DictConfig) -> None:
    """Trainer keys that a run would not honour are refused, with what does the job."""
    trainer = cfg.trainer
    for key in RUN_LENGTH_KEYS:
        if key in trainer:
            raise UserError(
                f"trainer.{key} is not read: a run trains method.epochs epochs (now "
                f"{cfg.method.get('epochs')}) on its method's schedule; set method.epochs=<n>"
            )
    devices = trainer.get("devices", 1)
    several = devices == -1 or (isinstance(devices, int) and devices > 1)
    several = several or (not isinstance(devices, (int, str)) and len(devices) > 1)
    if several and trainer.get("use_distributed_sampler", True):
        raise UserError(
            f"trainer.devices={devices} needs trainer=ddp, whose validation and test count "
            f"each image once: python -m src.train trainer=ddp trainer.devices={devices}"
        )
    if trainer.get("limit_val_batches") == 0 and cfg.protocol != "final":
        raise UserError(
            f"trainer.limit_val_batches=0 leaves protocol={cfg.protocol} no validation to "
            "pick the best epoch with; use protocol=final (train on all, keep the last epoch)"
        )


def check_values(cfg: DictConfig) -> None:
    """Types and ranges of the keys every run reads."""
    check_switches(cfg)
    check_trainer_keys(cfg)
    check_integer("seed", cfg.seed, 0)
    if cfg.seed > MAX_SEED:
        raise UserError(f"seed must be <= {MAX_SEED} (numpy's range; got {cfg.seed})")
    limit = cfg.trainer.get("limit_train_batches")
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, (int, float))
        or (isinstance(limit, int) and limit < 1)
        or (isinstance(limit, float) and not 0.0 < limit <= 1.0)
    ):
        raise UserError(
            f"trainer.limit_train_batches must be a count >= 1 or a share in (0, 1] "
            f"(got {limit!r}); with none, nothing would be trained"
        )
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor")
    if monitor is not None and monitor not in LOGGED_METRICS:
        raise UserError(
            f"callbacks.model_checkpoint.monitor={monitor!r} names no metric a run logs; "
            f"choose one of: {', '.join(LOGGED_METRICS)}"
        )
    check_integer("num_workers", cfg.num_workers, 0)
    check_choice("protocol", cfg.protocol, PROTOCOLS)
    fraction = cfg.val_fraction
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1, exclusive (got {fraction!r})")
    method = cfg.method
    check_schema_values(method, "method.")  # every lr, epochs, batch, decay by its range
    check_integer("method.epochs", method.epochs, 1)
    check_integer("method.batch_size", method.batch_size, 1)
    for key in ("lr", "retrain_lr"):
        if key in method:
            check_positive(f"method.{key}", method[key])
    if method.get("classifier_lr") is not None:
        check_positive("method.classifier_lr", method.classifier_lr)
    if "lr_decay_every" in method:
        check_schedule(method.lr_decay_every, method.get("lr_milestones"))


def check_writable(cfg: DictConfig) -> None:
    """Every folder the run writes to can be written, found now rather than after training;
    nothing is left behind."""
    check_paths(cfg)
    for key in ("runs_dir", "tasks_dir", "checkpoint_dir"):
        check_writable_folder(cfg, key, " (or paths.results_dir / paths.log_dir)")


def check_weights(cfg: DictConfig) -> None:
    """backbone.weights names a file that exists (or is pretrained here), weights the
    architecture provides, torchvision weights it has or a timm tag it has; nothing is
    downloaded here."""
    bb = cfg.backbone
    weights = bb.weights
    if not weights:
        return
    if weights_source(bb.name, str(weights)) != "file":
        check_weights_name(bb.name, str(weights))
        return
    if not Path(weights).is_file() and not bb.get("pretrain"):
        spec = BACKBONES.get(bb.name)
        hint = spec.weights_help if spec and spec.weights_help else "check the path"
        raise UserError(f"backbone.weights: file {weights} does not exist; {hint}")


def check_backbone(cfg: DictConfig, task_cfgs: Iterable[DictConfig]) -> None:
    """The backbone resolves (its classifier found, or the stated one a Linear layer) and
    takes the input size of every dataset it will see: one forward pass on the meta device
    (no memory, no weights) finds what the model itself would refuse."""
    bb = cfg.backbone
    with torch.device("meta"):  # a batch of 1: no BN
        model = build_backbone(bb.name, None, 1, classifier=bb.get("classifier")).eval()
    for config in task_cfgs:
        size = OmegaConf.select(config, "dataset.transforms.size")
        if size is None:
            continue
        try:
            model(torch.empty(1, 3, size, size, device="meta"))
        except Exception as err:  # what the architecture raises for a size it cannot take
            native = bb.get("input_size")
            fix = f"its weights expect {native}x{native}; " if native else ""
            raise UserError(
                f"{bb.name} refuses {size}x{size} inputs ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'no message'}); {fix}set "
                f"dataset.transforms.size (and resize) to a size it takes, or choose "
                "another backbone"
            ) from None


def check_trainer(cfg: DictConfig) -> None:
    """The trainer config builds (precision, devices, strategy...)."""
    from piggyback_lab.runs.builders import build_trainer

    build_trainer(cfg, 1, logger=False, enable_checkpointing=False)


def check_datasets(configs: Iterable[DictConfig]) -> None:
    """Each dataset is where its config says, with the right classes (no image decoded)."""
    from piggyback_lab.runs.builders import build_datamodule

    for config in configs:
        build_datamodule(config).check()


def preflight(cfg: DictConfig, task_cfgs: Iterable[DictConfig] | None = None) -> None:
    """Every check that needs no model and decodes no image, before any work starts (a
    first-time pretraining included): values, folders, weights, trainer, and the datasets
    of ``task_cfgs`` (a sequence's tasks; None: ``cfg.dataset``)."""
    check_values(cfg)
    check_writable(cfg)
    configs = [cfg] if task_cfgs is None else list(task_cfgs)
    check_backbone(cfg, configs)
    check_weights(cfg)
    check_trainer(cfg)
    check_datasets(configs)
