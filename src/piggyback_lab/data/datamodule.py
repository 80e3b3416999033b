"""One LightningDataModule for every ImageFolder dataset (train/ and test/ class trees)."""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing
import os
import signal
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from tqdm import tqdm

from piggyback_lab.data.transforms import build_transforms
from piggyback_lab.utils.errors import UserError, check_choice, check_integer

# clean: select the epoch on a split held out of train; faithful: on the test split (the
# official code); final: train on every labelled non-test image and keep the last epoch.
PROTOCOLS = ("clean", "faithful", "final")


def eval_split(datamodule: Any) -> str:
    """The split a datamodule tests on: "test"; "val" (a Decathlon domain without test
    labels); "none" (protocol=final without test labels: nothing is tested). Data without
    the attribute (ImageFolder trees, plain loaders) tests on "test"."""
    return getattr(datamodule, "eval_split", "test")


def ignore_interrupts(worker_id: int) -> None:
    """A loader worker leaves Ctrl-C to the run: on a terminal SIGINT reaches the whole
    process group, and each worker would print its own KeyboardInterrupt traceback before
    the run's one line; the run stops the workers itself as it ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_start_method() -> str | None:
    """How loader workers start: the platform's way (None), except inside a joblib worker
    (``hydra/launcher=local_parallel``), whose start method ``loky`` cannot start them, where
    they fork as in any other run on Linux (spawn where fork is missing)."""
    if multiprocessing.get_start_method(allow_none=True) in (None, "fork", "spawn", "forkserver"):
        return None
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class EpochSeededSampler(DistributedSampler):
    """Shuffles with a generator seeded by (seed, epoch) and gives every place of the epoch
    its own augmentation seed (read by ``SeededSamples``): an epoch's order and its random
    crops and flips are a function of (seed, epoch) alone, whichever worker loads an image
    and whether the run was resumed.

    Under DDP each of ``num_replicas`` ranks takes every ``num_replicas``-th place of the one
    shared order (padded, as torch's DistributedSampler, to a multiple of the ranks). Being a
    DistributedSampler, Lightning keeps it instead of putting its own in its place, which
    would hand the dataset bare indices.

    Lightning calls ``set_epoch`` at the start of every epoch, but builds a fit's first
    loader iterator, whose workers fetch ahead, before that call: ``epoch`` is the epoch the
    fit starts at (a resumed run's, from its checkpoint).
    """

    def __init__(
        self,
        data_source: Dataset,
        seed: int,
        epoch: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, seed=seed)
        self.set_epoch(epoch)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        pad = self.total_size - len(order)  # every rank takes as many, as torch's sampler
        order += (order * math.ceil(pad / len(order)))[:pad] if pad else []
        base = (self.seed * 100_003 + self.epoch) * 1_000_003
        for place in range(self.rank, self.total_size, self.num_replicas):
            yield order[place], (base + place) % (1 << 63)


class SeededSamples(Dataset):
    """``dataset`` read by (index, seed) keys: each item's random transforms are drawn from
    its own seed, the reader's random state is left as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def files_key(paths: list[str]) -> str:
    """Digest of every file's path, size and modification time (a dangling link: none), so
    a file replaced by one of the same size still changes it."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def undecodable_message(name: str, bad: list[str]) -> str:
    """What verification and a failed decode during training both say."""
    listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return (
        f"dataset {name!r}: {len(bad)} image(s) cannot be decoded: {listed}. "
        "Re-prepare the dataset, or pass skip_bad_images=true to train without them"
    )


def not_regular_message(name: str, path: str) -> str:
    """A FIFO, socket or device among the images: opening it would wait forever."""
    return (
        f"dataset {name!r}: {path} is not a regular file (a FIFO, socket or device), and "
        "reading it would hang; remove it from the dataset folder"
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit greyscale (mode I;16, and I holding 16-bit values)
    is scaled to 8 bits first: ``convert("RGB")`` clips it, turning most pixels white."""
    if image.mode.startswith("I;16") or (image.mode == "I" and image.getextrema()[1] > 255):
        values = np.asarray(image, dtype=np.float64).clip(0, 65535) / 257.0
        image = Image.fromarray(np.rint(values).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_rgb(path: str, dataset_name: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (``to_rgb``): the one loader of the image
    datamodules. A file that is not a regular one, or fails to decode, is a UserError
    naming it, as verification would."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(not_regular_message(dataset_name, path))
        with open(path, "rb") as fh:
            return to_rgb(Image.open(fh))
    except UserError:
        raise
    except Exception:
        raise UserError(undecodable_message(dataset_name, [path])) from None


def not_regular(entry: os.DirEntry) -> bool:
    """An image-named entry that exists but is neither a file nor a folder (a dangling
    link is left to decoding, which names it)."""
    named = has_file_allowed_extension(entry.name, IMG_EXTENSIONS)
    return named and not entry.is_file() and not entry.is_dir() and os.path.exists(entry.path)


def check_image_tree(folder: Path, name: str) -> None:
    """What ImageFolder would walk into under ``folder`` (class folders may be links) holds
    no link back into the dataset or above it (a link to ``train/`` inside ``train/cat``
    would label every class's images cat too) and no image-named FIFO, socket or device."""
    top = Path(os.path.realpath(folder))
    with os.scandir(folder) as entries:
        stack = [entry.path for entry in entries if entry.is_dir()]
    followed: set[Path] = set()  # a second link to one folder would count its images twice
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_symlink() and entry.is_dir():
                    target = Path(os.path.realpath(entry.path))
                    if (
                        target.is_relative_to(top)
                        or top.is_relative_to(target)
                        or target in followed
                    ):
                        raise UserError(
                            f"dataset {name!r}: {entry.path} links to {target}, which is "
                            "inside the dataset, above it or linked already: its images would "
                            "count twice or as this class too; remove the link (copy in the "
                            "images it should add)"
                        )
                    followed.add(target)
                    stack.append(entry.path)
                elif not_regular(entry):
                    raise UserError(not_regular_message(name, entry.path))


def find_undecodable(paths: list[str], stamp: Path) -> list[str]:
    """Paths among ``paths`` that PIL cannot decode; a stamp file caches a clean result."""
    key = files_key(paths)
    if stamp.exists() and stamp.read_text() == key:
        return []
    bad = []
    checking = f"checking images of {stamp.parent.name}"
    for path in tqdm(paths, desc=checking, mininterval=2, disable=None):  # bars on a terminal
        try:
            with Image.open(path) as image:
                image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads it all
                image.load()
        except Exception:
            bad.append(path)
    if not bad:
        with contextlib.suppress(OSError):  # a read-only dataset folder: check again next time
            stamp.write_text(key)
    return bad


class SplitDataModule(pl.LightningDataModule):
    """Loaders over ``train_set``, ``val_set`` and ``test_set``, which a subclass's setup makes.

    Training batches are shuffled by an epoch-seeded sampler, so a resumed run sees the
    same order as an uninterrupted one.
    """

    def __init__(self, batch_size: int, num_workers: int, protocol: str, seed: int) -> None:
        super().__init__()
        check_integer("num_workers", num_workers, 0)
        check_choice("protocol", protocol, PROTOCOLS)
        self.batch_size = check_integer("batch_size", batch_size)
        self.num_workers = num_workers
        self.protocol = protocol
        self.seed = seed
        self.class_names: list[str] = []
        self.val_set = None  # None: nothing to select on (protocol=final), the last epoch is kept
        self.test_set = None  # None: no labelled test split (the predictions go to a server)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        """Shuffled (train) data is read with a seed per sample, from the epoch the fit
        starts at (EpochSeededSampler)."""
        sampler, trainer = None, self.trainer
        if shuffle:  # a resumed fit starts at its epochs done so far; DDP: one share a rank
            sampler = EpochSeededSampler(
                dataset,
                self.seed,
                epoch=trainer.fit_loop.epoch_progress.current.processed if trainer else 0,
                num_replicas=trainer.world_size if trainer else 1,
                rank=trainer.global_rank if trainer else 0,
            )
        return DataLoader(
            SeededSamples(dataset) if shuffle else dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_start_method() if self.num_workers > 0 else None,
            worker_init_fn=ignore_interrupts if self.num_workers > 0 else None,
        )

    def check(self) -> None:
        """Fail early, with the command that fixes it, when the data is not usable (cheap:
        no image is decoded; ``setup`` verifies the images)."""

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class ImageFolderDataModule(SplitDataModule):
    """Train/val/test loaders over ``root/train`` and ``root/test``.

    protocol='clean' carves a seeded validation split out of train for model selection;
    protocol='faithful' validates on the test split, as the official Piggyback code did;
    protocol='final' trains on the whole train split and validates on nothing.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        transforms: Mapping,
        batch_size: int = 32,
        num_workers: int = 2,
        protocol: str = "clean",
        val_fraction: float = 0.1,
        seed: int = 0,
        prepare_hint: str = "",
        name: str = "",
        verify_images: bool = True,
        skip_bad_images: bool = False,
        normalisation: Mapping | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, protocol, seed)
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"val_fraction must be between 0 and 1, exclusive (got {val_fraction})")
        self.root = Path(root)
        self.name = name or self.root.name
        self.num_classes = num_classes
        self.train_tf, self.test_tf = build_transforms(transforms, normalisation)
        self.val_fraction = val_fraction
        self.prepare_hint = prepare_hint
        self.verify_images = verify_images
        self.skip_bad_images = skip_bad_images
        self.skipped_images: list[str] = []

    def check(self) -> None:
        """Fail early, with the command that fixes it, when the folder is not usable."""
        fix = f"; prepare it with: {self.prepare_hint}" if self.prepare_hint else ""
        found = {}
        for split in ("train", "test"):
            folder = self.root / split
            if not folder.is_dir():
                raise UserError(f"dataset {self.name!r}: folder {folder} not found{fix}")
            classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
            if not classes:
                raise UserError(f"dataset {self.name!r}: {folder} has no class folders{fix}")
            if len(classes) != self.num_classes:
                raise UserError(
                    f"dataset {self.name!r}: {folder} has {len(classes)} class folders, "
                    f"expected {self.num_classes}{fix}"
                )
            found[split] = classes
        if found["train"] != found["test"]:  # label i must name the same class in both
            only = sorted(set(found["train"]) ^ set(found["test"]))
            raise UserError(
                f"dataset {self.name!r}: the class folders of {self.root / 'train'} and "
                f"{self.root / 'test'} differ ({', '.join(only[:5])} in only one of them); "
                f"both splits need the same classes{fix}"
            )

    def _load(self, path: str) -> Image.Image:
        """ImageFolder's loader (``load_rgb``), naming the dataset in its errors."""
        return load_rgb(path, self.name)

    def _folder(self, split: str, transform: Callable) -> ImageFolder:
        try:
            check_image_tree(self.root / split, self.name)
            return ImageFolder(str(self.root / split), transform=transform, loader=self._load)
        except (FileNotFoundError, OSError) as err:
            raise UserError(f"dataset {self.name!r}: {err}") from None

    def _checked_folder(self, split: str, transform: Callable) -> ImageFolder:
        """An ImageFolder whose images all decode (or, with skip_bad_images, without the bad)."""
        folder = self._folder(split, transform)
        if not self.verify_images:
            return folder
        paths = [path for path, _ in folder.samples]
        bad = find_undecodable(paths, self.root / f".verified_{split}")
        if bad and not self.skip_bad_images:
            raise UserError(undecodable_message(self.name, bad))
        if bad:
            keep = [s for s in folder.samples if s[0] not in set(bad)]
            folder.samples = folder.imgs = keep
            folder.targets = [t for _, t in keep]
            self.skipped_images += bad
        return folder

    def setup(self, stage: str | None = None) -> None:
        """Builds every split once; ``stage="test"`` (scoring only) never decodes train."""
        if self.class_names:
            return
        self.check()
        folder = self._folder if stage == "test" else self._checked_folder
        train_full = folder("train", self.train_tf)
        self.test_set = self._checked_folder("test", self.test_tf)
        self.class_names = list(train_full.classes)
        if self.protocol != "clean":
            self.train_set = train_full
            self.val_set = self.test_set if self.protocol == "faithful" else None
            return
        n_val = max(1, round(len(train_full) * self.val_fraction))
        if n_val >= len(train_full):
            raise UserError(
                f"dataset {self.name!r}: val_fraction={self.val_fraction} holds out {n_val} of "
                f"its {len(train_full)} training images, leaving none to train on; lower "
                "val_fraction (or use protocol=faithful)"
            )
        order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = order[:n_val].tolist(), order[n_val:].tolist()
        self.train_set = Subset(train_full, train_idx)
        val_view = self._folder("train", self.test_tf)
        val_view.samples = val_view.imgs = train_full.samples
        val_view.targets = train_full.targets
        self.val_set = Subset(val_view, val_idx)


class MiniTaskDataModule(ImageFolderDataModule):
    """A mini benchmark task: its ImageFolder tree is written under ``data_dir`` on first use."""

    def __init__(self, data_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir

    def check(self) -> None:
        from piggyback_lab.data.mini import prepare_mini_task

        try:
            prepare_mini_task(self.name, self.data_dir)
        except OSError as err:  # a read-only data folder, a full disk
            raise UserError(
                f"dataset {self.name!r}: cannot write it under {self.data_dir} "
                f"({err.strerror or err}); pass paths.data_dir=<a writable folder>"
            ) from None
        super().check()

    def setup(self, stage: str | None = None) -> None:
        self.check()
        super().setup(stage)
