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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from src.masking.model_surgery import linear_from_state, prunable_weights, replace_module
from src.masking.pruning import FREE
from src.masking.taskfile import (
    TaskFile,
    backbone_fingerprint,
    check_compatible,
    layer_mask,
    read_task_file,
    unprefixed,
)
from src.models import build_backbone, classifier_name
from src.utils.errors import UserError

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


@dataclass
class LoadedTask:
    """A verified task, with what ``select`` needs built once on the model's device.

    ``state`` holds model state entries the task replaces (BN, biases, a finetuned trunk);
    a Piggyback task folds ``layers`` from its packed bits, a PackNet task zeroes the
    weights it does not own (``owner``) in the shared owner map.
    """

    name: str
    path: Path
    meta: dict
    class_names: list[str]
    head: nn.Module
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    bits: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, list[int]] = field(default_factory=dict)
    owner: int | None = None

    @property
    def kind(self) -> str:
        return self.meta["kind"]


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
    ) -> None:
        """``model`` replaces building ``backbone`` from ``weights`` (a PackNet network)."""
        if strategy not in STRATEGIES:
            raise UserError(
                f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}"
            )
        self.backbone = backbone
        self.classifier = classifier_name(backbone)
        self.strategy = strategy
        self.device = torch.device(device)
        model = model if model is not None else build_backbone(backbone, weights, num_classes=1)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.fingerprint = backbone_fingerprint(self.model, self.classifier)
        self._base_head = self.model.get_submodule(self.classifier)
        self._weights = prunable_weights(self.model, self.classifier)  # what tasks mask, by key
        self._owners: dict[str, torch.Tensor] = {}  # PackNet's owner map, when hosted
        # copy strategy: the dense weights of every layer a mask may touch, kept aside once
        self._original: dict[str, torch.Tensor] = {}
        # restore strategy: per layer, (positions the active task changed, their old values)
        self._aside: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._state_aside: dict[str, torch.Tensor] = {}
        self.tasks: dict[str, LoadedTask] = {}
        self.active: str | None = None
        for task in tasks:
            self.add_task(task)

    @classmethod
    def from_packnet(
        cls, path: str | os.PathLike, strategy: str = "copy", device: str | torch.device = "cpu"
    ) -> MultiTaskModel:
        """Host a PackNet state: its shared network is the backbone, each finished task a task."""
        from src.masking.pruning import PackNetState

        state = PackNetState.load(path)
        hosted = cls(state.backbone, None, strategy=strategy, device=device, model=state.model)
        hosted._owners = {n: o.to(hosted.device) for n, o in state.owners.items()}
        if strategy == "copy":
            for name in state.owners:
                hosted._keep_original(name)
        for task in state.tasks:
            hosted._register(
                LoadedTask(
                    name=task,
                    path=Path(path),
                    meta={**state.meta, "kind": "packnet", "backbone": state.backbone,
                          "dataset": state.meta.get("datasets", {}).get(task, task)},
                    class_names=state.class_names.get(task, []),
                    head=hosted._head(state.heads[task], Path(path)),
                    state=state.task_extras.get(task, {}),
                    owner=state.owner(task),
                )
            )  # fmt: skip
        return hosted

    # --- loading ----------------------------------------------------------------------
    def add_task(self, task: str | os.PathLike | TaskFile, name: str | None = None) -> str:
        """Verify a task file against this backbone and register it; returns its name."""
        tf = task if isinstance(task, TaskFile) else read_task_file(task)
        if tf.kind not in ("piggyback", "classifier", "full"):
            raise UserError(
                f"{tf.path} is a {tf.kind!r} file; load a PackNet state with "
                "MultiTaskModel.from_packnet"
            )
        check_compatible(tf, self.backbone, self.fingerprint)
        loaded = LoadedTask(
            name=name or tf.path.stem,
            path=tf.path,
            meta=tf.meta,
            class_names=tf.class_names,
            # a full task stores its classifier inside the whole network's state
            head=self._head(
                unprefixed(tf.tensors, "classifier.")
                or unprefixed(tf.tensors, f"model.{self.classifier}."),
                tf.path,
            ),
        )
        if tf.kind == "full":
            head = self.classifier + "."
            trunk = unprefixed(tf.tensors, "model.")
            loaded.state = {k: v for k, v in trunk.items() if not k.startswith(head)}
        else:
            loaded.state = unprefixed(tf.tensors, "bn.")
        if tf.kind == "piggyback":
            loaded.layers = {n: e["shape"] for n, e in tf.meta["layers"].items()}
            loaded.bits = {k: v for k, v in tf.tensors.items() if k.startswith(("mask.", "sign."))}
            self._check_layers(loaded)
        self._register(loaded)
        return loaded.name

    def _register(self, task: LoadedTask) -> None:
        if task.name in self.tasks:
            raise UserError(f"two tasks are named {task.name!r}; rename one of the files")
        current = self.model.state_dict()
        unknown = sorted(set(task.state) - set(current))
        if unknown:
            raise UserError(f"task {task.name} ({task.path}) sets unknown state {unknown[:3]}")
        for key, value in task.state.items():
            if value.shape != current[key].shape:
                raise UserError(f"task {task.name} ({task.path}): {key} has the wrong shape")
        task.state = {k: v.to(self.device) for k, v in task.state.items()}
        if task.class_names and len(task.class_names) != task.head.out_features:
            raise UserError(
                f"task {task.name} ({task.path}) names {len(task.class_names)} classes but its "
                f"classifier has {task.head.out_features} outputs; the file is inconsistent"
            )
        self.tasks[task.name] = task

    def _head(self, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
        if "weight" not in state:
            raise UserError(f"task file {path} has no classifier; re-export it")
        return linear_from_state(state).to(self.device).eval().requires_grad_(False)

    def _check_layers(self, task: LoadedTask) -> None:
        for name, shape in task.layers.items():
            weight = self._weights.get(name)
            if weight is None:
                raise UserError(f"task file {task.path} masks layer {name}, absent here")
            if list(weight.shape) != list(shape):
                raise UserError(
                    f"task file {task.path}: mask for layer {name} has shape {shape}, "
                    f"the backbone's is {list(weight.shape)}"
                )
            packed = task.bits.get(f"mask.{name}")
            if packed is None or packed.numel() != -(-weight.numel() // 8):
                raise UserError(f"task file {task.path}: mask for layer {name} is corrupt")
            if self.strategy == "copy":
                self._keep_original(name)

    def _keep_original(self, name: str) -> None:
        if name not in self._original:
            self._original[name] = self._weights[name].detach().clone()

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

    def _masked_layers(self, task: LoadedTask | None) -> Iterable[str]:
        if task is None:
            return ()
        return task.layers if task.kind == "piggyback" else self._owners

    def _leave(self, task: LoadedTask | None, following: LoadedTask | None) -> None:
        """Undo ``task``; with the copy strategy, layers ``following`` refolds are left as is."""
        if task is None:
            return
        for layer_name, (changed, values) in self._aside.items():
            self._weights[layer_name].masked_scatter_(changed, values)
        self._aside = {}
        refolded = set(self._masked_layers(following))
        for layer_name in self._original.keys() & set(self._masked_layers(task)) - refolded:
            self._weights[layer_name].copy_(self._original[layer_name])
        if self._state_aside:
            _assign(self.model, self._state_aside)
            self._state_aside = {}
        replace_module(self.model, self.classifier, self._base_head)

    def _enter(self, task: LoadedTask) -> None:
        replace_module(self.model, self.classifier, task.head)
        if task.state:
            current = self.model.state_dict()
            self._state_aside = {k: current[k].clone() for k in task.state}
            _assign(self.model, task.state)
        for layer_name in self._masked_layers(task):
            weight = self._weights[layer_name]
            copy = self.strategy == "copy"
            if task.kind == "piggyback":
                shape = task.layers[layer_name]
                mask = layer_mask(task.bits, layer_name, shape).to(self.device)
                if not copy:
                    changed = mask != 1
                    self._aside[layer_name] = (changed, weight.masked_select(changed))
                # W * m as training computed it (a -0.0 stays -0.0), from the kept copy or in place
                if copy:
                    torch.mul(self._original[layer_name], mask, out=weight)
                else:
                    weight.mul_(mask)
            else:  # PackNet: weights free or owned by a later task are zeroed, as its view does
                own = self._owners[layer_name]
                changed = own.eq(FREE) | own.gt(task.owner)
                if copy:
                    weight.copy_(self._original[layer_name])
                else:
                    self._aside[layer_name] = (changed, weight.masked_select(changed))
                weight.masked_fill_(changed, 0.0)

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
        names = self.tasks[self.active].class_names or [str(i) for i in range(self.num_classes)]
        probs, idx = logits.softmax(dim=1).topk(min(k, logits.shape[1]), dim=1)
        return [
            [(names[j], float(p)) for p, j in zip(row_p, row_i.tolist(), strict=True)]
            for row_p, row_i in zip(probs, idx, strict=True)
        ]

    @property
    def num_classes(self) -> int:
        return self.model.get_submodule(self.classifier).out_features


def _assign(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy state entries (parameters or buffers, by full name) into ``model`` in place."""
    current = model.state_dict()
    for key, value in state.items():
        current[key].copy_(value)
