"""The costs that matter (issue 10), each measured as a ratio inside one run.

Every timed figure alternates its two sides rep by rep (A, B, A, B, ...) and reports the
median of the per-rep ratios, so a machine that is busy with other work slows both sides
alike. CUDA timings are bracketed by ``torch.cuda.synchronize``. Methods and trainers are
built by the run layer from the composed root config (``conf/config.yaml`` with
``method=``, ``backbone=`` and the device's trainer), so precision (bf16 autocast on GPU)
and channels_last are what a training run uses. ``scripts/bench.py`` is the CLI; import
this module with ``scripts/`` on ``sys.path``.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bench_data as bd
import bench_switch
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from piggyback_lab.methods.piggyback.masks import masked_layers
from piggyback_lab.models import build_backbone, classifier_name
from piggyback_lab.models.surgery import prunable_weights
from piggyback_lab.runs.builders import build_method, build_trainer, channels_last, precision
from piggyback_lab.runs.config import compose
from piggyback_lab.utils.errors import UserError

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
PAPER_BACKBONES = ("vgg16", "vgg16_bn", "resnet50", "densenet121")
FIGURES = {
    1: "train step: Piggyback / finetune",
    2: "framework overhead: Lightning loop / bare PyTorch loop",
    3: "inference: folded Piggyback task / plain backbone",
    4: "task switch: finetuned checkpoint load / mask file load + fold",
    5: "storage: bits per masked weight (Piggyback task file)",
    6: "data loading: prepared / raw images per second",
    7: "peak memory of a training step: Piggyback / finetune",
    8: "transformer train step: Piggyback / finetune",
    9: "transformer inference: folded Piggyback task / plain backbone",
    10: "every method: train step / finetune, and stored bits per weight per task",
}
NO_TARGET = "none (issue 10 sets none)"
FUSED = "++method.optimizer.fused=true"  # Adam's update in one kernel per tensor (add or set)


@dataclass(frozen=True)
class Settings:
    """Sizes of one bench run; ``for_device`` gives the issue's sizes, ``quick`` tiny ones.

    Figure 1 is timed twice: at the device's shape (``backbone``, ``batch``, ``size``,
    ``reps``) and at the paper's (``paper_*``: ResNet-50, batch 32 at 224x224, median of
    3 steps), where the per-weight cost of the masks weighs as in the published runs.
    """

    device: str = "cpu"
    backbone: str = "resnet50"  # figures 1-4 and 7
    batch: int = 4
    size: int = 64
    reps: int = 15
    warmup: int = 2
    loop_steps: int = 8  # figure 2: steps per fit, per round
    loop_rounds: int = 7
    switch_rounds: int = 3
    storage_backbones: tuple[str, ...] = PAPER_BACKBONES
    data_images: int = 64
    data_cases: int = 3  # how many of scripts/bench_data.py's cases
    paper_backbone: str = "resnet50"  # figure 1 again at the paper's shape
    paper_batch: int = 32
    paper_size: int = 224
    paper_reps: int = 3  # steps timed per side (after one warm-up step)
    transformer: str = "vit_b_16"  # figures 8 and 9, at its only input size
    transformer_batch: int = 4
    transformer_size: int = 224
    transformer_reps: int = 5
    quick: bool = False

    @classmethod
    def for_device(cls, device: str, quick: bool = False) -> Settings:
        if quick:  # figure 1's second row at another tiny shape: never resnet50 at 224
            return cls(device, "minicnn", batch=2, size=32, reps=3, warmup=1, loop_steps=4,
                       loop_rounds=1, switch_rounds=1, storage_backbones=("minicnn",),
                       data_images=8, data_cases=1, paper_backbone="minicnn", paper_batch=4,
                       paper_size=48, paper_reps=3, transformer="minivit", transformer_batch=2,
                       transformer_size=32, transformer_reps=3, quick=True)  # fmt: skip
        if device == "cuda":
            return cls(device, batch=32, size=224, reps=21, warmup=3, loop_steps=20,
                       transformer_batch=32, transformer_reps=21)  # fmt: skip
        return cls(device)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def paper_shape(self) -> Settings:
        """These settings with figure 1's paper shape as the device shape (one warm-up)."""
        return Settings(**self.__dict__ | {"backbone": self.paper_backbone,
                                           "batch": self.paper_batch, "size": self.paper_size,
                                           "reps": self.paper_reps, "warmup": 1})  # fmt: skip

    @property
    def transformer_shape(self) -> Settings:
        """These settings with the transformer backbone at its input size (one warm-up)."""
        return Settings(**self.__dict__ | {"backbone": self.transformer,
                                           "batch": self.transformer_batch,
                                           "size": self.transformer_size,
                                           "reps": self.transformer_reps, "warmup": 1})  # fmt: skip


# ----------------------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], Any]], s: Settings) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating them rep by rep after a warm-up."""
    for _ in range(s.warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(s.reps):
        for name, fn in fns.items():
            sync(s.device)
            start = time.perf_counter()
            fn()
            sync(s.device)
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over reps of num/den: robust to load that drifts during the run."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 3)


def profile_table(fn: Callable[[], Any], device: str, rows: int = 8) -> str:
    """torch.profiler's top operators of one call, by self time (the 'why' of a miss)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def autocast(s: Settings):
    """bf16 autocast where the run's trainer would train in bf16-mixed (CUDA), else nothing."""
    if precision(device_config(s.device)) == "bf16-mixed":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_slug(device: str) -> str:
    """File-name form of the device: ``cpu``, or the GPU's name (``nvidia-h100-80gb-hbm3``)."""
    if device == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


# ----------------------------------------------------------------------------- models


def run_config(device: str, *overrides: str) -> DictConfig:
    """The root config as a training run on ``device`` composes it (``trainer=cpu`` on CPU,
    the GPU accelerator on CUDA), plus ``overrides``."""
    trainer = "trainer=cpu" if device == "cpu" else "trainer.accelerator=gpu"
    return compose([trainer, *overrides])


@functools.cache
def device_config(device: str) -> DictConfig:
    """``run_config(device)``, composed once: what precision and channels_last are read from."""
    return run_config(device)


def task_module(
    method: str,
    backbone: str,
    device: str,
    *overrides: str,
    num_classes: int = 10,
    seed: int = 0,
) -> pl.LightningModule:
    """The project's TaskModule for ``method`` as a run builds it (the run layer's
    ``build_method`` on ``method=<method> backbone=<backbone>`` plus ``overrides``), around
    the backbone with random weights (seeded: the same seed gives the same trunk)."""
    cfg = run_config(device, f"method={method}", f"backbone={backbone}", *overrides)
    torch.manual_seed(seed)
    model = build_backbone(backbone, None, num_classes)
    return build_method(cfg, num_classes, model=model)


def batch(s: Settings, num_classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s.batch, 3, s.size, s.size, generator=g)
    y = torch.randint(0, num_classes, (s.batch,), generator=g)
    x, y = x.to(s.device), y.to(s.device)
    if channels_last(device_config(s.device)):
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def train_step(method, s: Settings) -> Callable[[], None]:
    """One optimizer step of ``method`` on a fixed batch, with the method's own optimizer."""
    method.to(s.device)
    if method.channels_last:
        method.to(memory_format=torch.channels_last)
    method.train()
    x, y = batch(s)
    if hasattr(method, "select"):  # a method that picks what trains from task data (GPS)
        method.select([(x, y)])
    opt = method.configure_optimizers(epochs=1)["optimizer"]  # the schedule is not timed

    def step() -> None:
        with autocast(s):
            loss = F.cross_entropy(method(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def set_density(method, density: float, seed: int = 0) -> None:
    """Give a Piggyback model masks of a paper-like density (random, seeded)."""
    g = torch.Generator().manual_seed(seed)
    scale = method.hparams.mask_scale
    with torch.no_grad():
        for layer in masked_layers(method.model).values():
            keep = torch.rand(layer.mask_real.shape, generator=g) < density
            layer.mask_real.copy_(torch.where(keep, scale, -scale))


# ----------------------------------------------------------------------------- figures


def verdict(value: float, target: float, higher_is_better: bool = False) -> bool:
    return value >= target if higher_is_better else value <= target


def numerics(s: Settings) -> str:
    """How a training run on ``s.device`` computes: its precision and memory format."""
    cfg = device_config(s.device)
    return f"precision {precision(cfg)}" + (", channels_last" if channels_last(cfg) else "")


def step_times(s: Settings) -> tuple[dict, dict[str, Callable[[], None]]]:
    """Figure 1 at ``s``'s backbone, batch and input size: the row, and the timed steps."""
    modules = {
        name: task_module(method, s.backbone, s.device, *overrides)
        for name, method, overrides in (("piggyback", "piggyback", ()),
                                        ("finetune", "finetune", ()),
                                        ("piggyback_adam_fused", "piggyback", (FUSED,)))
    }  # fmt: skip
    masks = masked_layers(modules["piggyback"].model).values()
    masked = sum(layer.mask_real.numel() for layer in masks)
    steps = {name: train_step(module, s) for name, module in modules.items()}
    del modules
    times = interleaved(steps, s)
    ratio = paired_ratio(times, "piggyback", "finetune")
    row = {
        "value": round(ratio, 3),
        "masked_weights": masked,
        "target": "<= 1.05",
        "met": verdict(ratio, 1.05),
        "adam_fused_value": round(paired_ratio(times, "piggyback_adam_fused", "finetune"), 3),
        "ms": {m: median_ms(t) for m, t in times.items()},
        "shape": f"{s.backbone}, batch {s.batch}, {s.size}x{s.size}",
        "setup": f"{s.backbone}, batch {s.batch}, {s.size}x{s.size}, {numerics(s)}, random "
        f"weights, {masked:,} masked weights; median of {s.reps} per-step ratios after "
        f"{s.warmup} warm-up step(s)",
    }
    return row, steps


def fig_train_step(s: Settings) -> dict:
    """1. One optimizer step, Piggyback vs finetuning, same backbone, batch and input.

    Judged on the published recipe (Adam); Piggyback with ``++method.optimizer.fused=true``
    is timed in the same interleaved reps and reported beside it. Timed at the device's
    shape, then again at the paper's (``paper_shape``: ResNet-50, batch 32 at 224x224,
    median of 3 steps), where the convolutions weigh as in the published runs.
    """
    out, steps = step_times(s)
    if not out["met"]:
        out["profile"] = {m: profile_table(fn, s.device) for m, fn in steps.items()}
    del steps  # free the three models before the (larger) paper shape
    paper = s.paper_shape
    if (paper.backbone, paper.batch, paper.size) == (s.backbone, s.batch, s.size):
        row = {k: v for k, v in out.items() if k != "profile"}
        out["paper_shape"] = row | {"setup": row["setup"] + " (the measurement above)"}
    else:
        out["paper_shape"], _ = step_times(paper)
    return out


class StepClock(pl.Callback):
    """A timestamp at every training batch start and at the end of training (device-synced)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, module) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())


def fig_framework_overhead(s: Settings) -> dict:
    """2. Per-step period of the project's Lightning fit vs a bare loop (same module, data).

    Both sides are timed batch start to batch start (data fetch, hooks, logging included),
    so Trainer start-up and tear-down are excluded. Rounds alternate a Lightning fit and a
    bare pass; the figure is the median over rounds of their median-step ratio.
    """
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    method = task_module("piggyback", s.backbone, s.device)
    phase = dict(enable_progress_bar=False, enable_checkpointing=False, limit_val_batches=0,
                 max_steps=s.loop_steps, num_sanity_val_steps=0)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    n = s.batch * s.loop_steps
    data = TensorDataset(torch.randn(n, 3, s.size, s.size, generator=g),
                         torch.randint(0, 10, (n,), generator=g))  # fmt: skip
    loader = DataLoader(data, batch_size=s.batch, shuffle=True, num_workers=0, drop_last=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    lightning: list[float] = []
    bare: list[float] = []
    ratios: list[float] = []
    for name in ("pytorch_lightning", "lightning.pytorch"):  # start-up chatter, once per fit
        logging.getLogger(name).setLevel(logging.WARNING)
    skip = min(s.warmup, s.loop_steps - 2)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(s.loop_rounds):
            clock = StepClock(s.device)
            cfg = run_config(s.device, f"paths.output_dir='{tmp}'")
            trainer = build_trainer(cfg, -1, callbacks=[clock],
                                    logger=CSVLogger(tmp, name="bench"), **phase)  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # no val loader, few steps: by design here
                trainer.fit(method, train_dataloaders=loader)
            periods = [b - a for a, b in itertools.pairwise(clock.stamps)]
            steps = {"lightning": periods[skip:-1], "bare": _bare_loop(method, loader, s)[skip:]}
            ratios.append(statistics.median(steps["lightning"]) / statistics.median(steps["bare"]))
            lightning += steps["lightning"]  # the last period above includes fit's tear-down
            bare += steps["bare"]
    ratio = statistics.median(ratios)
    return {
        "value": round(ratio, 3),
        "target": "<= 1.05",
        "met": verdict(ratio, 1.05),
        "ms": {"lightning": median_ms(lightning), "bare": median_ms(bare)},
        "steps_timed": {"lightning": len(lightning), "bare": len(bare)},
        "round_ratios": [round(r, 3) for r in ratios],
        "setup": f"piggyback {s.backbone}, batch {s.batch}, {s.size}x{s.size}, in-memory "
        f"tensors, 0 workers, {numerics(s)}; the run layer's build_trainer on the device's "
        "trainer config; step period timed inside fit by a callback (start-up excluded), "
        "progress bar off, CSV logger on",
    }


def _bare_loop(method, loader, s: Settings) -> list[float]:
    """Seconds per step of a plain PyTorch loop over ``loader`` (same module and optimizer)."""
    method.to(s.device).train()
    opt = method.configure_optimizers(epochs=1)["optimizer"]  # the schedule is not timed
    stamps = []
    for x, y in loader:
        sync(s.device)
        stamps.append(time.perf_counter())
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        if method.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(s):
            loss = F.cross_entropy(method(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(s.device)
    stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


def export_piggyback(
    backbone: str, path: Path, density: float = 0.6, num_classes: int = 10, device: str = "cpu"
):
    """A real Piggyback task file (random backbone, seeded masks) via the method's export_task.

    Returns (method, plain backbone with the same weights, file size in bytes).
    """
    torch.manual_seed(0)
    plain = build_backbone(backbone, None, num_classes)
    method = task_module("piggyback", backbone, device, num_classes=num_classes)  # same trunk
    set_density(method, density)
    size = method.export_task(path, {"dataset": "bench", "num_classes": num_classes})
    return method, plain, size


def fig_inference(s: Settings) -> dict:
    """3. Forward pass of a task folded into a plain backbone vs the plain backbone."""
    from piggyback_lab.methods.tasks import apply_task
    from piggyback_lab.taskfile import check_compatible, read_task_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.safetensors"
        _, plain, _ = export_piggyback(s.backbone, path, device=s.device)
        task = read_task_file(path)
    classifier = classifier_name(s.backbone)
    folded = copy.deepcopy(plain)
    check_compatible(task, s.backbone, _fingerprint(folded, classifier))
    apply_task(folded, task, classifier)
    x, _ = batch(s)
    fns = {}
    for name, model in (("folded", folded), ("plain", plain)):
        model = model.to(s.device).eval()
        if channels_last(device_config(s.device)):
            model.to(memory_format=torch.channels_last)
        fns[name] = _forward(model, x, s)
    times = interleaved(fns, s)
    ratio = paired_ratio(times, "folded", "plain")
    return {
        "value": round(ratio, 3),
        "target": "<= 1.01",
        "met": verdict(ratio, 1.01),
        "ms": {m: median_ms(t) for m, t in times.items()},
        "same_module_types": [type(m).__name__ for m in folded.modules()]
        == [type(m).__name__ for m in plain.modules()],
        "setup": f"{s.backbone}, batch {s.batch}, {s.size}x{s.size}, eval, no_grad, "
        "mask density 0.6, folded with piggyback_lab.methods.tasks.apply_task",
    }


def _fingerprint(model, classifier: str) -> str:
    from piggyback_lab.taskfile import backbone_fingerprint

    return backbone_fingerprint(model, classifier)


def _forward(model, x: torch.Tensor, s: Settings) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad(), autocast(s):
            model(x)

    return run


def fig_task_switch(s: Settings) -> dict:
    """4. Switching tasks: (read + verify the mask file) + select with the copy strategy, vs
    loading the finetuned network's page-cached torch checkpoint, interleaved rep by rep.

    scripts/bench_switch.py's ``benchmark`` writes the files and adds the per-strategy
    select times.
    """
    from piggyback_lab.methods.multitask import MultiTaskModel
    from piggyback_lab.methods.piggyback.task import layer_mask
    from piggyback_lab.taskfile import read_task_file

    backbone = "resnet50" if not s.quick else s.backbone
    with tempfile.TemporaryDirectory() as tmp:
        r = bench_switch.benchmark(backbone, 2, 0.6, s.device, s.switch_rounds, Path(tmp))
        paths = [Path(tmp) / f"task{t}.safetensors" for t in range(2)]
        weights = str(Path(tmp) / "backbone.safetensors")
        host = MultiTaskModel(backbone, weights, paths, strategy="copy", device=s.device)
        model = build_backbone(backbone, None, 10).to(s.device)  # the finetuned net's host
        ckpt = Path(tmp) / "full.ckpt"
        names, turn = list(host.tasks), itertools.count()

        def switch() -> None:  # to the other task each time, as a server alternating tasks
            k = next(turn) % len(names)
            read_task_file(paths[k])
            host.select(names[k])

        def load_checkpoint(path: Path = ckpt) -> None:
            model.load_state_dict(
                torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            )

        times = interleaved({"ckpt": load_checkpoint, "switch": switch}, s)
        read_ms = median_ms([_seconds(lambda: read_task_file(paths[0])) for _ in range(s.reps)])
        task = read_task_file(paths[0])
        cold = _cold_loads({"mask_file_read": (paths[0], read_task_file),
                            "finetuned_ckpt_load": (ckpt, load_checkpoint)}, s)  # fmt: skip
    # where a fold's time goes: unpacking the bits vs the multiply itself
    unpack = multiply = 0.0
    for name, entry in task.meta["layers"].items():
        weight = model.get_submodule(name).weight
        start = time.perf_counter()
        mask = layer_mask(task.tensors, name, entry["shape"]).to(s.device)
        sync(s.device)
        mid = time.perf_counter()
        with torch.no_grad():
            torch.mul(weight, mask, out=weight)
        sync(s.device)
        unpack += mid - start
        multiply += time.perf_counter() - mid
    ratio = paired_ratio(times, "ckpt", "switch")
    return {
        "value": round(ratio, 2),
        "target": ">= 5x",
        "met": verdict(ratio, 5.0, higher_is_better=True),
        "ms": {
            "mask_file_read_and_select": median_ms(times["switch"]),
            "mask_file_read": read_ms,
            "select_copy": round(r["select_copy_ms"], 2),
            "select_restore": round(r["select_restore_ms"], 2),
            "finetuned_ckpt_load": median_ms(times["ckpt"]),
            "finetuned_full_taskfile_load": round(r["load_full_taskfile_ms"], 2),
        },
        "select_only_ratio": round(r["load_full_ckpt_ms"] / r["select_copy_ms"], 2),
        "cold_cache_ms": cold,
        "cold_cache_ratio": round(
            cold["finetuned_ckpt_load"] / (cold["mask_file_read"] + r["select_copy_ms"]), 2
        ),
        "fold_profile_ms": {
            "unpack_bits": round(1000 * unpack, 2),
            "multiply_into_weights": round(1000 * multiply, 2),
        },
        "bytes": {"mask_file": r["task_file_bytes"], "finetuned_file": r["full_file_bytes"]},
        "setup": f"{backbone}, random weights, 2 tasks of mask density 0.6, alternated; "
        f"{s.reps} interleaved reps of checkpoint load vs mask-file read + select (strategy "
        f"'copy'), median of per-rep ratios; select_*: scripts/bench_switch.py, "
        f"{s.switch_rounds} rounds; files page-cached",
    }


def _cold_loads(loads: dict[str, tuple[Path, Callable[[Path], Any]]], s: Settings) -> dict:
    """Median ms of each ``name: (file, load)`` from disk.

    Each file is dropped from the page cache first (fsync + POSIX_FADV_DONTNEED on that
    file only), so this is the cost when a task's file was not read recently.
    """
    times: dict[str, list[float]] = {k: [] for k in loads}
    for _ in range(max(3, s.switch_rounds)):
        for name, (path, load) in loads.items():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            sync(s.device)
            times[name].append(_seconds(lambda p=path, f=load: (f(p), sync(s.device))))
    return {k: median_ms(v) for k, v in times.items()}


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fig_storage(s: Settings) -> dict:
    """5. Bytes of a real exported Piggyback task file per backbone, and bits per masked weight.

    ``mask_bits_per_weight`` counts the stored mask tensors only (the judged figure);
    ``overhead_bytes`` is the rest beyond mask + classifier (safetensors header, metadata).
    """
    from piggyback_lab.taskfile import read_task_file

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in s.storage_backbones:
            path = Path(tmp) / f"{backbone}.safetensors"
            method, plain, size = export_piggyback(backbone, path)
            task = read_task_file(path)
            n = sum(int(torch.Size(e["shape"]).numel()) for e in task.meta["layers"].values())
            nbytes = {p: sum(t.nbytes for k, t in task.tensors.items() if k.startswith(p))
                      for p in ("mask.", "sign.", "classifier.")}  # fmt: skip
            masks = nbytes["mask."] + nbytes["sign."]
            full = sum(t.nbytes for t in plain.state_dict().values())
            rows[backbone] = {
                "task_bytes": size,
                "masked_weights": n,
                "mask_bytes": masks,
                "classifier_bytes": nbytes["classifier."],
                "overhead_bytes": size - masks - nbytes["classifier."],
                "mask_bits_per_weight": round(8 * masks / n, 4),
                "file_bits_per_weight_excl_classifier": round(
                    8 * (size - nbytes["classifier."]) / n, 4
                ),
                "finetuned_state_bytes": full,
                "finetuned_over_task": round(full / size, 1),
            }
            del method, plain, task
    worst = max(r["mask_bits_per_weight"] for r in rows.values())
    return {
        "value": worst,
        "target": "<= 1.0 bit per masked weight, plus the classifier",
        "met": verdict(worst, 1.0),
        "backbones": rows,
        "setup": "random-init backbones, 10 classes, Piggyback.export_task, mask density 0.6 "
        "(packed bits: size does not depend on density)",
    }


def fig_data_loading(s: Settings) -> dict:
    """6. Train pipeline images/s, raw files vs ``prepare --resize``, via scripts/bench_data.py.

    0 workers (the loader's cost in this process, stable on a busy machine), batch 16,
    raw and prepared passes alternated ``reps`` times; the figure is the median ratio.
    """
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (name, size, fmt, style, resize) in list(bd.CASES.items())[: s.data_cases]:
            raw, fast = bd.make_case(Path(tmp) / name, name, size, fmt, resize, s.data_images)
            rates: dict[str, list[float]] = {"raw": [], "prepared": []}
            loader_batch = min(16, max(1, s.data_images // 4))  # the first batch is not timed
            for _ in range(max(1, s.reps // 3)):
                rates["raw"].append(bd.images_per_s(raw, style, 0, batch=loader_batch))
                rates["prepared"].append(bd.images_per_s(fast, style, 0, batch=loader_batch))
            cases[label] = {
                "raw_img_s": round(statistics.median(rates["raw"]), 1),
                "prepared_img_s": round(statistics.median(rates["prepared"]), 1),
                "ratio": round(paired_ratio(rates, "prepared", "raw"), 2),
                "resize": resize,
            }
    return {
        "value": min(c["ratio"] for c in cases.values()),
        "target": NO_TARGET,
        "met": None,
        "cases": cases,
        "setup": f"{s.data_images} generated images per case, 0 workers, batch 16, "
        "scripts/bench_data.py's images_per_s (first batch excluded)",
    }


def step_memory(method: str, s: Settings) -> dict:
    """Peak memory of one steady-state training step (run it in a fresh process).

    CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak RSS (VmHWM), reset
    through /proc/self/clear_refs after a warm-up step, so the peak is that of one step
    with the optimizer state already allocated.
    """
    torch.set_num_threads(1)
    step = train_step(task_module(method, s.backbone, s.device), s)
    step()  # allocates gradients and optimizer state
    if s.cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "resident_bytes": before,
                "how": "torch.cuda.max_memory_allocated"}  # fmt: skip
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    step()
    return {"peak_bytes": _status_bytes("VmHWM"), "resident_bytes": before,
            "how": "process peak RSS (VmHWM) after /proc/self/clear_refs"}  # fmt: skip


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise UserError(f"/proc/self/status has no {field}; peak memory needs Linux")


def fig_memory(s: Settings) -> dict:
    """7. Peak memory of a training step, each method in its own fresh Python process."""
    if not s.cuda and not Path("/proc/self/clear_refs").exists():
        raise UserError("figure 7 on CPU needs Linux /proc; skip it with --only 1,2,3,4,5,6")
    args = json.dumps(s.__dict__ | {"storage_backbones": list(s.storage_backbones)})
    peaks = {}
    for method in ("piggyback", "finetune"):
        code = (
            "import json, sys; sys.path[:0] = sys.argv[2:]; "
            "from benchmarks import Settings, step_memory; "
            "a = json.loads(sys.argv[1]); a['storage_backbones'] = tuple(a['storage_backbones']);"
            f" print(json.dumps(step_memory({method!r}, Settings(**a))))"
        )
        done = subprocess.run([sys.executable, "-c", code, args, str(SCRIPTS), str(ROOT)],
                              cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"memory child for {method} failed:\n{done.stderr[-2000:]}")
        peaks[method] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = peaks["piggyback"]["peak_bytes"] / peaks["finetune"]["peak_bytes"]
    return {
        "value": round(ratio, 3),
        "target": NO_TARGET,
        "met": None,
        "mb": {
            m: {k: round(v / 2**20, 1) for k, v in p.items() if k.endswith("bytes")}
            for m, p in peaks.items()
        },
        "how": peaks["piggyback"]["how"],
        "setup": f"{s.backbone}, batch {s.batch}, {s.size}x{s.size}, second step measured",
    }


def fig_transformer_train_step(s: Settings) -> dict:
    """8. Figure 1 on a transformer (ViT-B/16): masks on every attention projection and MLP
    weight, through torch.nn.utils.parametrize."""
    row, _ = step_times(s.transformer_shape)
    return row


def fig_transformer_inference(s: Settings) -> dict:
    """9. Figure 3 on a transformer (ViT-B/16): a folded task is a plain ViT again."""
    return fig_inference(s.transformer_shape)


def single_task_methods() -> list[str]:
    """Every method with a config that trains one task per run (PackNet trains a sequence)."""
    from piggyback_lab.methods import method_named

    configs = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
    return [m for m in configs if method_named(m) is not None and not method_named(m).sequence]


def fig_methods(s: Settings) -> dict:
    """10. Each single-task method's training step against finetuning's (same backbone,
    batch and input, interleaved reps) and the bits its task file stores per prunable trunk
    weight (classifier and header included), so a new method gets its row by registering."""
    import tempfile

    from piggyback_lab.methods.api import export_task
    from piggyback_lab.methods.tasks import read_task

    modules, rows = {}, {}
    for method in single_task_methods():
        try:
            modules[method] = task_module(method, s.backbone, s.device)
        except UserError as refused:  # a method of transformer blocks on a CNN: said, not timed
            rows[method] = {"refused": str(refused)}
    times = interleaved({m: train_step(module, s) for m, module in modules.items()}, s)
    with tempfile.TemporaryDirectory() as folder:
        for method, module in modules.items():
            path = Path(folder) / f"{method}.safetensors"
            size = export_task(module.cpu(), path)
            tf = read_task(path)
            trunk = sum(
                w.numel() for w in prunable_weights(module.model, module.classifier).values()
            )
            rows[method] = {
                "step_ratio": round(paired_ratio(times, method, "finetune"), 3),
                "step_ms": median_ms(times[method]),
                "file_bits_per_weight": round(8 * size / trunk, 4),
                "kind": tf.meta["kind"],
            }
    return {
        "value": "; ".join(
            f"{m} {r['step_ratio']}x, {r['file_bits_per_weight']:g} bits"
            if "refused" not in r
            else f"{m} not on {s.backbone}"
            for m, r in rows.items()
        ),
        "target": NO_TARGET,
        "met": None,
        "methods": rows,
        "setup": f"{s.backbone}, batch {s.batch}, {s.size}x{s.size}, {numerics(s)}, random "
        f"weights; median of {s.reps} per-step ratios after {s.warmup} warm-up step(s); "
        "bits: the task file's size over the prunable trunk weights",
    }


RUNNERS: dict[int, Callable[[Settings], dict]] = {
    1: fig_train_step,
    2: fig_framework_overhead,
    3: fig_inference,
    4: fig_task_switch,
    5: fig_storage,
    6: fig_data_loading,
    7: fig_memory,
    8: fig_transformer_train_step,
    9: fig_transformer_inference,
    10: fig_methods,
}


# ----------------------------------------------------------------------------- report


def run_figures(s: Settings, only: list[int], log: Callable[[str], None] = print) -> dict:
    """Measure the chosen figures; returns the JSON-able result (printing each as it ends)."""
    figures = {}
    for number in only:
        start = time.perf_counter()
        figure = {"name": FIGURES[number], **RUNNERS[number](s)}
        figure["seconds"] = round(time.perf_counter() - start, 1)
        figure["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        figures[str(number)] = figure
        log(summary_line(number, figure))
    return {
        "device": device_name(s.device),
        "device_kind": s.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": s.__dict__ | {"storage_backbones": list(s.storage_backbones)},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "figures": figures,
    }


def table_rows(figure: dict) -> list[tuple[str, dict]]:
    """(label, row) per results-table row of a figure: the figure itself and, for figure 1,
    the same ratio at the paper's shape."""
    shape = figure.get("shape")
    rows = [(figure["name"] + (f" ({shape})" if shape else ""), figure)]
    if "paper_shape" in figure:
        paper = figure["paper_shape"]
        rows.append((f"{figure['name']}, paper's shape ({paper['shape']})", paper))
    return rows


def summary_line(number: int, figure: dict) -> str:
    lines = []
    for label, row in table_rows(figure):
        met = {True: "met", False: "NOT MET", None: "-"}[row["met"]]
        lines.append(f"{number}. {label}: {cell(row)}  target {row['target']}  [{met}]")
    return "\n".join(lines)


def cell(row: dict) -> str:
    """A row's value, with figure 1's fused-Adam ratio beside it."""
    fused = row.get("adam_fused_value")
    return f"{row['value']}" + ("" if fused is None else f" (fused Adam: {fused})")


def markdown(result: dict) -> str:
    """A short summary: one table row per figure (two for figure 1: the device's shape and
    the paper's), then each figure's details."""
    lines = [
        f"# Benchmarks on {result['device']} ({result['device_kind']})",
        "",
        f"{result['date']}, torch {result['torch']}, {result['threads']} CPU thread(s). "
        "Ratios are medians of interleaved reps measured in this one run.",
        "",
        "| # | figure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    figures = sorted(result["figures"].items(), key=lambda kv: int(kv[0]))
    for number, f in figures:
        for label, row in table_rows(f):
            met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
            lines.append(f"| {number} | {label} | {cell(row)} | {row['target']} | {met} |")
    for number, f in figures:
        lines += ["", f"## {number}. {f['name']}", "", f"Setup: {f['setup']}."]
        if "paper_shape" in f:
            lines += ["", f"Paper's shape: {f['paper_shape']['setup']}."]
        details = {k: v for k, v in f.items()
                   if k not in ("name", "value", "target", "met", "setup", "profile")}  # fmt: skip
        lines += ["", "```json", json.dumps(details, indent=1), "```"]
        for side, table in f.get("profile", {}).items():
            lines += ["", f"Profile of one {side} step (top operators by self time):", "",
                      "```", table.rstrip(), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_results(result: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write <stem>.json and <stem>.md atomically; figures not re-measured are kept."""
    from piggyback_lab.utils.atomic import atomic_write_bytes, atomic_write_json

    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    if json_path.is_file():
        try:
            old = json.loads(json_path.read_text())
        except ValueError:
            old = {}
        if old.get("device") == result["device"]:
            result = {**result, "figures": {**old.get("figures", {}), **result["figures"]}}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(json_path, result)
    atomic_write_bytes(md_path, markdown(result).encode())
    return json_path, md_path
