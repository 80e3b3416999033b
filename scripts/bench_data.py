"""Images/s of the training input pipeline, raw vs the pre-resized prepared form (2 workers).

python scripts/bench_data.py [--images 128] [--workers 2]
Generates JPEG/PNG trees at the benchmarks' typical sizes, prepares them with
piggyback_lab.data.prepare (--resize), and times one pass of the train DataLoader over each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from piggyback_lab.data.prepare import Expected, prepare_dataset
from piggyback_lab.data.transforms import build_transforms

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "flip": True}
CASES = {  # name: (dataset builder to reuse, image size, format, transforms, --resize)
    "flowers-like 500x667 jpg": ("flowers", (500, 667), "jpg", "resize_crop", 256),
    "cub-like cropped 350x280 jpg": ("cub", (350, 280), "jpg", "resize_exact", 224),
    "sketch-like 1111x1111 png": ("sketch", (1111, 1111), "png", "resize_crop", 256),
}


def make_image(size: tuple[int, int], fmt: str, seed: int, path: Path) -> None:
    """Smooth colour field + strokes (photo-like JPEGs), or black strokes on white (sketches)."""
    rng = np.random.default_rng(seed)
    w, h = size
    if fmt == "png":
        img = Image.new("L", size, 255)
    else:
        yy, xx = np.mgrid[0:h, 0:w] / max(size)
        rgb = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + k) for k in range(3)]
        noise = rng.normal(0, 12, (h, w, 3))
        arr = np.clip(127 + 100 * np.stack(rgb, -1) + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        draw.line(list(rng.integers(0, min(size), 4)), fill=0, width=4)
    img.save(path, quality=90) if fmt == "jpg" else img.save(path)


def images_per_s(root: Path, style: str, workers: int, batch: int = 32) -> float:
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    train_tf, _ = build_transforms({"style": style, "size": 224, "resize": 256, **NORM})
    ds = ImageFolder(str(root / "train"), transform=train_tf)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for x, _ in it:
        n += len(x)
    return n / (time.perf_counter() - start)


def make_case(
    folder: Path, name: str, size: tuple, fmt: str, resize: int, images: int
) -> tuple[Path, Path]:
    """A generated raw ImageFolder tree (2 classes) and its ``prepare --resize`` form."""
    raw = folder / "raw"
    for split, n in (("train", images), ("test", 2)):
        for i in range(n):
            class_dir = raw / split / f"c{i % 2}"
            class_dir.mkdir(parents=True, exist_ok=True)
            make_image(size, fmt, i, class_dir / f"{i}.{fmt}")
    fast = prepare_dataset(name, raw, raw.parent, resize=resize, progress=False,
                           expected=Expected(2, images, 2))  # fmt: skip
    return raw, fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=128, help="training images per case")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    if args.batch < 1 or args.images < 2 * args.batch:  # the first batch is not timed
        ap.error(f"--images must be at least two batches (2 x --batch = {2 * args.batch})")
    with tempfile.TemporaryDirectory() as tmp:
        for label, (name, size, fmt, style, resize) in CASES.items():
            folder = Path(tmp) / label.split()[0]
            raw, fast = make_case(folder, name, size, fmt, resize, args.images)
            a = images_per_s(raw, style, args.workers, args.batch)
            b = images_per_s(fast, style, args.workers, args.batch)
            print(f"{label:30s} raw {a:7.1f} img/s   prepared --resize {resize} {b:7.1f} img/s"
                  f"   ratio {b / a:4.1f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
