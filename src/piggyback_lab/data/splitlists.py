"""Datasets named by split files, in the two formats today's yardstick ships.

- ``vtab``: a VTAB-1k task folder as NOAH's ``get_vtab1k.py`` exports it (read by V-PETL,
  SSF, GPS and PETL_Vision): the images and four lists, ``train800.txt``, ``val200.txt``,
  ``train800val200.txt`` and ``test.txt``, one ``<image path> <label>`` per line, paths
  relative to the task folder, labels 0-based.
- ``fgvc``: a dataset's official folder with VPT's split files ``train.json``, ``val.json``
  and ``test.json``, each ``{image path: class id}``, paths relative to the image folder
  (``image_dir``); class ids are mapped to 0..K-1 in sorted order, as VPT's
  ``JSONDataset`` does. The union of train and val is the final training set.

Protocols: ``clean`` trains on train and selects on val (VTAB: train800 / val200, the tuning
split); ``final`` trains on train+val, keeps the last epoch and tests once; ``faithful``
trains on train+val and selects on test, as the anchors' code reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from piggyback_lab.data.datamodule import (
    SplitDataModule,
    find_undecodable,
    load_rgb,
    undecodable_message,
)
from piggyback_lab.data.transforms import build_transforms
from piggyback_lab.utils.errors import UserError, check_choice

# The split each format stores under each role; None: the union of train and val.
SPLIT_FILES = {
    "vtab": {
        "train": "train800.txt",
        "val": "val200.txt",
        "trainval": "train800val200.txt",
        "test": "test.txt",
    },
    "fgvc": {"train": "train.json", "val": "val.json", "trainval": None, "test": "test.json"},
}
FORMATS = tuple(SPLIT_FILES)


@dataclass(frozen=True)
class Samples:
    """One split as read from its file: (image path, 0-based label) pairs."""

    file: Path
    items: list[tuple[str, int]]

    def labels(self) -> set[int]:
        return {label for _, label in self.items}


def _read_vtab_list(path: Path, root: Path) -> list[tuple[str, Any]]:
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        image, _, label = line.strip().rpartition(" ")
        if not image or not label.lstrip("-").isdigit():
            raise UserError(
                f"{path}:{number}: expected '<image path> <label>', got {line.strip()!r}"
            )
        items.append((str(root / image), int(label)))
    return items


def _read_fgvc_json(path: Path, root: Path) -> list[tuple[str, Any]]:
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-fetch VPT's split files") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
        raise UserError(f"{path}: expected {{image path: class id}} with integer class ids")
    return [(str(root / image), label) for image, label in mapping.items()]


READERS = {"vtab": _read_vtab_list, "fgvc": _read_fgvc_json}


def read_split_file(fmt: str, path: Path, image_root: Path) -> list[tuple[str, Any]]:
    """The (image path, label as stored) pairs of one split file."""
    check_choice("split file format", fmt, FORMATS)
    if not path.is_file():
        raise UserError(f"split file {path} not found")
    return READERS[fmt](path, image_root)


class ListImages(Dataset):
    """Images and labels from a list, read by the datamodules' one loader (8-bit RGB; a
    file that is not regular or fails to decode is named)."""

    def __init__(self, items: list[tuple[str, int]], transform: Any, name: str) -> None:
        self.samples = items
        self.targets = [label for _, label in items]
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path, self.name)), label


class SplitListDataModule(SplitDataModule):
    """Train/val/test loaders over split files (``fmt``: vtab or fgvc, see the module doc).

    ``split_sizes`` (optional) states how many images each role must hold (VTAB-1k: train
    800, val 200, trainval 1000), so a wrong export is refused before training.
    """

    def __init__(
        self,
        root: str | Path,
        fmt: str,
        num_classes: int,
        transforms: Mapping,
        image_dir: str = "",
        split_sizes: Mapping[str, int] | None = None,
        group: str = "",
        batch_size: int = 32,
        num_workers: int = 2,
        protocol: str = "clean",
        seed: int = 0,
        prepare_hint: str = "",
        name: str = "",
        verify_images: bool = True,
        skip_bad_images: bool = False,
        normalisation: Mapping | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, protocol, seed)
        check_choice("dataset.fmt", fmt, FORMATS)
        self.root = Path(root)
        self.fmt = fmt
        self.name = name or self.root.name
        self.group = group
        self.num_classes = num_classes
        self.image_root = self.root / image_dir
        self.split_sizes = dict(split_sizes or {})
        self.train_tf, self.test_tf = build_transforms(transforms, normalisation)
        self.prepare_hint = prepare_hint
        self.verify_images = verify_images
        self.skip_bad_images = skip_bad_images
        self.skipped_images: list[str] = []
        self._splits: dict[str, Samples] = {}

    def _fix(self) -> str:
        return f"; prepare it with: {self.prepare_hint}" if self.prepare_hint else ""

    def _stored(self, role: str) -> list[tuple[str, Any]]:
        file = SPLIT_FILES[self.fmt][role]
        path = self.root / file
        if not path.is_file():
            raise UserError(f"dataset {self.name!r}: split file {path} not found{self._fix()}")
        return read_split_file(self.fmt, path, self.image_root)

    def read_splits(self) -> dict[str, Samples]:
        """Every role's samples with 0-based labels, checked: sizes, label range, images
        present (cheap: nothing is decoded)."""
        if self._splits:
            return self._splits
        stored = {role: self._stored(role) for role, f in SPLIT_FILES[self.fmt].items() if f}
        if SPLIT_FILES[self.fmt]["trainval"] is None:
            stored["trainval"] = stored["train"] + stored["val"]
        relabel = self._relabelling(stored)
        splits = {
            role: Samples(self.root / (SPLIT_FILES[self.fmt][role] or "train+val"), [
                (path, relabel[label]) for path, label in items
            ])
            for role, items in stored.items()
        }  # fmt: skip
        for role, samples in splits.items():
            self._check_split(role, samples)
        self._splits = splits
        return splits

    def _relabelling(self, stored: dict[str, list[tuple[str, Any]]]) -> dict[Any, int]:
        """VTAB's labels are 0-based already; FGVC's class ids become 0..K-1 in sorted
        order of the ids train holds (VPT's ``_class_id_cont_id``)."""
        if self.fmt == "vtab":
            labels = {label for items in stored.values() for _, label in items}
            return {label: label for label in labels}
        ids = sorted({label for _, label in stored["train"]})
        if len(ids) != self.num_classes:
            raise UserError(
                f"dataset {self.name!r}: {self.root / 'train.json'} holds {len(ids)} class ids, "
                f"the config says num_classes={self.num_classes}{self._fix()}"
            )
        mapping = {class_id: index for index, class_id in enumerate(ids)}
        for role in ("val", "test"):
            unknown = {label for _, label in stored[role]} - set(mapping)
            if unknown:
                raise UserError(
                    f"dataset {self.name!r}: {role}.json has class ids train.json lacks "
                    f"({', '.join(map(str, sorted(unknown)[:5]))}){self._fix()}"
                )
        return mapping

    def _check_split(self, role: str, samples: Samples) -> None:
        expected = self.split_sizes.get(role)
        if expected is not None and len(samples.items) != expected:
            raise UserError(
                f"dataset {self.name!r}: {samples.file} lists {len(samples.items)} images, "
                f"expected {expected}{self._fix()}"
            )
        if not samples.items:
            raise UserError(f"dataset {self.name!r}: {samples.file} lists no images{self._fix()}")
        out_of_range = sorted(x for x in samples.labels() if not 0 <= x < self.num_classes)
        if out_of_range:
            raise UserError(
                f"dataset {self.name!r}: {samples.file} has label {out_of_range[0]} outside "
                f"0..{self.num_classes - 1} (num_classes={self.num_classes}){self._fix()}"
            )
        missing = [path for path, _ in samples.items if not Path(path).is_file()]  # FIFOs too
        if missing:
            raise UserError(
                f"dataset {self.name!r}: {len(missing)} image(s) listed in {samples.file} are "
                f"missing or not files, e.g. {missing[0]}{self._fix()}"
            )

    def check(self) -> None:
        """Fail early, with the command that fixes it, when the files are not usable."""
        if not self.root.is_dir():
            raise UserError(f"dataset {self.name!r}: folder {self.root} not found{self._fix()}")
        self.read_splits()

    def _images(self, role: str, transform: Any, verify: bool) -> ListImages:
        items = self.read_splits()[role].items
        if verify and self.verify_images:
            bad = find_undecodable([p for p, _ in items], self.root / f".verified_{role}")
            if bad and not self.skip_bad_images:
                raise UserError(undecodable_message(self.name, bad))
            items = [item for item in items if item[0] not in set(bad)]
            self.skipped_images += bad
        return ListImages(items, transform, self.name)

    def setup(self, stage: str | None = None) -> None:
        """Builds the protocol's splits once; ``stage="test"`` never decodes train."""
        if self.class_names:
            return
        self.check()
        fit = stage != "test"
        self.class_names = class_names(self.read_splits()["train"].items, self.num_classes)
        self.test_set = self._images("test", self.test_tf, verify=True)
        if self.protocol == "clean":
            self.train_set = self._images("train", self.train_tf, verify=fit)
            self.val_set = self._images("val", self.test_tf, verify=fit)
        else:
            self.train_set = self._images("trainval", self.train_tf, verify=fit)
            self.val_set = self.test_set if self.protocol == "faithful" else None


def class_names(items: list[tuple[str, int]], num_classes: int) -> list[str]:
    """Each label's name: the folder its images share where every class has one folder of
    its own (FGVC's official trees: ``001.Black_footed_Albatross``), else the label."""
    folders: dict[int, set[str]] = {}
    for path, label in items:
        folders.setdefault(label, set()).add(Path(path).parent.name)
    names = [
        next(iter(folders[k])) if len(folders.get(k, ())) == 1 else "" for k in range(num_classes)
    ]
    if all(names) and len(set(names)) == num_classes:
        return names
    return [str(k) for k in range(num_classes)]
