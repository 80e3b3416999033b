"""What a method that learns a whole task sequence in one job gives the run layer.

The run layer (piggyback_lab/runs/sequence.py) owns the mechanics: the task order, data,
trainers, progress, resume and records. The algorithm (what each phase does to the shared
network) is the method's: a module registered as its ``TaskMethod.sequence`` (PackNet's:
piggyback_lab/methods/packnet/sequence.py) that provides these names. A module matches a
Protocol by its attributes, so the registration is checked by a type checker and by
``isinstance(module, SequenceAlgorithm)`` in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

ModuleFactory = Callable[..., pl.LightningModule]  # (num_classes, model, **overrides)
TrainerFactory = Callable[..., pl.Trainer]  # (epochs, callbacks=(), **kwargs)
Score = tuple[float | None, float | None]  # test top-1, top-5 (None: no labelled test split)


@runtime_checkable
class SequenceAlgorithm(Protocol):
    """A sequence method's algorithm; ``settings`` is always the ``method`` config node."""

    SEQUENCE_KEYS: tuple[str, ...]  # config keys of the sequence, not of one task's module
    PhaseData: type  # a phase's data: ``PhaseData.of(datamodule)`` or built from tensors

    def check_settings(
        self, settings: DictConfig, tasks: list[str], base_datasets: list[str]
    ) -> None:
        """Refuse a bad sequence config before anything is built."""

    def base_task(self, settings: DictConfig, not_configs: tuple[str, ...]) -> str | None:
        """The base's own dataset when it is scored as a task (it gets a record)."""

    def uses_backbone_weights(self, settings: DictConfig) -> bool: ...

    def retrains_base(self, settings: DictConfig) -> bool: ...

    def build_base(
        self,
        settings: DictConfig,
        backbone: str,
        weights: str | None,
        tasks: list[str],
        base_task: str | None,
    ) -> tuple[Any, dict[str, Any]]:
        """(the sequence's state over its base network, facts about the base)."""

    def retrain_base(
        self,
        settings: DictConfig,
        state: Any,
        data: Any,
        make_module: ModuleFactory,
        make_trainer: TrainerFactory,
        ckpt_dir: Path,
        weights: str | None,
        resume: str | None,
    ) -> dict[str, Any]: ...

    def scored_base_result(self, retrained: dict[str, Any]) -> dict[str, Any]:
        """A scored base task's result from its retraining's, as ``train_task`` gives one."""

    def base_run_id(self, state: Any) -> str: ...

    def base_extras(self, settings: DictConfig, state: Any) -> dict[str, torch.Tensor] | None: ...

    def train_task(
        self,
        settings: DictConfig,
        state: Any,
        task: str,
        datamodule: Any,
        make_module: ModuleFactory,
        make_trainer: TrainerFactory,
        base_extras: dict[str, torch.Tensor] | None,
    ) -> dict[str, Any]:
        """Learn one task on the shared network; its scores right after."""

    def evaluate_from_file(
        self,
        path: Path,
        datamodules: dict[str, Any],
        make_module: ModuleFactory,
        make_trainer: TrainerFactory,
    ) -> dict[str, Score]:
        """Every task again, from the state as written."""

    def task_facts(
        self,
        state: Any,
        task: str,
        position: int,
        result: dict[str, Any],
        final: Score,
        state_bytes: int,
        base_info: dict[str, Any],
    ) -> dict[str, Any]:
        """A task's record beyond the run's common keys (it includes ``wall_time_s``,
        ``backbone_fingerprint`` and ``task_state_bytes``)."""

    def load_state(self, path: Path) -> Any: ...

    def percent(self, value: float | None) -> str: ...
