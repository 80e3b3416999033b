"""A PackNet state as stored: the one shared network, every weight's owner (packed at
ceil(log2(T + 1)) bits), and each finished task's classifier (and biases/norms).

Its file holds its own network and every task of the sequence, so a MultiTaskModel is built
on that network (``network``); entering task k zeroes the weights free or owned by a later
task, as ``PackNetState.view`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from piggyback_lab.methods.packnet.state import FREE, KIND, PackNetState
from piggyback_lab.methods.registry import HostedTask, TaskMethod
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError

if TYPE_CHECKING:
    from piggyback_lab.methods.multitask import MultiTaskModel


class PackNetTask(TaskMethod):
    name = "packnet"
    kind = KIND
    shared_network = True
    decathlon_recipe = "no published Decathlon recipe; PackNet's published fine-grained recipe"

    def check(self, tf: TaskFile) -> None:
        for key in ("task_order", "tasks", "layers", "owner_bits", "class_names"):
            if key not in tf.meta:
                raise UserError(f"PackNet state {tf.path} has no {key!r}; it is corrupt")

    def _state(self, tf: TaskFile) -> PackNetState:
        """The state the file holds, built once per read file: ``network`` and ``hosted``
        serve one host from the same network."""
        cached = getattr(tf, "_packnet_state", None)
        if cached is None:
            cached = PackNetState.from_task_file(tf)
            tf._packnet_state = cached
        return cached

    def network(self, tf: TaskFile) -> nn.Module:
        return self._state(tf).model

    def fold(self, model: nn.Module, tf: TaskFile, classifier: str) -> nn.Module:
        raise UserError(
            f"{tf.path} is a PackNet state holding several tasks; load it with "
            "MultiTaskModel.from_file(path) and select a task"
        )

    def hosted(
        self, tf: TaskFile, host: MultiTaskModel, name: str | None = None
    ) -> list[HostedTask]:
        state = self._state(tf)
        owners = {n: o.to(host.device) for n, o in state.owners.items()}
        tasks = []
        for task in state.tasks:
            owner = state.owner(task)

            def changed(key: str, owner: int = owner) -> torch.Tensor:
                own = owners[key]
                return own.eq(FREE) | own.gt(owner)

            def fold(
                key: str,
                weight: torch.Tensor,
                source: torch.Tensor,
                changed: torch.Tensor = changed,
            ) -> None:
                if source is not weight:
                    weight.copy_(source)
                weight.masked_fill_(changed(key), 0.0)  # as the view zeroes them

            meta = {**state.meta, "kind": KIND, "backbone": state.backbone,
                    "dataset": state.meta.get("datasets", {}).get(task, task),
                    "transforms": state.meta.get("task_transforms", {}).get(task)}  # fmt: skip
            tasks.append(
                HostedTask(
                    name=task,
                    path=Path(tf.path),
                    meta=meta,
                    class_names=state.class_names.get(task, []),
                    head=host.head(state.heads[task], Path(tf.path)),
                    state=state.task_extras.get(task, {}),
                    layers=tuple(owners),
                    fold=fold,
                    changed=changed,
                )
            )
        return tasks
