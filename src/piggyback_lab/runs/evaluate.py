"""Evaluate stored task files on their test sets; no training checkpoint is needed, only
the backbone weights and the task files.

Each task's dataset and backbone come from its metadata and are composed from
conf/dataset/ and conf/backbone/ with the user's overrides, so paths resolve as in training.
One record per task (``"source": "eval"``) is written to ``<out>/<task file stem>.json``;
when the training record of the task is found under ``paths.runs_dir`` its top-1 is copied
in as ``train_top1`` for comparison.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from piggyback_lab.methods import method_of
from piggyback_lab.methods.base import accuracy_metrics, top_k_score
from piggyback_lab.methods.multitask import MultiTaskModel, task_paths
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.models import classifier_name
from piggyback_lab.runs.builders import build_datamodule
from piggyback_lab.runs.config import CONF_DIR, compose, dataset_config_for
from piggyback_lab.runs.console import scores_text
from piggyback_lab.runs.identity import weights_fingerprint
from piggyback_lab.runs.records import read_record, read_records, run_record, write_record
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError, check_integer


def compose_config(
    dataset: str | None,
    backbone: str | None,
    overrides: Sequence[str],
    transforms: Mapping[str, Any] | None = None,
) -> DictConfig:
    """conf/config.yaml composed for ``dataset`` and ``backbone`` (None: the default) plus
    the user's overrides. ``transforms``: the ones a task trained with (its metadata), so it
    is tested at its own size, unless the overrides set ``dataset.transforms``."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "backbone" and backbone and value != backbone:
            raise UserError(
                f"the task was trained on backbone {backbone}; drop {override} (a task file "
                "works only with the backbone it was trained on; backbone.weights=<file> "
                "points at its weights)"
            )
    if dataset:
        dataset = dataset_config_for(dataset) or dataset
    chosen = [(g, n) for g, n in (("dataset", dataset), ("backbone", backbone)) if n]
    for group, name in chosen:
        if not (CONF_DIR / group / f"{name}.yaml").is_file():
            raise UserError(
                f"no {group} config conf/{group}/{name}.yaml for {group} {name!r} named by the "
                "task file; add that config"
            )
    cfg = compose([*(f"{g}={n}" for g, n in chosen), *overrides])
    if transforms and not any(o.lstrip("+~").startswith("dataset.transforms") for o in overrides):
        OmegaConf.update(cfg, "dataset.transforms", dict(transforms), merge=True)
    classifier_name(cfg.backbone.name, cfg.backbone.get("classifier"))  # resolves, checked
    return cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device=cuda asked for, but no CUDA device is available; use device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def task_method(tf: TaskFile) -> str:
    """The method a task file was trained by: as its metadata says, else its kind's."""
    return tf.meta.get("method") or method_of(tf).name


class Evaluator:
    """Evaluates task files, one resident backbone per backbone name (a PackNet state is its
    own resident network)."""

    def __init__(self, overrides: Sequence[str], device: torch.device, strategy: str) -> None:
        self.overrides = list(overrides)
        self.device = device
        self.strategy = strategy
        self.models: dict[str, MultiTaskModel] = {}
        self.fingerprints: dict[str, str | None] = {}  # per weights reference, read once

    def weights_fingerprint(self, backbone: str, weights: str) -> str | None:
        """The run identity's fingerprint of ``weights``: a file is read and hashed once,
        not once per task evaluated on it."""
        if weights not in self.fingerprints:
            self.fingerprints[weights] = weights_fingerprint(backbone, weights)
        return self.fingerprints[weights]

    def host_for(self, tf: TaskFile, cfg: DictConfig) -> tuple[MultiTaskModel, str]:
        backbone = tf.meta["backbone"]
        if backbone not in self.models:
            weights = cfg.backbone.weights
            self.models[backbone] = MultiTaskModel(
                backbone, str(weights) if weights else None, strategy=self.strategy,
                device=self.device, classifier=tf.meta.get("classifier"),
            )  # fmt: skip
        host = self.models[backbone]
        name = str(tf.path.resolve())
        if name not in host.tasks:
            host.add_task(tf, name=name)
        return host, name

    def evaluate(self, tf: TaskFile, batch_size: int) -> list[tuple[str, dict[str, Any]]]:
        """(record file stem, record) per task in the file: one, or each task of a file that
        holds its own network (a PackNet state)."""
        path = tf.path
        if method_of(tf).shared_network:
            host = MultiTaskModel.from_file(tf, self.strategy, self.device)
            return [
                (f"{path.stem}__{task}", self._evaluate(host, task, tf, batch_size))
                for task in host.tasks
            ]
        if "dataset" not in tf.meta:
            raise UserError(f"task file {path} does not name its dataset; re-export it")
        return [(path.stem, self._evaluate(None, None, tf, batch_size))]

    @torch.no_grad()
    def _evaluate(
        self, host: MultiTaskModel | None, name: str | None, tf: TaskFile, batch_size: int
    ) -> dict[str, Any]:
        """Test-set top-1/top-5 of one task, as a record (not yet written)."""
        start = time.time()
        task = host.tasks[name] if host else None
        dataset = task.meta["dataset"] if task else tf.meta["dataset"]
        class_names = task.class_names if task else tf.class_names
        trained = (task.meta if task else tf.meta).get("transforms")
        cfg = compose_config(dataset, tf.meta["backbone"], self.overrides, trained)
        num_classes = len(class_names) or int(tf.meta["num_classes"])
        OmegaConf.update(cfg, "dataset.num_classes", num_classes)
        OmegaConf.update(cfg, "method.batch_size", batch_size)
        datamodule = build_datamodule(cfg)
        datamodule.setup("test")
        if class_names and datamodule.class_names != class_names:
            raise UserError(
                f"the test set at {datamodule.root} has classes {datamodule.class_names[:5]}..., "
                f"task file {tf.path} was trained on {class_names[:5]}...; point dataset.root "
                "at the data it was trained on"
            )
        if host is None:
            host, name = self.host_for(tf, cfg)
        top1, top5, n = _score(host, name, datamodule, num_classes, batch_size)
        train = _training_record(Path(cfg.paths.runs_dir), tf, dataset)
        task_run = train.get("run_id") or tf.meta.get("run_id", tf.path.stem)
        shared = method_of(tf).shared_network
        weights = None if shared else cfg.backbone.weights  # the file holds its own network
        return run_record(
            run_id=f"{task_run}__eval",
            source="eval",
            dataset=dataset,
            backbone=tf.meta["backbone"],
            method=task_method(tf),
            seed=train.get("seed", tf.meta.get("seed")),
            protocol=train.get("protocol"),
            top1=top1,
            top5=top5,
            weights_fingerprint=(
                self.weights_fingerprint(tf.meta["backbone"], str(weights)) if weights else None
            ),
            backbone_fingerprint=host.fingerprint,
            task_file=str(tf.path),
            task_state_bytes=tf.path.stat().st_size,
            wall_time_s=time.time() - start,
            task_run_id=task_run,
            train_top1=train.get("top1"),
            n_test=n,
            **method_of(tf).state_facts(tf),
            dataset_root=str(cfg.dataset.root),
            test_transforms=OmegaConf.to_container(cfg.dataset.transforms, resolve=True),
            backbone_weights=None if weights is None else str(weights),
        )


@torch.no_grad()
def _score(
    host: MultiTaskModel, name: str, datamodule: Any, num_classes: int, batch_size: int
) -> tuple[float, float, int]:
    """(top-1 %, top-5 % (None for 5 classes or fewer), images) of the hosted task
    ``name`` on the test split."""
    metrics = accuracy_metrics(num_classes)
    n = 0
    for x, y in datamodule.test_dataloader():
        metrics.update(host.predict(x, name, batch_size), y)
        n += len(y)
    if n == 0:
        raise UserError(f"the test set at {datamodule.root}/test holds no images")
    scores = metrics.compute()
    return 100.0 * float(scores["top1"]), top_k_score(scores, 5, num_classes, ""), n


def _training_record(runs_dir: Path, tf: TaskFile, dataset: str) -> dict[str, Any]:
    """The record of the run that wrote ``tf`` (for a file of several tasks: the record of
    its ``dataset`` task)."""
    if not method_of(tf).shared_network:
        path = runs_dir / f"{tf.meta.get('run_id', tf.path.stem)}.json"
        try:
            return read_record(path) if path.is_file() else {}
        except UserError as err:
            print(f"warning: not comparing with the training record: {err}")
            return {}
    for record in read_records(runs_dir) if runs_dir.is_dir() else []:
        same_file = Path(record.get("task_file", "")).name == tf.path.name
        if same_file and record.get("dataset") == dataset and record.get("source") != "eval":
            return record
    return {}


def evaluate_tasks(cfg: DictConfig, overrides: Sequence[str]) -> list[dict[str, Any]]:
    """Evaluate every task ``cfg.tasks`` names (conf/eval.yaml) and write one record each;
    ``overrides`` (of the training config) apply to each task's config. Returns the records."""
    if not cfg.tasks:
        raise UserError("name the task files: tasks=<file>[,<file>...] or tasks=<folder>")
    batch_size = check_integer("batch_size", cfg.batch_size)
    evaluator = Evaluator(overrides, pick_device(str(cfg.device)), str(cfg.strategy))
    out = Path(cfg.out or Path(cfg.paths.results_dir) / "evals")
    named = OmegaConf.to_container(cfg.tasks) if isinstance(cfg.tasks, ListConfig) else cfg.tasks
    files = [read_task(p) for p in task_paths(named)]  # every file, before any work
    records = []
    for tf in files:
        path = tf.path
        for stem, record in evaluator.evaluate(tf, batch_size):
            write_record(out / f"{stem}.json", record, device=evaluator.device)
            train = record["train_top1"]
            delta = f" (training record: {train:.2f}%)" if train is not None else ""
            print(
                f"{record['method']} on {record['dataset']} ({record['backbone']}): "
                f"{scores_text(record)}{delta}  [{path}]"
            )
            records.append(record)
    return records


def own_keys(config_name: str) -> set[str]:
    """The keys conf/<config_name>.yaml adds to the training config (eval's tasks, out...)."""
    return set(OmegaConf.load(CONF_DIR / f"{config_name}.yaml")) - {"defaults"}


def task_list_as_written(argv: Sequence[str]) -> list[str]:
    """``tasks=a,b`` as the README writes it: one value, not Hydra's ambiguous sweep (which
    it refuses outside -m); a quoted value or a [list] is left as it is."""
    return [
        f"tasks='{arg[len('tasks=') :]}'"
        if arg.startswith("tasks=") and "," in arg and arg[len("tasks=") :][:1] not in "'\"["
        else arg
        for arg in argv
    ]


def training_overrides(overrides: Sequence[str], config_name: str) -> list[str]:
    """The command line's overrides of the training config, without the app's own keys."""
    own = own_keys(config_name)
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in own]


def evaluate(overrides: Sequence[str]) -> list[dict[str, Any]]:
    """``python -m src.eval`` in-process: conf/eval.yaml composed with ``overrides``."""
    overrides = task_list_as_written(overrides)
    cfg = compose(overrides, "eval")
    return evaluate_tasks(cfg, training_overrides(overrides, "eval"))
