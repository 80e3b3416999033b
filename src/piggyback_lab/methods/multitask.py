"""One resident backbone, many task files: switch the active task in place, predict in batches.

This is what a Piggyback user keeps after training: one backbone and a small file per task.
``MultiTaskModel.select(name)`` folds the task's packed mask bits into the shared weights
and swaps in its classifier (and BN state, when it has one); ``select(None)`` gives the
backbone back bit for bit. Two ways to undo a task are offered and were measured
(``python scripts/bench_switch.py --backbone resnet50 --threads 1``, 2-core CPU, 2026-11-25,
median ms per switch):

- ``copy`` (default, the faster): keep a copy of every maskable layer's weights and compute
  ``W = W0 * m`` from it on every switch, with no undo step. Extra memory: 4 bytes per
  weight. minicnn 0.2 ms, resnet50 15 ms (loading a finetuned resnet50: 42 ms from a
  page-cached torch checkpoint, 137 ms from a verified full task file).
- ``restore``: before folding, keep aside only the weights the mask changes (the zeroed or
  sign-flipped ones) and scatter them back when the task is left. Extra memory: 1 byte per
  weight plus 4 per changed weight; minicnn 3.2 ms, resnet50 237 ms (``masked_select``
  and ``masked_scatter_`` dominate). For when memory is tighter than time.

Both are exact: a multiply by the integer mask bits (0/1, or -1/0/1) and a scatter of saved
values are bit-exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from piggyback_lab.methods.registry import HostedTask, check_head_fits, check_state_fits, method_of
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.models import build_backbone, classifier_name
from piggyback_lab.models.surgery import linear_from_state, prunable_weights, replace_module
from piggyback_lab.taskfile import TaskFile, backbone_fingerprint, check_compatible
from piggyback_lab.utils.errors import UserError

STRATEGIES = ("restore", "copy")
TASK_SUFFIX = ".safetensors"


def task_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Task files named by one path, a comma-separated string, a list, or a folder (all files)."""
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    parts = [p for item in items for p in str(item).split(",") if p.strip()]
    paths: list[Path] = []
    for part in parts:
        path = Path(part.strip())
        if path.is_dir():
            found = sorted(path.glob(f"*{TASK_SUFFIX}"))
            if not found:
                raise UserError(f"folder {path} holds no task files (*{TASK_SUFFIX})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"task file or folder {path} does not exist")
    if not paths:
        raise UserError("no task files given; pass a task file, a list of them, or a folder")
    return paths


class MultiTaskModel:
    """A plain backbone that hosts many tasks and has exactly one (or none) active at a time."""

    def __init__(
        self,
        backbone: str,
        weights: str | None,
        tasks: Iterable[str | os.PathLike | TaskFile] = (),
        strategy: str = "copy",
        device: str | torch.device = "cpu",
        model: nn.Module | None = None,
        classifier: str | None = None,
    ) -> None:
        """``model`` replaces building ``backbone`` from ``weights`` (a PackNet network, or
        one's own model: then ``classifier`` names its classifier unless the registry knows
        ``backbone``)."""
        if strategy not in STRATEGIES:
            raise UserError(
                f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}"
            )
        self.backbone = backbone
        if model is not None and classifier:
            self.classifier = classifier  # one's own model: its classifier as stated
        else:
            self.classifier = classifier_name(backbone, classifier)
        self.strategy = strategy
        self.device = torch.device(device)
        if model is None:
            model = build_backbone(backbone, weights, num_classes=1, classifier=self.classifier)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.fingerprint = backbone_fingerprint(self.model, self.classifier)
        self._base_head = self.model.get_submodule(self.classifier)
        self._weights = prunable_weights(self.model, self.classifier)  # what tasks mask, by key
        # copy strategy: the dense weights of every layer a mask may touch, kept aside once
        self._original: dict[str, torch.Tensor] = {}
        # restore strategy: per layer, (positions the active task changed, their old values)
        self._aside: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._state_aside: dict[str, torch.Tensor] = {}
        self.tasks: dict[str, HostedTask] = {}
        self.active: str | None = None
        for task in tasks:
            self.add_task(task)

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        """The backbone's prunable weights, by key: what a task may change."""
        return self._weights

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike | TaskFile,
        strategy: str = "copy",
        device: str | torch.device = "cpu",
    ) -> MultiTaskModel:
        """Host a file that holds its own network and several tasks (a PackNet state)."""
        tf = path if isinstance(path, TaskFile) else read_task(path)
        method = method_of(tf)
        if not method.shared_network:
            raise UserError(
                f"{tf.path} is a {tf.kind!r} task for a backbone; load it with "
                f"MultiTaskModel({tf.meta['backbone']!r}, weights, tasks=[path])"
            )
        model = method.network(tf)
        hosted = cls(tf.meta["backbone"], None, strategy=strategy, device=device, model=model)
        for task in method.hosted(tf, hosted):
            hosted._register(task)
        return hosted

    # --- loading ----------------------------------------------------------------------
    def add_task(self, task: str | os.PathLike | TaskFile, name: str | None = None) -> str:
        """Verify a task file against this backbone and register it; returns its name."""
        tf = task if isinstance(task, TaskFile) else read_task(task)
        method = method_of(tf)
        if method.shared_network:
            raise UserError(
                f"{tf.path} is a {tf.kind!r} file holding its own network; load it with "
                "MultiTaskModel.from_file"
            )
        check_compatible(tf, self.backbone, self.fingerprint)
        (hosted,) = method.hosted(tf, self, name)
        self._register(hosted)
        return hosted.name

    def _register(self, task: HostedTask) -> None:
        if task.name in self.tasks:
            raise UserError(f"two tasks are named {task.name!r}; rename one of the files")
        check_state_fits(task.state, self.model.state_dict(), task.path)
        task.state = {k: v.to(self.device) for k, v in task.state.items()}
        if task.class_names and len(task.class_names) != task.head.out_features:
            raise UserError(
                f"task {task.name} ({task.path}) names {len(task.class_names)} classes but its "
                f"classifier has {task.head.out_features} outputs; the file is inconsistent"
            )
        self.tasks[task.name] = task

    def head(self, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
        """A task's classifier on this host's device, frozen."""
        if "weight" not in state:
            raise UserError(f"task file {path} has no classifier; re-export it")
        check_head_fits(state, self._base_head, path)
        return linear_from_state(state).to(self.device).eval().requires_grad_(False)

    def _keep_original(self, name: str) -> torch.Tensor:
        """The backbone's own values of a weight (copy strategy), kept aside the first time."""
        if name not in self._original:
            self._original[name] = self._weights[name].detach().clone()
        return self._original[name]

    # --- switching --------------------------------------------------------------------
    @torch.no_grad()
    def select(self, name: str | None) -> None:
        """Make ``name`` the active task (None: the plain backbone), in place."""
        if name == self.active:
            return
        if name is not None and name not in self.tasks:
            raise UserError(
                f"unknown task {name!r}; loaded tasks: {', '.join(sorted(self.tasks)) or 'none'}"
            )
        previous = self.tasks[self.active] if self.active else None
        task = self.tasks[name] if name else None
        self._leave(previous, task)
        self.active = None
        if task is not None:
            self._enter(task)
        self.active = name

    def _leave(self, task: HostedTask | None, following: HostedTask | None) -> None:
        """Undo ``task``; with the copy strategy, layers ``following`` refolds are left as is."""
        if task is None:
            return
        if task.detach is not None:
            task.detach(self.model)
        for layer_name, (changed, values) in self._aside.items():
            self._weights[layer_name].masked_scatter_(changed, values)
        self._aside = {}
        refolded = set(following.layers if following else ())
        for layer_name in self._original.keys() & set(task.layers) - refolded:
            self._weights[layer_name].copy_(self._original[layer_name])
        if self._state_aside:
            _assign(self.model, self._state_aside)
            self._state_aside = {}
        replace_module(self.model, self.classifier, self._base_head)

    def _enter(self, task: HostedTask) -> None:
        replace_module(self.model, self.classifier, task.head)
        if task.state:
            current = self.model.state_dict()
            self._state_aside = {k: current[k].clone() for k in task.state}
            _assign(self.model, task.state)
        for layer_name in task.layers:
            weight = self._weights[layer_name]
            if self.strategy == "copy":
                task.fold(layer_name, weight, self._keep_original(layer_name))
            else:
                changed = task.changed(layer_name)
                self._aside[layer_name] = (changed, weight.masked_select(changed))
                task.fold(layer_name, weight, weight)
        if task.attach is not None:
            task.attach(self.model)

    # --- inference --------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, task: str | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Logits (on CPU) of a batch of transformed images under ``task`` (default: active)."""
        if task is not None:
            self.select(task)
        if self.active is None:
            raise UserError("no task selected; pass a task name to predict or call select first")
        self.model.eval()
        outputs = [
            self.model(images[i : i + batch_size].to(self.device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(outputs) if outputs else torch.empty(0, self.num_classes)

    def topk(
        self, images: torch.Tensor, task: str | None = None, k: int = 5, batch_size: int = 64
    ) -> list[list[tuple[str, float]]]:
        """Per image, the ``k`` most probable (class name, probability) pairs."""
        logits = self.predict(images, task, batch_size)
        return top_classes(logits, self.tasks[self.active].class_names, k)

    @property
    def num_classes(self) -> int:
        return self.model.get_submodule(self.classifier).out_features


def top_classes(
    logits: torch.Tensor, names: list[str] | None, k: int
) -> list[list[tuple[str, float]]]:
    """Per row of ``logits``, the ``k`` most probable (class name, probability) pairs (the
    class index as its name when there are no names)."""
    names = names or [str(i) for i in range(logits.shape[1])]
    probs, idx = logits.softmax(dim=1).topk(min(k, logits.shape[1]), dim=1)
    return [
        [(names[j], float(p)) for p, j in zip(row_p, row_i.tolist(), strict=True)]
        for row_p, row_i in zip(probs, idx, strict=True)
    ]


def _assign(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy state entries (parameters or buffers, by full name) into ``model`` in place."""
    current = model.state_dict()
    for key, value in state.items():
        current[key].copy_(value)
