"""Build the paper's five datasets and ImageNet as ImageFolder trees from what users download.

Every builder reads the official archives (or their extracted folders, or the authors'
pre-split ``train/``+``test/`` folders) and yields a list of jobs; one common writer checks
the counts, decodes every image (cropping/resizing where asked) and publishes
``<out>/<name>/{train,test}/<class>/<file>`` atomically, so a failed or killed run leaves no
dataset a later training run could pick up. Class folders are named so that their sorted
order equals the official class ids (ImageFolder labels follow sorted folder order; for
ImageNet, the order of torchvision's pretrained classifiers).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing.pool
import os
import random
import shutil
import signal
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image
from torchvision.datasets.imagenet import ARCHIVE_META

from piggyback_lab.utils.atomic import (
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    remove_leftovers,
)
from piggyback_lab.utils.checkout import CHECKOUT_ROOT
from piggyback_lab.utils.errors import STOP_SIGNALS, UserError, interruptible

SKETCH_SPLIT_FILE = CHECKOUT_ROOT / "data" / "splits" / "sketch_64_16.json"
MANIFEST = "prepared.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Expected:
    """Class and per-split image counts a prepared dataset must have."""

    classes: int
    train: int
    test: int


@dataclass(frozen=True)
class Checksum:
    """What is known of an official file; None where no source gives it."""

    md5: str | None = None
    size: int | None = None


# Counts: docs/datasets.md (the reference table of the Piggyback/PackNet/CPG splits; ImageNet:
# the ILSVRC-2012 devkit readme, its validation set serving as test).
EXPECTED = {
    "cub": Expected(200, 5994, 5794),
    "cars": Expected(196, 8144, 8041),
    "flowers": Expected(102, 2040, 6149),
    "wikiart": Expected(195, 42129, 10628),
    "sketch": Expected(250, 16000, 4000),
    "imagenet": Expected(1000, 1281167, 50000),
}
# Folder names of the authors' pre-split archive (arunmallya/piggyback README).
OFFICIAL_NAMES = {
    "cub": "cubs_cropped",
    "cars": "stanford_cars_cropped",
    "flowers": "flowers",
    "wikiart": "wikiart",
    "sketch": "sketches",
}
# ILSVRC-2012: part (train/val/devkit) -> official file name, from torchvision's ARCHIVE_META.
IMAGENET_FILES = {part: file for part, (file, _) in ARCHIVE_META.items()}
IMAGENET_SIZES = {"ILSVRC2012_img_train.tar": 147897477120, "ILSVRC2012_img_val.tar": 6744924160}
IMAGENET_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
# The one checksum table. Sources: CUB md5/size from its data.caltech.edu record; Flowers
# md5s as in torchvision.datasets.Flowers102; Cars sizes from TFDS url_checksums/cars196.txt;
# ImageNet md5s from torchvision's ARCHIVE_META, train/val sizes as `ls -l` of the official
# files shows them in public setup guides (checked first: a truncated 147 GB download fails
# at once instead of after its md5).
CHECKSUMS = {
    "CUB_200_2011.tgz": Checksum("97eceeb196236b17998738112f37df78", 1150585339),
    "102flowers.tgz": Checksum("52808999861908f626f3c1f4e79d11fa"),
    "imagelabels.mat": Checksum("e0620be6f572b9609742df49c70aed4d"),
    "setid.mat": Checksum("a5357ecc9cb78c4bef273ce3793fc85c"),
    "cars_train.tgz": Checksum(size=979269282),
    "cars_test.tgz": Checksum(size=977350468),
    "car_devkit.tgz": Checksum(size=330960),
    "cars_test_annos_withlabels.mat": Checksum(size=185758),
    **{f: Checksum(md5, IMAGENET_SIZES.get(f)) for f, md5 in ARCHIVE_META.values()},
}
FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
DOWNLOADS = {  # dataset -> [(url, file name)]; --source then names the download folder
    "cub": [("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
             "CUB_200_2011.tgz")],
    "flowers": [(FLOWERS_URL + f, f) for f in ("102flowers.tgz", "imagelabels.mat", "setid.mat")],
    "sketch": [("https://cybertron.cg.tu-berlin.de/eitz/projects/classifysketch/sketches_png.zip",
                "sketches_png.zip")],
}  # fmt: skip
WHERE = {
    "cars": (
        "the Stanford URLs are dead: get cars_train.tgz, cars_test.tgz, car_devkit.tgz and "
        "cars_test_annos_withlabels.mat from a mirror (e.g. Kaggle "
        "'jessicali9530/stanford-cars-dataset'; the devkit is re-hosted in pytorch/vision "
        "issue files), put them in one folder and pass it as --source"
    ),
    "wikiart": (
        "Piggyback's WikiArt split exists only in the authors' archive: download it from the "
        "Box link in the README of github.com/arunmallya/piggyback (mirror linked from "
        "github.com/ivclab/CPG), unzip it and pass the folder (or the zip) as --source"
    ),
    "imagenet": (
        "ImageNet is downloadable only after a (free, non-commercial) registration: sign in at "
        "image-net.org, download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
        "ILSVRC2012_devkit_t12.tar.gz from the ILSVRC 2012 page "
        "(image-net.org/challenges/LSVRC/2012/2012-downloads.php), put them in one folder "
        "and pass it as --source"
    ),
}
OFFICIAL_FILES = {*CHECKSUMS, "sketches_png.zip"}
# Cropped sets are resized to exactly size x size by their transforms; the others to a shorter side.
RESIZE_MODE = {"cub": "exact", "cars": "exact"}


@dataclass(frozen=True)
class Job:
    """One output image: read ``src``, crop to ``box`` (kind, values) if any, write it."""

    src: str
    split: str
    cls: str
    name: str
    box: tuple[str, tuple[float, ...]] | None = None


# ----------------------------------------------------------------------------- crop boxes


def cub_crop_box(box: tuple[float, ...], width: int, height: int) -> tuple[int, int, int, int]:
    """CUB ``x, y, w, h`` (floats, top-left corner) -> PIL box: clipped, rounded outward."""
    x, y, w, h = box
    left, top = math.floor(max(0.0, x)), math.floor(max(0.0, y))
    right, bottom = math.ceil(min(float(width), x + w)), math.ceil(min(float(height), y + h))
    return left, top, right, bottom


def cars_crop_box(box: tuple[float, ...], width: int, height: int) -> tuple[int, int, int, int]:
    """Cars ``x1, y1, x2, y2`` (1-based inclusive pixel corners, MATLAB devkit) -> PIL box."""
    x1, y1, x2, y2 = box
    left, top = max(0, math.floor(x1) - 1), max(0, math.floor(y1) - 1)
    return left, top, min(width, math.ceil(x2)), min(height, math.ceil(y2))


CROP_BOXES: dict[str, Callable[[tuple[float, ...], int, int], tuple[int, int, int, int]]] = {
    "cub": cub_crop_box,
    "cars": cars_crop_box,
}


def resized_size(width: int, height: int, n: int, mode: str) -> tuple[int, int]:
    """Output size of torchvision's Resize(n) ('short') or Resize((n, n)) ('exact')."""
    if mode == "exact":
        return n, n
    if width <= height:
        return n, int(n * height / width)
    return int(n * width / height), n


# ----------------------------------------------------------------------------- writing


def _process(args: tuple[Job, str, int | None, str]) -> str | None:
    """Write one job's image; returns None, or ``"<src>: <why>"`` when it cannot be decoded."""
    job, out_root, resize, mode = args
    dst = Path(out_root) / job.split / job.cls / job.name
    try:
        with Image.open(job.src) as img:
            img.load()
            if job.box is None and resize is None:
                shutil.copyfile(job.src, dst)
                return None
            img = img.convert("RGB")
            if job.box is not None:
                kind, values = job.box
                box = CROP_BOXES[kind](values, *img.size)
                if box[2] <= box[0] or box[3] <= box[1]:
                    return f"{job.src}: bounding box {values} lies outside the {img.size} image"
                img = img.crop(box)
            if resize is not None:
                size = resized_size(*img.size, resize, mode)
                if size != img.size:
                    img = img.resize(size, Image.BILINEAR)
            if dst.suffix.lower() in (".jpg", ".jpeg"):
                img.save(dst, quality=95)
            else:
                img.save(dst)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{job.src}: {err}"
    return None


def _counts(jobs: list[Job]) -> dict[str, dict[str, int]]:
    return {
        s: {
            "images": sum(j.split == s for j in jobs),
            "classes": len({j.cls for j in jobs if j.split == s}),
        }
        for s in SPLITS
    }


def check_counts(
    name: str, jobs: list[Job], expected: Expected | None, allow_mismatch: bool
) -> dict[str, dict[str, int]]:
    """Per-split image/class counts against ``expected``; a mismatch is an error unless allowed."""
    classes = {s: sorted({j.cls for j in jobs if j.split == s}) for s in SPLITS}
    if classes["train"] != classes["test"]:
        only = sorted(set(classes["train"]) ^ set(classes["test"]))
        raise UserError(
            f"{name}: train and test have different class folders ({len(only)} in only one, "
            f"e.g. {only[:3]}); labels would not line up: fix the source folders"
        )
    counts = _counts(jobs)
    if expected is None:
        return counts
    want = {s: {"images": getattr(expected, s), "classes": expected.classes} for s in SPLITS}
    if counts != want:
        msg = f"{name}: found {_fmt(counts)}, expected {_fmt(want)}"
        if not allow_mismatch:
            raise UserError(
                f"{msg}; the source is incomplete or not the official one "
                "(pass --allow-count-mismatch to prepare it anyway)"
            )
        print(f"warning: {msg} (allowed by --allow-count-mismatch)")
    return counts


def _fmt(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(
        f"{s} {c['images']} images / {c['classes']} classes" for s, c in counts.items()
    )


def _pool_worker_start() -> None:
    """A pool worker leaves stop signals to the preparation, which terminates the pool: no
    worker traceback (Ctrl-C reaches the whole group), and a SIGTERM ends it at once."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN if signum == signal.SIGINT else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by _start_pool


def _start_pool(workers: int) -> multiprocessing.pool.Pool:
    """A pool whose workers start with the stop signals blocked until their handlers are
    set; the signals stay blocked in this process while it forks them, since a handler run
    in a fork hook has its exception ignored (a signal then lost, the work finished)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return multiprocessing.Pool(workers, initializer=_pool_worker_start)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _decode_all(args: list[tuple], workers: int, bar: dict) -> list[str | None]:
    """``_process`` of every job, in order, in ``workers`` processes; the pool is
    terminated (not waited for) when the preparation stops early."""
    from tqdm import tqdm

    if workers <= 1:
        return list(tqdm(map(_process, args), **bar))
    pool = _start_pool(workers)
    try:
        errors = list(tqdm(pool.imap(_process, args, chunksize=32), **bar))
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.close()
        pool.join()
    return errors


def write_dataset(
    final: Path,
    jobs: list[Job],
    manifest: dict,
    resize: int | None,
    mode: str,
    workers: int,
    progress: bool,
) -> None:
    """Decode and write every job into a temporary tree; publish it only when all decoded."""
    with atomic_dir(final) as tmp:
        for split, cls in sorted({(j.split, j.cls) for j in jobs}):
            (tmp / split / cls).mkdir(parents=True)
        args = [(j, str(tmp), resize, mode) for j in jobs]
        bar = dict(total=len(args), desc=f"prepare {final.name}", disable=not progress)
        errors = _decode_all(args, workers, bar)
        bad = [e for e in errors if e]
        if bad:
            listing = "\n  ".join(bad[:20]) + (
                f"\n  ... and {len(bad) - 20} more" * (len(bad) > 20)
            )
            raise UserError(
                f"{final.name}: {len(bad)} image(s) cannot be decoded (re-extract or re-download "
                f"the source; nothing was written):\n  {listing}"
            )
        atomic_write_json(tmp / MANIFEST, manifest)


# ----------------------------------------------------------------------------- sources


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, checksums: dict[str, Checksum], name: str | None = None) -> None:
    """Check a file against the checksum table entry of ``name`` (default: its own name)."""
    name = name or path.name
    known = checksums.get(name)
    if known is None:
        return
    hint = "download it again, or pass --no-verify to use it anyway"
    if known.size is not None and path.stat().st_size != known.size:
        raise UserError(
            f"{path}: {path.stat().st_size} bytes, the official {name} has {known.size}: "
            f"incomplete download or another file; {hint}"
        )
    if known.md5 is not None and (md5 := file_md5(path)) != known.md5:
        raise UserError(f"{path}: md5 {md5} differs from the official {name} ({known.md5}); {hint}")


def extract(archive: Path, dest: Path) -> Path:
    """Unpack a tar (any compression) or zip archive into ``dest``; a clear error if it is none."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                _extract_tar(tar, dest, archive)
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
        else:
            raise UserError(
                f"{archive} is not a tar or zip archive (incomplete download or wrong file?)"
            )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise UserError(f"{archive}: cannot extract it ({err}); download it again") from None
    return dest


def _extract_tar(tar: tarfile.TarFile, dest: Path, archive: Path) -> None:
    """Extract an open tar, random-access or stream (``r|``), refusing unsafe member paths."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for m in tar:  # Python < 3.10.12: check each member ourselves (works on streams too)
        if m.name.startswith("/") or ".." in Path(m.name).parts:
            raise UserError(f"{archive}: unsafe member path {m.name!r}")
        tar.extract(m, dest)


def find_file(roots: Iterable[Path], name: str) -> Path | None:
    """First file called ``name`` under any root (sorted, so the choice is deterministic)."""
    for root in roots:
        hits = sorted(p for p in root.rglob(name) if p.is_file())
        if hits:
            return hits[0]
    return None


def find_presplit(root: Path, name: str) -> Path | None:
    """The folder holding ``train/`` and ``test/``: root, root/<official name>, or a lone child."""
    candidates = [root, root / OFFICIAL_NAMES[name], root / name]
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(children) == 1:
        candidates += [children[0], children[0] / OFFICIAL_NAMES[name], children[0] / name]
    for c in candidates:
        if (c / "train").is_dir() and (c / "test").is_dir():
            return c
    return None


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def presplit_jobs(root: Path) -> list[Job]:
    """The authors' layout taken as it is: ``root/{train,test}/<class>/<image>``."""
    jobs = []
    for split in SPLITS:
        for cls in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            jobs += [Job(str(p), split, cls.name, p.name) for p in _images(cls)]
    return jobs


def _require(path: Path | None, what: str, fix: str) -> Path:
    if path is None:
        raise UserError(f"{what} not found; {fix}")
    return path


def _table(path: Path, ncols: int) -> dict[int, list[str]]:
    """Space-separated ``<id> <fields...>`` lines (CUB's .txt files) -> {id: fields}."""
    rows = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=ncols - 1)
        if len(parts) != ncols or not parts[0].isdigit():
            raise UserError(f"{path}:{lineno}: expected {ncols} fields, got {line!r}")
        rows[int(parts[0])] = parts[1:]
    return rows


def cub_jobs(roots: list[Path]) -> list[Job]:
    """CUB_200_2011/: the official split, each image cropped to its bounding box."""
    images_txt = _require(
        find_file(roots, "images.txt"),
        "CUB-200-2011's images.txt",
        "pass CUB_200_2011.tgz, its extracted folder, or the authors' cubs_cropped folder",
    )
    base = images_txt.parent
    files = {}
    for f in (
        "image_class_labels.txt",
        "train_test_split.txt",
        "bounding_boxes.txt",
        "classes.txt",
    ):
        files[f] = _require(
            base / f if (base / f).is_file() else None,
            f"CUB-200-2011 annotation file {base / f}",
            "re-extract CUB_200_2011.tgz (it ships images.txt, image_class_labels.txt, "
            "train_test_split.txt, bounding_boxes.txt and classes.txt)",
        )
    images = _table(images_txt, 2)
    labels = _table(files["image_class_labels.txt"], 2)
    is_train = _table(files["train_test_split.txt"], 2)
    boxes = _table(files["bounding_boxes.txt"], 5)
    classes = _table(files["classes.txt"], 2)
    jobs = []
    for image_id, (rel,) in sorted(images.items()):
        try:
            cls = classes[int(labels[image_id][0])][0]
            split = "train" if is_train[image_id][0] == "1" else "test"
            box = tuple(float(v) for v in boxes[image_id])
        except (KeyError, ValueError) as err:
            raise UserError(
                f"CUB-200-2011: image id {image_id} ({rel}) has no valid class, split or box "
                f"entry ({err}); the annotation files do not match images.txt"
            ) from None
        jobs.append(Job(str(base / "images" / rel), split, cls, Path(rel).name, ("cub", box)))
    return jobs


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path, squeeze_me=True)
    except (ValueError, OSError, TypeError, NotImplementedError) as err:
        raise UserError(f"{path}: not a readable .mat file ({err})") from None


def _mat_field(path: Path, mat: dict, key: str):
    import numpy as np

    if key not in mat:
        raise UserError(f"{path}: no {key!r} variable; is it the official file?")
    return np.atleast_1d(mat[key])


def _struct_rows(path: Path, key: str, fields: tuple[str, ...]) -> list[dict]:
    """Rows of the struct array ``key`` of a .mat file (Cars annotations, ImageNet synsets)."""
    rows = _mat_field(path, _loadmat(path), key)
    missing = [f for f in fields if f not in (rows.dtype.names or ())]
    if missing:
        raise UserError(f"{path}: {key!r} lacks the fields {missing}")
    return [{f: row[f] for f in fields} for row in rows]


def _class_folder(class_id: int, name: str) -> str:
    """``003.Name_With_Underscores``: sorted order = class id order, no path separators."""
    return f"{class_id:03d}." + name.strip().replace("/", "-").replace(" ", "_")


def _image_dir(roots: list[Path], name: str) -> Path | None:
    """The folder called ``name`` that holds the images (the Kaggle mirror nests it twice)."""
    for root in roots:
        for d in sorted(p for p in root.rglob(name) if p.is_dir()):
            if any(p.suffix.lower() == ".jpg" for p in d.iterdir()):
                return d
    return None


def cars_jobs(roots: list[Path]) -> list[Job]:
    """Stanford Cars: train annos + test annos with labels, each image cropped to its box."""
    how = (
        "Stanford Cars needs cars_train.tgz, cars_test.tgz, car_devkit.tgz and "
        "cars_test_annos_withlabels.mat (or their extracted folders) in the --source folder"
    )
    meta = _require(find_file(roots, "cars_meta.mat"), "devkit/cars_meta.mat", how)
    train_mat = _require(find_file(roots, "cars_train_annos.mat"), "cars_train_annos.mat", how)
    test_mat = _require(
        find_file(roots, "cars_test_annos_withlabels.mat"), "cars_test_annos_withlabels.mat", how
    )
    names = [str(n) for n in _mat_field(meta, _loadmat(meta), "class_names")]
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    jobs = []
    for split, mat, folder in (("train", train_mat, "cars_train"), ("test", test_mat, "cars_test")):
        images = _require(_image_dir(roots, folder), f"the {folder}/ image folder", how)
        for row in _struct_rows(mat, "annotations", fields):
            cid = int(row["class"])
            if not 1 <= cid <= len(names):
                raise UserError(f"{mat}: class {cid} outside 1..{len(names)} of cars_meta.mat")
            box = tuple(float(row[k]) for k in fields[:4])
            fname = str(row["fname"])
            cls = _class_folder(cid, names[cid - 1])
            jobs.append(Job(str(images / fname), split, cls, fname, ("cars", box)))
    return jobs


def flowers_jobs(roots: list[Path]) -> list[Job]:
    """Oxford Flowers 102: train = trnid + valid, test = tstid; class folders 001..102."""
    how = "Flowers needs 102flowers.tgz (or its jpg/ folder), imagelabels.mat and setid.mat"
    labels_mat = _require(find_file(roots, "imagelabels.mat"), "imagelabels.mat", how)
    setid_mat = _require(find_file(roots, "setid.mat"), "setid.mat", how)
    first = _require(find_file(roots, "image_00001.jpg"), "jpg/image_00001.jpg", how)
    labels = _mat_field(labels_mat, _loadmat(labels_mat), "labels")
    setid = _loadmat(setid_mat)
    parts = {k: _mat_field(setid_mat, setid, k) for k in ("trnid", "valid", "tstid")}
    jobs = []
    for split, keys in (("train", ("trnid", "valid")), ("test", ("tstid",))):
        for image_id in sorted(int(i) for k in keys for i in parts[k]):
            if not 1 <= image_id <= len(labels):
                raise UserError(f"{setid_mat}: image id {image_id} outside imagelabels.mat")
            name = f"image_{image_id:05d}.jpg"
            jobs.append(
                Job(str(first.parent / name), split, f"{int(labels[image_id - 1]):03d}", name)
            )
    return jobs


def make_sketch_split(
    num_classes: int = 250, per_class: int = 80, test_per_class: int = 16, seed: int = 0
) -> dict:
    """The seeded Sketch split, defined without the real file list.

    Class c is the c-th category in sorted name order; its images are ranked by their
    number (``<N>.png``); the test images are the ranks listed for c.
    """
    rng = random.Random(seed)
    return {
        "description": "TU-Berlin sketch split: per class (sorted category order), the 0-based "
        "ranks in numeric file order that go to test; the rest go to train",
        "generator": f"piggyback_lab.data.prepare.make_sketch_split({num_classes}, {per_class}, "
        f"{test_per_class}, seed={seed})",
        "num_classes": num_classes,
        "per_class": per_class,
        "test_ranks": [
            sorted(rng.sample(range(per_class), test_per_class)) for _ in range(num_classes)
        ],
    }


def write_sketch_split(path: Path = SKETCH_SPLIT_FILE) -> Path:
    """Write the shipped split file (run once; the committed file is the reference)."""
    split = make_sketch_split()
    rows = ",\n".join("    " + json.dumps(r) for r in split.pop("test_ranks"))
    head = json.dumps(split, indent=2)[:-2]  # one class per line keeps the file reviewable
    atomic_write_bytes(path, f'{head},\n  "test_ranks": [\n{rows}\n  ]\n}}\n'.encode())
    return path


def sketch_jobs(roots: list[Path], split: dict) -> list[Job]:
    """sketches_png.zip: png/<category>/<N>.png split by the shipped per-class test ranks."""
    listing = find_file(roots, "filelist.txt")
    base = (
        listing.parent
        if listing
        else next((r / "png" for r in roots if (r / "png").is_dir()), None)
    )
    base = _require(
        base,
        "the TU-Berlin png/ folder (with filelist.txt)",
        "pass sketches_png.zip, its extracted folder, or the authors' sketches folder",
    )
    classes = sorted(p for p in base.iterdir() if p.is_dir())
    if len(classes) != split["num_classes"]:
        raise UserError(
            f"sketch: {base} has {len(classes)} categories but the split file expects "
            f"{split['num_classes']}; use the complete sketches_png.zip"
        )
    jobs = []
    for cls, test_ranks in zip(classes, split["test_ranks"], strict=True):
        files = [p for p in cls.iterdir() if p.suffix.lower() == ".png"]
        if not all(p.stem.isdigit() for p in files) or len(files) != split["per_class"]:
            raise UserError(
                f"sketch: {cls} must hold {split['per_class']} files named <number>.png "
                f"(found {len(files)}); use the unmodified sketches_png.zip"
            )
        test = set(test_ranks)
        for rank, p in enumerate(sorted(files, key=lambda p: int(p.stem))):
            jobs.append(Job(str(p), "test" if rank in test else "train", cls.name, p.name))
    return jobs


def load_sketch_split(path: Path = SKETCH_SPLIT_FILE) -> dict:
    try:
        split = json.loads(Path(path).read_text())
        ok = len(split["test_ranks"]) == split["num_classes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"sketch split file {path} is missing or unreadable ({err})") from None
    if not ok:
        raise UserError(f"sketch split file {path} is inconsistent; restore it from git")
    return split


def imagenet_archives(source: Path) -> dict[str, Path]:
    """The three official ILSVRC-2012 files in the ``source`` folder, all checked present
    before anything is verified or extracted (hours of work otherwise)."""
    names = ", ".join(IMAGENET_FILES.values())
    if not source.is_dir():
        raise UserError(f"imagenet: --source must be the folder holding {names} (got {source})")
    paths = {part: source / name for part, name in IMAGENET_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(
            f"imagenet: {', '.join(missing)} not found in {source}; {WHERE['imagenet']}"
        )
    return paths


def imagenet_labels(devkit: Path, work: Path) -> tuple[set[str], list[str]]:
    """(the class wnids, the wnid of each validation image in sorted file order) from the devkit.

    Read as torchvision's ``parse_devkit_archive`` reads them: the classes are meta.mat's leaf
    synsets (num_children == 0; the rest are WordNet ancestors), the ground truth holds one
    ILSVRC2012_ID per validation image. That function cannot be called here: it accepts only
    the official md5 (no --no-verify, no miniature archives) and turns a bad devkit into a
    bare FileNotFoundError or KeyError.
    """
    root = extract(devkit, work / "devkit")
    how = f"{devkit} is not the ILSVRC-2012 devkit (task 1 & 2); download it again"
    meta = _require(find_file([root], "meta.mat"), f"{devkit.name}: data/meta.mat", how)
    truth = _require(
        find_file([root], IMAGENET_GROUND_TRUTH),
        f"{devkit.name}: data/{IMAGENET_GROUND_TRUTH}",
        how,
    )
    synsets = _struct_rows(meta, "synsets", ("ILSVRC2012_ID", "WNID", "num_children"))
    wnid_of = {
        int(r["ILSVRC2012_ID"]): str(r["WNID"]) for r in synsets if int(r["num_children"]) == 0
    }
    labels = []
    for lineno, line in enumerate(truth.read_text().rstrip().splitlines(), 1):
        if not line.strip().isdigit() or int(line) not in wnid_of:
            raise UserError(
                f"{truth.name}:{lineno}: {line!r} is not the ILSVRC2012_ID of a class in "
                f"meta.mat; {how}"
            )
        labels.append(wnid_of[int(line)])
    return set(wnid_of.values()), labels


def _extract_imagenet_train(archive: Path, dest: Path, wnids: set[str], progress: bool) -> Path:
    """Stream the train tar's per-class ``<wnid>.tar`` members straight into ``dest/<wnid>/``:
    each image is written once, and the 140 GB of inner tars never land on disk."""
    from tqdm import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r|", bufsize=1 << 20) as outer:
            bar = tqdm(outer, total=len(wnids), desc=f"extract {archive.name}", unit="class",
                       disable=not progress)  # fmt: skip
            for member in bar:
                name = PurePosixPath(member.name).name
                wnid = name.removesuffix(".tar")
                if not (member.isfile() and name.endswith(".tar") and wnid in wnids):
                    raise UserError(
                        f"{archive}: member {member.name!r} is not the <wnid>.tar of a class in "
                        "the devkit's meta.mat; is it the official ILSVRC2012_img_train.tar?"
                    )
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                    _extract_tar(inner, dest / wnid, archive)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{archive}: cannot extract it ({err}); download it again") from None
    return dest


def imagenet_jobs(archives: dict[str, Path], work: Path, progress: bool) -> list[Job]:
    """ILSVRC-2012: train from the per-class tars, test = the validation set labelled by the
    devkit's ground truth (the set every paper reports ImageNet top-1 on).

    Class folders are the wnids: sorted wnid order is the class index order of torchvision's
    pretrained ImageNet classifiers (trained on ImageFolder trees of wnid folders), so a
    base's own classifier can be scored on this test split as it is. The small devkit and
    validation set are read and cross-checked before the 140 GB train archive.
    """
    wnids, val_labels = imagenet_labels(archives["devkit"], work)
    val_images = _images(extract(archives["val"], work / "val"))
    if len(val_images) != len(val_labels):
        raise UserError(
            f"imagenet: {IMAGENET_GROUND_TRUTH} has {len(val_labels)} labels but "
            f"{archives['val'].name} holds {len(val_images)} images: one of the two is "
            "incomplete or not the official file; download them again"
        )
    train = _extract_imagenet_train(archives["train"], work / "train", wnids, progress)
    jobs = [
        Job(str(p), "train", cls.name, p.name)
        for cls in sorted(d for d in train.iterdir() if d.is_dir())
        for p in _images(cls)
    ]
    # as torchvision's parse_val_archive: the i-th label goes to the i-th file in sorted order
    return jobs + [
        Job(str(p), "test", w, p.name) for p, w in zip(val_images, val_labels, strict=True)
    ]


# ----------------------------------------------------------------------------- download


def download(url: str, dest: Path, checksum: Checksum | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` atomically with a progress bar; verify it when a checksum is known.

    An existing ``dest`` that matches the checksum is kept (re-running skips the download).
    """
    from tqdm import tqdm

    table = {dest.name: checksum} if checksum else {}
    if dest.is_file():
        try:
            verify_file(dest, table)
            return dest
        except UserError:
            print(f"{dest} does not match its checksum: downloading it again")
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url) as resp, open(tmp, "wb") as fh:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                           disable=not progress)  # fmt: skip
                with bar:
                    while block := resp.read(1 << 20):
                        fh.write(block)
                        bar.update(len(block))
            verify_file(tmp, table, name=dest.name)
    except OSError as err:
        raise UserError(
            f"cannot download {url} ({err}); check the network or download it by hand"
        ) from None
    if checksum is None or checksum.md5 is None:
        print(f"{dest.name}: no published md5 to check against; its md5 is {file_md5(dest)}")
    return dest


def fetch(
    name: str, folder: Path, checksums: dict[str, Checksum] = CHECKSUMS, progress: bool = True
) -> Path:
    """Download ``name``'s official files into ``folder``; returns the path to pass as source."""
    if name not in DOWNLOADS:
        raise UserError(f"{name} has no stable public download: {WHERE[name]}")
    paths = [download(u, folder / f, checksums.get(f), progress) for u, f in DOWNLOADS[name]]
    return paths[0] if len(paths) == 1 else folder


# ----------------------------------------------------------------------------- entry point


def _jobs(
    name: str,
    source: Path,
    roots: list[Path],
    archives: dict[str, Path],
    work: Path,
    sketch_split: dict | None,
    progress: bool,
) -> tuple[dict, str]:
    """(the image jobs, the source's form): the authors' pre-split folders when found (not
    for ImageNet), else the official release with its split."""
    presplit = (
        next((p for r in roots if (p := find_presplit(r, name))), None)
        if name in OFFICIAL_NAMES
        else None
    )
    if presplit is not None:
        return presplit_jobs(presplit), "presplit"
    if name == "wikiart":
        raise UserError(f"wikiart: no train/ and test/ folders under {source}; {WHERE[name]}")
    if name == "sketch":
        split = load_sketch_split() if sketch_split is None else sketch_split
        return sketch_jobs(roots, split), "official"
    if name == "imagenet":
        return imagenet_jobs(archives, work, progress), "official"
    return {"cub": cub_jobs, "cars": cars_jobs, "flowers": flowers_jobs}[name](roots), "official"


def prepare_dataset(
    name: str,
    source: str | os.PathLike,
    out_dir: str | os.PathLike = "data",
    *,
    resize: int | None = None,
    allow_count_mismatch: bool = False,
    expected: Expected | None = None,
    checksums: dict[str, Checksum] = CHECKSUMS,
    verify: bool = True,
    sketch_split: dict | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Prepare ``name`` from ``source`` into ``out_dir/name``; returns that folder.

    ``resize``: store images pre-resized (cropped sets: exactly resize x resize; others:
    shorter side = resize), the form that makes the training input pipeline cheaper.
    ``expected`` defaults to the paper's counts (EXPECTED).
    """
    if name not in EXPECTED:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(EXPECTED)}")
    source = Path(source).expanduser()
    if not source.exists():
        hint = WHERE.get(name, "point --source at the downloaded files, or pass --download")
        raise UserError(f"{name}: source {source} does not exist; {hint}")
    if resize is not None and resize <= 0:
        raise UserError(f"--resize must be a positive size in pixels (got {resize})")
    archives = imagenet_archives(source) if name == "imagenet" else {}
    expected = EXPECTED[name] if expected is None else expected
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    # what a killed preparation of this dataset left (a signal's leaves nothing)
    remove_leftovers(out_dir / name, [f".{name}.source.*"])
    with (
        interruptible(),
        tempfile.TemporaryDirectory(prefix=f".{name}.source.", dir=out_dir) as work,
    ):
        roots = _source_roots(source, Path(work), checksums if verify else {})
        jobs, form = _jobs(name, source, roots, archives, Path(work), sketch_split, progress)
        counts = check_counts(name, jobs, expected, allow_count_mismatch)
        mode = RESIZE_MODE.get(name, "short")
        manifest = {"dataset": name, "form": form, "counts": counts, "resize": resize,
                    "resize_mode": mode if resize else None}  # fmt: skip
        final = out_dir / name
        write_dataset(final, jobs, manifest, resize, mode, workers, progress)
    print(f"{name}: wrote {final} ({_fmt(counts)})")
    return final


def _source_roots(source: Path, work: Path, checksums: dict[str, Checksum]) -> list[Path]:
    """Folders to search: an archive source extracted, or the source folder plus its
    official archives extracted (files of the checksum table are verified first)."""
    if source.is_file():
        verify_file(source, checksums)
        return [extract(source, work / "archive")]
    roots = [source]
    for i, path in enumerate(sorted(source.iterdir())):
        if path.is_file() and path.name in OFFICIAL_FILES:
            verify_file(path, checksums)
            if path.suffix in (".tgz", ".zip"):
                roots.append(extract(path, work / f"archive{i}"))
    return roots
