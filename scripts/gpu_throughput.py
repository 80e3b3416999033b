"""Training throughput and peak memory, Piggyback against finetuning, on synthetic images.

  python scripts/gpu_throughput.py --out results/gpu_check      # CUDA: ResNet-50, ViT-B/16
  python scripts/gpu_throughput.py --quick --device cpu --out outputs/gpu_quick  # tiny, CPU

Per backbone and method: images per second over timed steps (after warm-up) in bf16-mixed
autocast with channels_last (CNNs), and the peak GPU memory of a step; written to
``<out>/throughput.json`` with the date and device. What only a GPU can show (AMP,
channels_last, throughput, memory): scripts/gpu_check.sh runs it beside ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from piggyback_lab.methods.api import wrap
from piggyback_lab.models import build_backbone, classifier_name
from piggyback_lab.utils.atomic import atomic_write_json
from piggyback_lab.utils.errors import UserError, exit_on_user_error

FULL = {"resnet50": 224, "vit_b_16": 224}
QUICK = {"minicnn": 32}
METHODS = ("piggyback", "finetune")


def measure(backbone: str, size: int, method: str, args: argparse.Namespace) -> dict:
    """Images per second and peak memory of ``args.steps`` training steps."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_backbone(backbone, None, num_classes=1000)
    task = wrap(model, method, classifier=classifier_name(backbone), num_classes=100)
    cnn = not backbone.startswith("vit")
    fmt = torch.channels_last if cnn and device.type == "cuda" else torch.contiguous_format
    task = task.to(device, memory_format=fmt).train()
    optimizer, _ = task.recipe(epochs=1)  # a cosine schedule needs a length; not timed
    x = torch.randn(args.batch, 3, size, size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 100, (args.batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.fp32)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(task(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {
        "backbone": backbone, "method": method, "batch": args.batch, "size": size,
        "precision": "32-true" if args.fp32 else "bf16-mixed",
        "channels_last": fmt == torch.channels_last,
        "images_per_s": round(args.steps * args.batch / seconds, 1),
        "peak_memory_mib": None if peak is None else round(peak, 1),
    }  # fmt: skip


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--quick", action="store_true", help="minicnn at 32 px (a smoke run)")
    ap.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu")
    if min(args.batch, args.steps) < 1 or args.warmup < 0:
        raise UserError("--batch and --steps must be >= 1, --warmup >= 0")
    rows = [
        measure(backbone, size, method, args)
        for backbone, size in (QUICK if args.quick else FULL).items()
        for method in METHODS
    ]
    for row in rows:
        ratio = row["images_per_s"] / next(
            r["images_per_s"] for r in rows
            if r["backbone"] == row["backbone"] and r["method"] == "finetune"
        )  # fmt: skip
        row["images_per_s_vs_finetune"] = round(ratio, 3)
        print(json.dumps(row))
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    )
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device or "cpu",
        "torch": torch.__version__,
        "rows": rows,
    }
    atomic_write_json(args.out / "throughput.json", result)
    print(f"wrote {args.out / 'throughput.json'}")


if __name__ == "__main__":
    main()
