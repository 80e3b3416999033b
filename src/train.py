"""Train one task: ``python -m src.train dataset=cub backbone=resnet50 method=piggyback``.

With no arguments it runs the embedded mini benchmark (pretraining its base once).
Writes a task file under results/tasks/ and a run record under results/runs/.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from src.backbones import build_backbone, classifier_name
from src.data.datamodule import ImageFolderDataModule, eval_split
from src.errors import UserError, exit_on_user_error
from src.masking import mask_densities, masked_layers, state_digest
from src.records import code_version, run_id, write_record
from src.reporting.wandb_summary import log_run_summary
from src.utils.distributed import all_ranks_agree

log = logging.getLogger(__name__)
RECIPE_KEYS = ("name", "epochs", "batch_size")  # method keys the trainer/data use, not the module


def build_datamodule(cfg: DictConfig) -> ImageFolderDataModule:
    ds = cfg.dataset
    if ds.get("decathlon"):
        from src.data.decathlon import decathlon_datamodule

        return decathlon_datamodule(cfg)
    if ds.get("mini"):
        from src.data.mini import prepare_mini_task

        prepare_mini_task(ds.name, cfg.paths.data_dir)
    return ImageFolderDataModule(
        root=ds.root,
        name=ds.name,
        num_classes=ds.num_classes,
        transforms=OmegaConf.to_container(ds.transforms, resolve=True),
        batch_size=cfg.method.batch_size,
        num_workers=cfg.num_workers,
        protocol=cfg.protocol,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        prepare_hint=ds.get("prepare", ""),
        verify_images=cfg.verify_images,
        skip_bad_images=cfg.skip_bad_images,
    )


def ensure_backbone_weights(cfg: DictConfig) -> None:
    """Pretrain the mini benchmark's base when its cached weights file is missing."""
    bb = cfg.backbone
    if bb.get("pretrain") and bb.weights and not Path(bb.weights).exists():
        from src.pretrain import pretrain

        log.info("base weights %s missing: pretraining them once", bb.weights)
        pretrain(bb.name, cfg.paths.data_dir, Path(bb.weights))


def build_method(cfg: DictConfig, num_classes: int) -> pl.LightningModule:
    model = build_backbone(cfg.backbone.name, cfg.backbone.weights, num_classes)
    kwargs = {k: v for k, v in cfg.method.items() if k not in RECIPE_KEYS}
    return hydra.utils.instantiate(
        kwargs,
        model=model,
        classifier=classifier_name(cfg.backbone.name),
        backbone=cfg.backbone.name,
        num_classes=num_classes,
        _convert_="all",
    )


def trainer_kwargs(cfg: DictConfig) -> tuple[dict[str, Any], bool]:
    """Lightning Trainer arguments with 'auto' precision / channels_last resolved."""
    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    cuda = torch.cuda.is_available() and kw.get("accelerator") in ("auto", "gpu", "cuda")
    if kw.get("precision") == "auto":
        kw["precision"] = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    channels_last = kw.pop("channels_last", "auto")
    channels_last = cuda if channels_last == "auto" else bool(channels_last)
    return kw, channels_last


def make_loggers(cfg: DictConfig, out_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger

    loggers: list = [CSVLogger(save_dir=str(out_dir), name="csv")]
    if cfg.logger.get("wandb"):
        from src.utils.wandb_logger import make_wandb_logger

        loggers.append(make_wandb_logger(cfg, out_dir))
    return loggers


def train(cfg: DictConfig) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Run one training job; returns its record (None when skipped, or on ranks other than 0).

    PackNet runs a whole task sequence and returns one record per task.
    """
    if cfg.method.name == "packnet":  # a whole task sequence in one job
        from src.packnet_sequence import run_packnet_sequence

        return run_packnet_sequence(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    rid = run_id(config)
    record_path = Path(cfg.paths.runs_dir) / f"{rid}.json"
    if record_path.exists() and not cfg.force:
        try:
            top1 = float(json.loads(record_path.read_text())["top1"])
        except (OSError, ValueError, KeyError, TypeError):
            top1 = math.nan
        print(f"skip: record {record_path} exists (recorded top-1 {top1:.2f}%); force=true re-runs")
        return None
    start = time.time()
    ensure_backbone_weights(cfg)  # before seeding: a first-time pretraining draws random numbers
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    method = build_method(cfg, datamodule.num_classes)
    tkw, method.channels_last = trainer_kwargs(cfg)

    out_dir = Path(cfg.paths.output_dir)
    ckpt_dir = Path(cfg.paths.checkpoint_dir) / rid
    selects = datamodule.val_set is not None  # protocol=final: keep the last epoch
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/top1" if selects else None,
        mode="max",
        save_last=True,
    )
    if not selects:
        tkw["limit_val_batches"] = 0
    trainer = pl.Trainer(
        **tkw,
        max_epochs=cfg.method.epochs,
        callbacks=[checkpoint],
        logger=make_loggers(cfg, out_dir),
        default_root_dir=str(out_dir),
    )
    method.run_id = rid
    resume = resumable_checkpoint(ckpt_dir / "last.ckpt", rid) if not cfg.force else None
    if resume:
        print(f"resuming from {resume}")
    trainer.fit(method, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    score = checkpoint.best_model_score
    best_val = 100.0 * float(score) if selects and score is not None else None
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    method.load_state_dict(best["state_dict"])
    tested = eval_split(datamodule) != "none"  # protocol=final without a labelled test split
    test = trainer.test(method, datamodule=datamodule, verbose=False)[0] if tested else {}
    ranks_agree = all_ranks_agree(state_digest(method.task_tensors()))
    if not trainer.is_global_zero:  # only rank 0 writes task files and records
        return None

    task_path = Path(cfg.paths.tasks_dir) / f"{rid}.safetensors"
    task_meta = {
        "dataset": cfg.dataset.name,
        "method": cfg.method.name,
        "class_names": datamodule.class_names,
        "num_classes": datamodule.num_classes,
        "run_id": rid,
    }
    task_bytes = method.export_task(task_path, task_meta)
    record = {
        "run_id": rid,
        "dataset": cfg.dataset.name,
        "backbone": cfg.backbone.name,
        "method": cfg.method.name,
        "seed": cfg.seed,
        "protocol": cfg.protocol,
        "top1": 100.0 * float(test["test/top1"]) if tested else None,
        "top5": 100.0 * float(test["test/top5"]) if tested else None,
        "val_top1": best_val,
        "eval_split": eval_split(datamodule),
        "world_size": trainer.world_size,
        "ranks_agree": ranks_agree,
        "epochs": trainer.current_epoch,
        "skipped_images": getattr(datamodule, "skipped_images", []),
        "best_checkpoint": Path(checkpoint.best_model_path).name,
        **state_report(method, task_bytes),
        "task_file": str(task_path),
        "config": config,
        "code_version": code_version(),
        "wall_time_s": round(time.time() - start, 2),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_record(record_path, record)
    log_run_summary(trainer.loggers, record, out_dir / "mask_density.png")
    score = (
        f"test top-1 {record['top1']:.2f}%  top-5 {record['top5']:.2f}%"
        if tested
        else "not tested (no labelled test split)"
    )
    print(
        f"{cfg.method.name} on {cfg.dataset.name} ({cfg.backbone.name}, seed {cfg.seed}): "
        f"{score}  task file {task_bytes / 1e6:.3f} MB  record {record_path}"
    )
    return record


def resumable_checkpoint(path: Path, rid: str) -> str | None:
    """The checkpoint to resume from, after checking it is safe, whole and of this run."""
    if not path.exists():
        return None
    fix = f"delete {path.parent} to start over, or pass force=true"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"checkpoint {path} cannot be loaded safely ({type(err).__name__}): it is truncated, "
            f"corrupt or holds code; {fix}"
        ) from None
    if state.get("run_id") != rid:
        raise UserError(
            f"checkpoint {path} belongs to another config ({state.get('run_id')}); {fix}"
        )
    return str(path)


def state_report(method: pl.LightningModule, task_bytes: int) -> dict[str, Any]:
    """Storage and mask statistics for the record."""
    layers = masked_layers(method.model)
    n_masked = sum(m.weight.numel() for m in layers.values())
    density = mask_densities(method.model) if layers else {}
    kept = sum(density[n] * layers[n].weight.numel() for n in layers)
    return {
        "task_state_bytes": task_bytes,
        "trainable_params": method.trainable_parameter_count(),
        "masked_weights": n_masked,
        "mask_density": density,
        "mask_density_overall": kept / n_masked if n_masked else None,
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
