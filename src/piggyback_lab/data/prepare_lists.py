"""Check a split-file benchmark as a run reads it, then install it under ``--out``.

VTAB-1k (NOAH's export) and FGVC (an official folder plus VPT's split files) arrive
pre-split: preparing them copies nothing the split files do not name. Each task folder is
checked with every check a run makes (the split files' sizes, label ranges, listed images
present) and every listed image is decoded; only then are the split files and the images
they list hard-linked (copied across file systems) into ``<out>/<subdir>/<folder>``, through
a temporary folder renamed into place, so a killed preparation leaves nothing under the
final name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from piggyback_lab.data.datamodule import find_undecodable, undecodable_message
from piggyback_lab.data.splitlists import SPLIT_FILES, SplitListDataModule
from piggyback_lab.utils.atomic import atomic_dir, atomic_write_json, remove_leftovers
from piggyback_lab.utils.errors import UserError

MANIFEST = "prepared.json"
# Folder names the anchors' copies use for the same VTAB task (V-PETL: cifar100; NOAH's
# training scripts: cifar100, oxford_pet), beside the names NOAH's export writes.
FOLDER_ALIASES = {"cifar": ("cifar100",), "oxford_iiit_pet": ("oxford_pet",)}


def find_task_folder(source: Path, folder: str) -> Path | None:
    """``source/<folder>`` under its export name or an alias; ``source`` itself when it is
    the task folder."""
    for name in (folder, *FOLDER_ALIASES.get(folder, ())):
        if (source / name).is_dir():
            return source / name
        if source.name == name:
            return source
    return None


def listed_files(module: SplitListDataModule) -> list[Path]:
    """The split files and every image they list, each once, relative to the task root."""
    splits = module.read_splits()
    names = [f for f in SPLIT_FILES[module.fmt].values() if f]
    images = sorted({path for samples in splits.values() for path, _ in samples.items})
    return [Path(n) for n in names] + [Path(p).relative_to(module.root) for p in images]


def verify_all(module: SplitListDataModule, scratch: Path) -> int:
    """Every run-time check, then every listed image decoded; returns the image count."""
    module.check()
    images = sorted({p for s in module.read_splits().values() for p, _ in s.items})
    bad = find_undecodable(images, scratch / ".verified")
    if bad:
        raise UserError(undecodable_message(module.name, bad))
    return len(images)


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:  # another file system, or links refused
        shutil.copy2(source, dest)


def install(module: SplitListDataModule, dest: Path, counts: dict[str, int]) -> Path:
    """The checked task at ``dest`` (replacing an older copy only once complete)."""
    if dest.resolve() == module.root.resolve():  # checked in place: only the manifest
        atomic_write_json(dest / MANIFEST, {"dataset": module.name, "counts": counts})
        return dest
    remove_leftovers(dest)
    with atomic_dir(dest) as tmp:
        for relative in listed_files(module):
            _link_or_copy(module.root / relative, tmp / relative)
        (tmp / MANIFEST).write_text(json.dumps({"dataset": module.name, "counts": counts}))
    return dest


def prepare_split_task(module: SplitListDataModule, dest: Path, scratch: Path) -> dict[str, int]:
    """Check ``module``'s folder and install it at ``dest``; returns each split's size."""
    verify_all(module, scratch)
    counts = {role: len(s.items) for role, s in module.read_splits().items()}
    install(module, dest, counts)
    return counts
