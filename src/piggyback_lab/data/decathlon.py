"""Visual Decathlon data: the devkit's COCO-style JSONs, the extracted images, the pipelines.

Layout (``root`` is the devkit's ``decathlon-1.0`` folder)::

    root/annotations/<domain>_{train,val,test_stripped}.json   (devkit)
    root/annotations/<domain>_test.json                        (labelled test, optional)
    root/data/<domain>/...                                     (JSON file_name is relative to root)

Category ids are ``d * 10**7 + k`` (k = 1..K, d = the domain's alphabetical rank); the
0-based label is ``category_id - d * 10**7 - 1``. Image ids are read from the JSONs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision import transforms as T

from piggyback_lab.data.datamodule import SplitDataModule, find_undecodable, undecodable_message
from piggyback_lab.utils.errors import UserError

DOMAINS = (
    "aircraft",
    "cifar100",
    "daimlerpedcls",
    "dtd",
    "gtsrb",
    "imagenet12",
    "omniglot",
    "svhn",
    "ucf101",
    "vgg-flowers",
)
CATEGORY_BASE = 10**7
SPLITS = ("train", "val", "test", "test_stripped")
GET_DATA = (
    "download decathlon-1.0-devkit.tar.gz and decathlon-1.0-data.tar.gz from "
    "www.robots.ox.ac.uk/~vgg/share/, extract the devkit, extract the data archive inside "
    "decathlon-1.0/data/ and then each <domain>.tar there"
)
STATS_SCRIPT = "python scripts/decathlon_stats.py --root {root} --out {out} --domains {domain}"


def domain_index(domain: str) -> int:
    """d of the category ids: the domain's 1-based alphabetical rank."""
    if domain not in DOMAINS:
        raise UserError(f"unknown decathlon domain {domain!r}; choose one of: {', '.join(DOMAINS)}")
    return DOMAINS.index(domain) + 1


def category_id(domain: str, label: int) -> int:
    return domain_index(domain) * CATEGORY_BASE + label + 1


def annotation_path(root: str | Path, domain: str, split: str) -> Path:
    domain_index(domain)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(root) / "annotations" / f"{domain}_{split}.json"


@dataclass
class Split:
    """One domain's split as listed by its JSON: image ids, files and (if any) labels."""

    domain: str
    split: str
    path: Path
    image_ids: list[int]
    files: list[str]
    labels: list[int] | None
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_split(root: str | Path, domain: str, split: str, require_labels: bool = False) -> Split:
    """Parse ``<domain>_<split>.json``; a missing or malformed file is a UserError."""
    path = annotation_path(root, domain, split)
    if not path.is_file():
        hint = (
            "put the labelled test JSONs (labels_test.zip of srebuffi/residual_adapters) in "
            f"{path.parent} as <domain>_test.json"
            if split == "test"
            else GET_DATA
        )
        raise UserError(f"decathlon annotation file {path} not found; {hint}")
    try:
        data = json.loads(path.read_text())
        images, categories = data["images"], data["categories"]
        image_ids = [int(im["id"]) for im in images]
        files = [str(im["file_name"]) for im in images]
        cats = sorted((int(c["id"]), str(c["name"])) for c in categories)
        anns = {int(a["image_id"]): int(a["category_id"]) for a in data.get("annotations") or []}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{path} is not a decathlon annotation file ({type(err).__name__}: {err}); "
            "re-extract the devkit"
        ) from None
    base = domain_index(domain) * CATEGORY_BASE
    expected = list(range(base + 1, base + len(cats) + 1))
    if [c for c, _ in cats] != expected:
        raise UserError(
            f"{path}: category ids are not {base + 1}..{base + len(cats)} as the devkit "
            f"defines for {domain!r}; is this file from another domain?"
        )
    labels = None
    if anns:
        unlabelled = [i for i in image_ids if i not in anns]
        if unlabelled:
            raise UserError(
                f"{path}: {len(unlabelled)} of {len(image_ids)} images have no annotation "
                f"(e.g. ids {unlabelled[:3]}); the file is incomplete"
            )
        labels = [anns[i] - base - 1 for i in image_ids]
        if any(not 0 <= y < len(cats) for y in labels):
            raise UserError(f"{path}: an annotation uses a category id outside its categories")
    elif require_labels:
        raise UserError(
            f"decathlon domain {domain!r}, split {split!r}: {path} has no labels "
            "(annotations are empty); labels are needed to train or score on it"
        )
    return Split(domain, split, path, image_ids, files, labels, [n for _, n in cats])


def missing_files(root: str | Path, split: Split) -> list[str]:
    root = Path(root)
    return [f for f in split.files if not (root / f).is_file()]


def check_files(root: str | Path, split: Split) -> None:
    """Every image the JSON lists must exist under ``root``; name a few that do not."""
    missing = missing_files(root, split)
    if missing:
        raise UserError(
            f"{len(missing)} of {len(split.files)} images listed in {split.path} are missing "
            f"under {root} (e.g. {', '.join(missing[:3])}); {GET_DATA}"
        )


def labelled_test_available(root: str | Path, domain: str) -> bool:
    return annotation_path(root, domain, "test").is_file()


def check_tree(
    root: str | Path, domains: Sequence[str] = DOMAINS, counts: Mapping[str, Mapping] | None = None
) -> list[str]:
    """Check the extracted tree against the JSONs (and the published split sizes).

    Returns one summary line per domain; raises UserError at the first problem.
    """
    lines = []
    for domain in domains:
        sizes = {}
        for split in ("train", "val", "test_stripped"):
            s = read_split(root, domain, split, require_labels=split != "test_stripped")
            expected = (counts or {}).get(domain, {}).get(split.replace("_stripped", ""))
            if expected is not None and len(s.files) != int(expected):
                raise UserError(
                    f"{s.path} lists {len(s.files)} images, the published {domain} {split} "
                    f"split has {expected}; re-extract the devkit"
                )
            check_files(root, s)
            sizes[split] = len(s.files)
        labelled = "labelled test" if labelled_test_available(root, domain) else "no test labels"
        lines.append(
            f"{domain}: train {sizes['train']}, val {sizes['val']}, "
            f"test {sizes['test_stripped']} ({labelled}) ok"
        )
    return lines


class DecathlonDataset(Dataset):
    """Images of one split; the target is the 0-based label, or -1 for an unlabelled split."""

    def __init__(self, root: str | Path, split: Split, transform: T.Compose) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.root / self.split.files[index]) as img:
            x = self.transform(img.convert("RGB"))
        return x, self.split.labels[index] if self.split.labels is not None else -1


def read_stats(path: str | Path, domain: str, root: str | Path = "<decathlon-1.0>") -> dict:
    """The domain's per-channel mean/std from the stats file written by decathlon_stats.py."""
    path = Path(path)
    fix = STATS_SCRIPT.format(root=root, out=path, domain=domain)
    if not path.is_file():
        raise UserError(f"decathlon mean/std file {path} not found; compute it with: {fix}")
    try:
        entry = json.loads(path.read_text())["domains"][domain]
        mean, std = [float(v) for v in entry["mean"]], [float(v) for v in entry["std"]]
    except KeyError:
        raise UserError(f"{path} has no mean/std for {domain!r}; compute it with: {fix}") from None
    except (ValueError, TypeError) as err:
        raise UserError(f"{path} is malformed ({err}); recompute it with: {fix}") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(f"{path}: {domain} needs 3 means and 3 positive stds; recompute: {fix}")
    return {"mean": mean, "std": std}


def decathlon_transforms(
    cfg: Mapping, mean: Sequence[float], std: Sequence[float]
) -> tuple[T.Compose, T.Compose]:
    """(train, test) as published: Resize(resize), then a crop of ``size``.

    Train crops at random (``random_crop``) and flips (``flip``); test centre-crops.
    gtsrb, omniglot, svhn use Resize 72 + CenterCrop 72 for both, with no flip.
    """
    resize, size = int(cfg["resize"]), int(cfg["size"])
    normalize = [T.ToTensor(), T.Normalize(list(mean), list(std))]
    crop = T.RandomCrop(size) if cfg.get("random_crop", True) else T.CenterCrop(size)
    flip = [T.RandomHorizontalFlip()] if cfg.get("flip", True) else []
    train = T.Compose([T.Resize(resize), crop, *flip, *normalize])
    test = T.Compose([T.Resize(resize), T.CenterCrop(size), *normalize])
    return train, test


def domain_transforms(
    transforms: Mapping,
    stats: str | Path,
    domain: str,
    root: str | Path,
    domain_stats: bool = True,
    normalisation: Mapping | None = None,
) -> tuple[T.Compose, T.Compose]:
    """A domain's transforms. mean/std: the config's; else the domain's own from the stats
    file (``domain_stats``, as published); else ``normalisation``, the backbone's (imagenet12,
    the data the network was pretrained on)."""
    tf = dict(transforms)
    if tf.get("mean") is None or tf.get("std") is None:
        tf.update(read_stats(stats, domain, root) if domain_stats else normalisation)
    return decathlon_transforms(tf, tf["mean"], tf["std"])


class DecathlonDataModule(SplitDataModule):
    """One decathlon domain: train on its train split, select on val.

    The test loader uses the labelled test JSON when present (``eval_split`` = "test"),
    else the val split (``eval_split`` = "val"): the devkit's test labels are withheld,
    test predictions go to the evaluation server (src.decathlon_submit).
    protocol='faithful' selects on the labelled test split, as the official Piggyback code.
    protocol='final' trains on train+val and keeps the last epoch, as published for the
    server's submissions; it is tested only on a labelled test split (``eval_split`` =
    "none" without one).
    """

    def __init__(
        self,
        root: str | Path,
        domain: str,
        num_classes: int,
        transforms: Mapping,
        stats: str | Path,
        batch_size: int = 32,
        num_workers: int = 2,
        protocol: str = "clean",
        name: str = "",
        prepare_hint: str = "",
        seed: int = 0,
        domain_stats: bool = True,
        normalisation: Mapping | None = None,
        verify_images: bool = True,
        skip_bad_images: bool = False,
    ) -> None:
        """``domain_stats``: normalise with the domain's own mean/std (the stats file), as
        published; false: with ``normalisation``, the backbone's (imagenet12, its own data).
        ``verify_images``/``skip_bad_images``: as for ImageFolder datasets."""
        super().__init__(batch_size, num_workers, protocol, seed)
        self.verify_images = verify_images
        self.skip_bad_images = skip_bad_images
        self.skipped_images: list[str] = []
        domain_index(domain)
        self.root = Path(root)
        self.domain = domain
        self.name = name or f"decathlon_{domain}"
        self.num_classes = num_classes
        self.train_tf, self.test_tf = domain_transforms(
            transforms, stats, domain, root, domain_stats, normalisation
        )
        self.prepare_hint = prepare_hint
        self.eval_split = ""

    def _split(self, split: str) -> Split:
        s = read_split(self.root, self.domain, split, require_labels=True)
        if s.num_classes != self.num_classes:
            raise UserError(
                f"dataset {self.name!r}: {s.path} has {s.num_classes} categories, the config "
                f"says num_classes={self.num_classes}"
            )
        check_files(self.root, s)
        return s

    def _decodable(self, split: Split) -> Split:
        """``split`` once every image decodes, or (skip_bad_images) without those that do
        not; the check is cached as for ImageFolder datasets."""
        if not self.verify_images:
            return split
        paths = [str(self.root / f) for f in split.files]
        bad = set(find_undecodable(paths, self.root / f".verified_{self.domain}_{split.split}"))
        if bad and not self.skip_bad_images:
            raise UserError(undecodable_message(self.name, sorted(bad)))
        if not bad:
            return split
        self.skipped_images += sorted(bad)
        keep = [i for i, path in enumerate(paths) if path not in bad]
        return replace(
            split,
            image_ids=[split.image_ids[i] for i in keep],
            files=[split.files[i] for i in keep],
            labels=None if split.labels is None else [split.labels[i] for i in keep],
        )

    def check(self) -> None:
        if not self.root.is_dir():
            fix = f"; prepare it with: {self.prepare_hint}" if self.prepare_hint else ""
            raise UserError(f"dataset {self.name!r}: folder {self.root} not found{fix}")
        self._split("train"), self._split("val")

    def setup(self, stage: str | None = None) -> None:
        if self.class_names:
            return
        self.check()
        train, val = (self._decodable(self._split(s)) for s in ("train", "val"))
        has_test = labelled_test_available(self.root, self.domain)
        if self.protocol == "faithful" and not has_test:
            raise UserError(
                f"protocol=faithful selects on the labelled test split, and "
                f"{annotation_path(self.root, self.domain, 'test')} is missing; "
                "use protocol=clean (selects on val)"
            )
        self.class_names = train.class_names
        val_set = DecathlonDataset(self.root, val, self.test_tf)
        if has_test:
            test = self._decodable(self._split("test"))
            self.test_set = DecathlonDataset(self.root, test, self.test_tf)
            self.eval_split = "test"
        elif self.protocol != "final":  # val doubles as the test split
            self.test_set, self.eval_split = val_set, "val"
        else:
            self.eval_split = "none"
        self.train_set = DecathlonDataset(self.root, train, self.train_tf)
        if self.protocol == "final":
            train_val = DecathlonDataset(self.root, val, self.train_tf)
            self.train_set = ConcatDataset([self.train_set, train_val])
        else:
            self.val_set = self.test_set if self.protocol == "faithful" else val_set


STATS_FORMAT = "piggyback-lab-decathlon-stats/1"


def compute_stats(
    root: str | Path, domain: str, max_images: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Per-channel mean/std of the domain's train images, pixels scaled to [0, 1].

    ``max_images`` draws a seeded random subset (e.g. for imagenet12's 1.2M images).
    """
    split = read_split(root, domain, "train")
    check_files(root, split)
    files = split.files
    if max_images is not None and max_images < len(files):
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))
        files = [files[i] for i in order[:max_images].tolist()]
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    to_tensor = T.ToTensor()
    for name in files:
        with Image.open(Path(root) / name) as img:
            x = to_tensor(img.convert("RGB")).to(torch.float64).flatten(1)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
        pixels += x.shape[1]
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(0).sqrt()
    return {
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "images": len(files),
        "split": "train",
    }


def stored_stats(path: str | Path) -> dict[str, Any]:
    """The per-domain entries of a stats file ({} when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["domains"]
    except (ValueError, KeyError) as err:
        raise UserError(f"{path} is malformed ({err}); delete it and recompute") from None


def update_stats_file(path: str | Path, stats: Mapping[str, Mapping[str, Any]]) -> Path:
    """Merge per-domain stats into the stats file (other domains are kept)."""
    from piggyback_lab.utils.atomic import atomic_write_json

    domains = {**stored_stats(path), **stats}
    atomic_write_json(path, {"format": STATS_FORMAT, "domains": domains})
    return Path(path)


def write_stats(
    root: str | Path,
    out: str | Path,
    domains: Sequence[str],
    max_images: int | None = None,
    seed: int = 0,
    recompute: bool = True,
) -> dict[str, dict[str, Any]]:
    """Compute the domains' mean/std (only those not yet in ``out`` unless ``recompute``)
    and merge them into ``out``; returns what was computed."""
    stored = {} if recompute else stored_stats(out)
    stats = {d: compute_stats(root, d, max_images, seed) for d in domains if d not in stored}
    if stats:
        update_stats_file(out, stats)
    return stats
