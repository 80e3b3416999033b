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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from piggyback_lab.methods import method_named
from piggyback_lab.methods.sequence import SequenceAlgorithm
from piggyback_lab.models import classifier_name, normalisation
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


def algorithm(cfg: DictConfig) -> SequenceAlgorithm:
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
    stated, own = cfg.backbone.get("classifier"), classifier_name(cfg.backbone.name)
    if stated and stated != own:
        raise UserError(
            f"a task sequence uses {cfg.backbone.name}'s own classifier path ({own}); drop "
            f"backbone.classifier={stated}"
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


@dataclass
class SequenceRun:
    """One sequence job's settings and, as its phases go, its state and results."""

    cfg: DictConfig
    tasks: list[str]
    scored: list[str]  # every task that gets a record (the scored base first)
    task_cfgs: dict[str, DictConfig]
    identities: dict[str, tuple[str, dict[str, Any]]]
    seq_id: str
    progress_dir: Path
    algo: SequenceAlgorithm
    base_task: str | None
    state: Any = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_info: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    datamodules: dict[str, pl.LightningDataModule] = field(default_factory=dict)

    @property
    def progress_path(self) -> Path:
        return self.progress_dir / "progress.safetensors"

    @property
    def weights(self) -> str | None:
        return str(self.cfg.backbone.weights) if self.cfg.backbone.weights else None

    def save_progress(self) -> None:
        save_progress(self.progress_path, self.state, self.results, self.base_info)


def _run(
    cfg: DictConfig,
    tasks: list[str],
    scored: list[str],
    task_cfgs: dict[str, DictConfig],
    identities: dict[str, tuple[str, dict[str, Any]]],
    seq_id: str,
    progress_dir: Path,
) -> list[dict[str, Any]]:
    """The sequence under its lock, phase by phase: start (or resume), every dataset, the
    base, the tasks in order, then every task again from the written state; returns the
    records, not yet written."""
    seq = SequenceRun(
        cfg, tasks, scored, task_cfgs, identities, seq_id, progress_dir,
        algo=algorithm(cfg), base_task=scored_base_task(cfg),
    )  # fmt: skip
    rng = _start_or_resume(seq)
    for task in scored:  # every dataset is checked before any training
        seq.datamodules[task] = build_datamodule(task_cfgs[task])
        seq.datamodules[task].setup("fit")
    if rng is not None:
        set_rng_state(rng)  # as it was when the last finished task ended
    elif seq.algo.retrains_base(cfg.method):
        _retrain_base(seq)
    _train_tasks(seq)
    return _evaluate_and_record(seq)


def _start_or_resume(seq: SequenceRun) -> dict[str, Any] | None:
    """The base network and its meta, built or read back from the progress file; returns
    the saved random states when resuming."""
    cfg = seq.cfg
    resumed = None if cfg.force else load_progress(cfg, seq.progress_path, seq.seq_id)
    if resumed is None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        seq.state, seq.base_info = seq.algo.build_base(
            cfg.method, cfg.backbone.name, seq.weights, seq.tasks, seq.base_task
        )
        seq.state.meta.update({"seed": cfg.seed, "sequence_id": seq.seq_id})
        rng = None
    else:
        seq.state, seq.results, seq.base_info, rng = resumed
        seq.resumed = True
        say(f"resuming the {cfg.method.name} sequence after {len(seq.state.tasks)} finished "
            f"task(s): {', '.join(seq.state.tasks)} ({seq.progress_path})")  # fmt: skip
    # each task is tested later (src.eval) at the transforms it trained with
    seq.state.meta["task_transforms"] = {
        t: OmegaConf.to_container(c.dataset.transforms, resolve=True)
        for t, c in seq.task_cfgs.items()
    }
    return rng


def _retrain_base(seq: SequenceRun) -> None:
    """Retrain the pruned base on its own data (resumable); a scored base gets results."""
    cfg, algo = seq.cfg, seq.algo
    base_start = time.time()
    base_ckpt_dir = seq.progress_dir / "base"
    data = base_data(cfg, seq.datamodules.get(seq.base_task))
    resume = None if cfg.force else resumable_checkpoint(
        base_ckpt_dir / "last.ckpt", algo.base_run_id(seq.state)
    )  # fmt: skip

    def base_trainer(epochs: int, callbacks: list | tuple = (), **kwargs: Any) -> pl.Trainer:
        return build_trainer(cfg, epochs, logger=False, callbacks=list(callbacks), **kwargs)

    retrained = algo.retrain_base(
        cfg.method, seq.state, data, module_factory(cfg), base_trainer, base_ckpt_dir,
        seq.weights, resume,
    )  # fmt: skip
    seq.base_info["base_retrain"] = seq.state.meta["base_retrain"] = retrained
    if seq.base_task is not None:
        seq.results[seq.base_task] = {
            **algo.scored_base_result(retrained),
            "wall_time_s": round(time.time() - base_start, 2),
        }
    seq.save_progress()
    shutil.rmtree(base_ckpt_dir, ignore_errors=True)  # the progress file holds it now


def _trainer_factory(cfg: DictConfig) -> Any:
    """``make_trainer(epochs, log_name, callbacks)`` for the tasks' phases."""
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

    return make_trainer


def _train_tasks(seq: SequenceRun) -> None:
    """Each task not yet finished, in order; progress is saved after each but the last."""
    cfg, algo, tasks = seq.cfg, seq.algo, seq.tasks
    name = str(cfg.method.name)
    make_trainer = _trainer_factory(cfg)
    base_extras = algo.base_extras(cfg.method, seq.state)
    for position, task in enumerate(tasks):
        if task in seq.state.tasks:  # finished before an interruption
            continue
        task_start = time.time()
        seq.results[task] = algo.train_task(
            cfg.method,
            seq.state,
            task,
            seq.datamodules[task],
            module_factory(seq.task_cfgs[task]),
            lambda epochs, callbacks=(), t=task: make_trainer(epochs, f"{name}/{t}", callbacks),
            base_extras,
        )
        seq.results[task]["wall_time_s"] = round(time.time() - task_start, 2)
        say(
            f"{name} task {position + 1}/{len(tasks)} {task}: top-1 "
            f"{algo.percent(seq.results[task]['top1_after_task'])} right after its training"
        )
        if task != tasks[-1]:
            seq.save_progress()


def _evaluate_and_record(seq: SequenceRun) -> list[dict[str, Any]]:
    """Write the state once, score every task from the file, and make the records."""
    cfg, algo, state = seq.cfg, seq.algo, seq.state
    state_path = Path(cfg.paths.tasks_dir) / f"{seq.seq_id}.safetensors"
    state_bytes = state.save(state_path)
    final = algo.evaluate_from_file(
        state_path, seq.datamodules, module_factory(cfg), _trainer_factory(cfg)
    )
    sequence_s = round(sum(r["wall_time_s"] for r in seq.results.values()), 2)
    records = []
    for position, task in enumerate(seq.scored, start=-1 if seq.base_task else 0):
        rid, config = seq.identities[task]
        facts = algo.task_facts(state, task, position, seq.results[task], final[task],
                                state_bytes, seq.base_info)  # fmt: skip
        wall_time_s = facts.pop("wall_time_s")
        records.append(
            run_record(
                run_id=rid,
                source="train",
                dataset=task,
                backbone=cfg.backbone.name,
                method=str(cfg.method.name),
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
                sequence_resumed=seq.resumed,
            )
        )
    say(f"{cfg.method.name} state ({state_bytes / 1e6:.3f} MB, {state.bits} bits/weight) -> "
        f"{state_path}")  # fmt: skip
    seq.progress_path.unlink(missing_ok=True)
    return records
