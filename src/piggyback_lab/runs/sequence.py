"""A task sequence in one job (a method that names ``method.tasks``, e.g. PackNet):
``python -m src.train experiment=mini_packnet`` (method=packnet with its tasks).

The sequence mechanics live here: the task order, the datasets and trainers each phase
gets, progress after the base and after every task, resume, and the records. The
algorithm (what a phase does to the shared network) is the method's own: the ``sequence``
module of its registration (src/piggyback_lab/methods/packnet/sequence.py). At the end the state is
written once, read back, and every task is evaluated again from the file, so each record
holds top-1/top-5 right after the task's training and after the sequence.

When the base's own data is a dataset config (the Visual Decathlon's decathlon/imagenet12
for ResNet-26), the retrained base is scored as a task too and gets a record.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from piggyback_lab.methods import method_named
from piggyback_lab.models import normalisation
from piggyback_lab.runs.builders import (
    build_datamodule,
    build_loggers,
    build_method,
    build_trainer,
    ensure_backbone_weights,
)
from piggyback_lab.runs.config import dataset_config_names, with_dataset
from piggyback_lab.runs.identity import existing_record, run_identity
from piggyback_lab.runs.preflight import preflight
from piggyback_lab.runs.records import run_id, run_record, write_record
from piggyback_lab.runs.resume import resumable_checkpoint, run_lock
from piggyback_lab.utils.errors import UserError
from piggyback_lab.utils.output import say
from piggyback_lab.utils.random_state import rng_state, set_rng_state

BASE_DATASETS = ("fashion_mnist",)  # base data that is not a dataset config (no record)


def algorithm(cfg: DictConfig) -> Any:
    """The configured method's sequence algorithm (its registration's ``sequence``)."""
    method = method_named(str(cfg.method.name))
    if method is None or method.sequence is None:
        raise UserError(
            f"method {cfg.method.name!r} does not train a task sequence; drop method.tasks "
            "and name one dataset=..."
        )
    return method.sequence


def module_factory(cfg: DictConfig) -> Any:
    """``make_module(num_classes, model, **overrides)``: the method's module from ``cfg``."""
    keys = algorithm(cfg).SEQUENCE_KEYS

    def make_module(num_classes: int, model: torch.nn.Module, **overrides: Any) -> Any:
        return build_method(cfg, num_classes, model, keys, **overrides)

    return make_module


def scored_base_task(cfg: DictConfig) -> str | None:
    """The base's own dataset when the sequence scores it as a task (it gets a record)."""
    return algorithm(cfg).base_task(cfg.method, BASE_DATASETS)


def validate(cfg: DictConfig) -> list[str]:
    """Check the sequence config before anything is built or written; returns the tasks."""
    tasks = cfg.method.get("tasks")
    known = dataset_config_names()
    if not isinstance(tasks, ListConfig) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise UserError(
            f"method.tasks must be a non-empty list of dataset names, e.g. "
            f"method.tasks=[{','.join(known[:3])}] (got {tasks})"
        )
    tasks = list(tasks)
    for task in tasks:
        if task not in known:
            raise UserError(
                f"method.tasks: unknown dataset {task!r}; choose from: {', '.join(known)}"
            )
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:
        raise UserError(
            f"method.tasks lists {', '.join(repeated)} more than once; each task owns its own "
            "weights, so every dataset may appear only once in a sequence"
        )
    if cfg.trainer.get("strategy", "auto") != "auto" or cfg.trainer.devices not in (1, "1"):
        raise UserError(
            "a task sequence runs in one process on one device (its steps between tasks and "
            "the shared state are not distributed); use the default trainer (trainer.devices=1)"
        )
    algorithm(cfg).check_settings(cfg.method, tasks, [*BASE_DATASETS, *known])
    return tasks


def sequence_id(first_task_config: dict[str, Any], tasks: list[str]) -> str:
    """Names the sequence's state file and its progress folder."""
    return run_id({**first_task_config, "dataset": {"name": "+".join(tasks)}})


def save_progress(
    path: Path, state: Any, results: dict[str, Any], base_info: dict[str, Any]
) -> None:
    """The sequence so far (network, finished tasks, their results, random states), written
    atomically after the base and after each task, so a killed job resumes there."""
    state.meta["progress"] = {"results": results, "base_info": base_info, "rng": rng_state()}
    try:
        state.save(path)
    finally:
        del state.meta["progress"]


def load_progress(
    cfg: DictConfig, path: Path, seq_id: str
) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """(state, results, base info, random states) saved by ``save_progress``, or None."""
    if not path.is_file():
        return None
    fix = f"delete {path.parent} to start the sequence over, or pass force=true"
    try:
        state = algorithm(cfg).load_state(path)
    except UserError as err:
        raise UserError(f"cannot resume from {path}: {err}; {fix}") from None
    progress = state.meta.pop("progress", None)
    if progress is None or state.meta.get("sequence_id") != seq_id:
        raise UserError(f"{path} is not this sequence's progress ({seq_id}); {fix}")
    return state, progress["results"], progress["base_info"], progress["rng"]


def base_data(cfg: DictConfig, datamodule: pl.LightningDataModule | None) -> Any:
    """The base's retraining data: its dataset config's datamodule, else the mini base's
    Fashion-MNIST tensors."""
    phase = algorithm(cfg).PhaseData
    if datamodule is not None:
        return phase.of(datamodule)
    from piggyback_lab.data.mini import fashion_tensors

    norm = normalisation(cfg.backbone.name, cfg.backbone.weights)
    train = fashion_tensors(cfg.paths.data_dir, True, norm)
    test = fashion_tensors(cfg.paths.data_dir, False, norm)
    return phase(
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        fit={
            "train_dataloaders": DataLoader(train, batch_size=cfg.method.batch_size, shuffle=True)
        },
        test={"dataloaders": DataLoader(test, 512)},
    )


def run_sequence(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run the whole sequence; returns one record per task ([] when all exist)."""
    tasks = validate(cfg)
    base_task = scored_base_task(cfg)
    scored = [base_task, *tasks] if base_task else tasks  # every task that gets a record
    task_cfgs = {t: with_dataset(cfg, t) for t in scored}
    preflight(cfg, task_cfgs.values())
    # before seeding: a first-time pretraining draws random numbers
    uses_weights = algorithm(cfg).uses_backbone_weights(cfg.method)
    pretrain_s = ensure_backbone_weights(cfg) if uses_weights else 0.0
    identities = {t: run_identity(c) for t, c in task_cfgs.items()}
    rids = {t: rid for t, (rid, _) in identities.items()}
    runs_dir = Path(cfg.paths.runs_dir)
    if not cfg.force and all(
        existing_record(runs_dir / f"{r}.json") is not None for r in rids.values()
    ):
        say(f"skip: records for all {len(scored)} tasks exist in {runs_dir} (force=true re-runs)")
        return []
    seq_id = sequence_id(identities[tasks[0]][1], tasks)
    progress_dir = Path(cfg.paths.checkpoint_dir) / seq_id
    with run_lock(runs_dir / seq_id):  # beside the records: one per results folder
        records = _run(cfg, tasks, scored, task_cfgs, identities, seq_id, progress_dir)
    percent = algorithm(cfg).percent
    for record in records:
        record["pretrain_time_s"] = round(pretrain_s, 2)
        write_record(runs_dir / f"{record['run_id']}.json", record)
        say(
            f"{record['method']} {record['dataset']}: top-1 "
            f"{percent(record['top1_after_task'])} after its training, "
            f"{percent(record['top1'])} after the sequence"
        )
    return records


def _run(
    cfg: DictConfig,
    tasks: list[str],
    scored: list[str],
    task_cfgs: dict[str, DictConfig],
    identities: dict[str, tuple[str, dict[str, Any]]],
    seq_id: str,
    progress_dir: Path,
) -> list[dict[str, Any]]:
    """The sequence itself, under its lock; returns the records, not yet written."""
    algo = algorithm(cfg)
    name = str(cfg.method.name)
    base_task = scored_base_task(cfg)
    progress_path = progress_dir / "progress.safetensors"
    resumed = None if cfg.force else load_progress(cfg, progress_path, seq_id)
    weights = str(cfg.backbone.weights) if cfg.backbone.weights else None
    if resumed is None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        state, base_info = algo.build_base(cfg.method, cfg.backbone.name, weights, tasks, base_task)
        state.meta.update({"seed": cfg.seed, "sequence_id": seq_id})
        results: dict[str, dict[str, Any]] = {}
    else:
        state, results, base_info, rng = resumed
        say(f"resuming the {name} sequence after {len(state.tasks)} finished task(s): "
            f"{', '.join(state.tasks)} ({progress_path})")  # fmt: skip
    # each task is tested later (src.eval) at the transforms it trained with
    state.meta["task_transforms"] = {
        t: OmegaConf.to_container(c.dataset.transforms, resolve=True) for t, c in task_cfgs.items()
    }
    datamodules: dict[str, pl.LightningDataModule] = {}
    for task in scored:  # every dataset is checked before any training
        datamodules[task] = build_datamodule(task_cfgs[task])
        datamodules[task].setup("fit")
    if resumed is not None:
        set_rng_state(rng)  # as it was when the last finished task ended
    elif algo.retrains_base(cfg.method):
        base_start = time.time()
        base_ckpt_dir = progress_dir / "base"
        data = base_data(cfg, datamodules.get(base_task))
        resume = None if cfg.force else resumable_checkpoint(
            base_ckpt_dir / "last.ckpt", algo.base_run_id(state)
        )  # fmt: skip

        def base_trainer(epochs: int, callbacks: list | tuple = (), **kwargs: Any) -> pl.Trainer:
            return build_trainer(cfg, epochs, logger=False, callbacks=list(callbacks), **kwargs)

        retrained = algo.retrain_base(
            cfg.method, state, data, module_factory(cfg), base_trainer, base_ckpt_dir,
            weights, resume,
        )  # fmt: skip
        base_info["base_retrain"] = state.meta["base_retrain"] = retrained
        if base_task is not None:
            results[base_task] = {
                "top1_after_task": retrained["top1"],
                "top5_after_task": retrained["top5"],
                **{k: retrained[k] for k in ("val_top1", "eval_split", "trainable_params")},
                "epochs": retrained["epochs"],
                "pruned": True,  # the base is pruned before its retraining
                "wall_time_s": round(time.time() - base_start, 2),
            }
        save_progress(progress_path, state, results, base_info)
        shutil.rmtree(base_ckpt_dir, ignore_errors=True)  # the progress file holds it now
    no_val = {"limit_val_batches": 0} if cfg.protocol == "final" else {}  # nothing held out

    def make_trainer(
        epochs: int, log_name: str | None = None, callbacks: list | tuple = ()
    ) -> pl.Trainer:
        return build_trainer(
            cfg,
            epochs,
            enable_checkpointing=False,
            logger=build_loggers(cfg, log_name) if log_name else False,
            callbacks=list(callbacks),
            **no_val,
        )

    base_extras = algo.base_extras(cfg.method, state)
    for position, task in enumerate(tasks):
        if task in state.tasks:  # finished before an interruption
            continue
        task_start = time.time()
        results[task] = algo.train_task(
            cfg.method,
            state,
            task,
            datamodules[task],
            module_factory(task_cfgs[task]),
            lambda epochs, callbacks=(), t=task: make_trainer(epochs, f"{name}/{t}", callbacks),
            base_extras,
        )
        results[task]["wall_time_s"] = round(time.time() - task_start, 2)
        say(
            f"{name} task {position + 1}/{len(tasks)} {task}: top-1 "
            f"{algo.percent(results[task]['top1_after_task'])} right after its training"
        )
        if task != tasks[-1]:
            save_progress(progress_path, state, results, base_info)

    state_path = Path(cfg.paths.tasks_dir) / f"{seq_id}.safetensors"
    state_bytes = state.save(state_path)
    final = algo.evaluate_from_file(state_path, datamodules, module_factory(cfg), make_trainer)
    sequence_s = round(sum(r["wall_time_s"] for r in results.values()), 2)
    records = []
    for position, task in enumerate(scored, start=-1 if base_task else 0):
        rid, config = identities[task]
        facts = algo.task_facts(state, task, position, results[task], final[task], state_bytes,
                                base_info)  # fmt: skip
        wall_time_s = facts.pop("wall_time_s")
        records.append(
            run_record(
                run_id=rid,
                source="train",
                dataset=task,
                backbone=cfg.backbone.name,
                method=name,
                seed=cfg.seed,
                protocol=cfg.protocol,
                top1=final[task][0],
                top5=final[task][1],
                weights_fingerprint=config["weights_fingerprint"],
                backbone_fingerprint=facts.pop("backbone_fingerprint"),
                task_file=str(state_path),
                task_state_bytes=facts.pop("task_state_bytes"),
                wall_time_s=wall_time_s,
                **facts,
                config=config,
                sequence_wall_time_s=sequence_s,  # training time, across resumes
                sequence_resumed=resumed is not None,
            )
        )
    say(f"{name} state ({state_bytes / 1e6:.3f} MB, {state.bits} bits/weight) -> {state_path}")
    progress_path.unlink(missing_ok=True)
    return records
