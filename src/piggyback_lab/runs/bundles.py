"""Bundles: a backbone reference plus several task files as one folder that can be re-checked.

A bundle is ``BUNDLE/manifest.json`` and ``BUNDLE/tasks/<name>.safetensors``. The backbone
itself is not copied (it is the large shared part); the manifest names it (weights file or
torchvision weights name, with the file's SHA-256) and its fingerprint. Per task the manifest
lists dataset, classes, accuracy (from the run records when found), bits per weight (as
stored, entropy-coded, and the binary entropy bound: the method's ``storage``), fingerprint
and the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from piggyback_lab.methods import method_of
from piggyback_lab.methods.multitask import MultiTaskModel, task_paths
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.runs.config import compose
from piggyback_lab.runs.records import read_records
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.atomic import atomic_dir, atomic_write_json
from piggyback_lab.utils.errors import UserError

BUNDLE_FORMAT = "piggyback-lab-bundle/1"
MANIFEST = "manifest.json"
CHECKED_META = ("kind", "dataset", "backbone", "fingerprint")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 over the manifest's own content (its ``sha256`` left out): an edited
    accuracy or bits-per-weight fails verification like an edited task file."""
    content = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


STORAGE_KEYS = ("bits_per_weight", "compressed_bits_per_weight", "entropy_bits_per_weight")


def default_weights(backbone: str) -> str | None:
    """The weights reference conf/backbone/<name>.yaml gives (what training used by default)."""
    weights = compose([f"backbone={backbone}"]).backbone.weights
    return str(weights) if weights else None


def _accuracy(records: list[dict], run_id: str | None) -> dict | None:
    """Test accuracy of a task's run: its training record, else an eval record of it."""
    for source, key in (("train", "run_id"), ("eval", "task_run_id")):
        for r in records:
            if (
                run_id
                and r.get(key) == run_id
                and (r.get("source") == "eval") == (source == "eval")
            ):
                return {"top1": r.get("top1"), "top5": r.get("top5"), "source": source,
                        "record": Path(r["record_path"]).name}  # fmt: skip
    return None


def export_bundle(
    out: str | Path,
    tasks: str | Sequence[str | Path],
    weights: str | None = None,
    records_dir: str | Path | None = "results",
) -> dict[str, Any]:
    """Write ``out`` (atomically): the task files and a manifest; returns the manifest. An
    existing ``out`` is replaced only when it is a bundle: a folder of anything else is
    refused, never deleted."""
    out = Path(out)
    empty = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty and not (out / MANIFEST).is_file():
        raise UserError(
            f"{out} exists and is not a bundle (no {MANIFEST}); a bundle replaces its folder "
            "whole, so choose a new --out"
        )
    files = [read_task(p) for p in task_paths(tasks)]
    backbone, fingerprint = _one_backbone(files)
    weights = weights or default_weights(backbone)
    head = files[0].meta.get("classifier")
    host = MultiTaskModel(backbone, weights, classifier=head)  # proves the weights fit
    for tf in files:
        host.add_task(tf)
    weights_file = Path(weights) if weights and Path(weights).is_file() else None
    records = read_records(records_dir) if records_dir and Path(records_dir).is_dir() else []
    manifest = {
        "format": BUNDLE_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": {
            "name": backbone,
            "weights": weights,
            "weights_sha256": sha256_file(weights_file) if weights_file else None,
            "fingerprint": fingerprint,
        },
        "tasks": [_entry(tf, records) for tf in files],
    }
    manifest["sha256"] = manifest_digest(manifest)
    with atomic_dir(out) as tmp:
        (tmp / "tasks").mkdir()
        for tf in files:
            shutil.copyfile(tf.path, tmp / "tasks" / tf.path.name)
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def _one_backbone(files: list[TaskFile]) -> tuple[str, str]:
    """(backbone, fingerprint) that every task shares; distinct names, one task each."""
    names = [tf.path.stem for tf in files]
    if len(set(names)) != len(names):
        raise UserError(f"two task files share a name: {sorted(names)}; rename one")
    shared = [tf.path for tf in files if method_of(tf).shared_network]
    if shared:
        raise UserError(
            f"{shared[0]} holds its own network (a {method_of(read_task(shared[0])).name} "
            "state); a bundle shares one backbone, so bundle task files made for it"
        )
    backbones = {(tf.meta["backbone"], tf.meta["fingerprint"]) for tf in files}
    if len(backbones) != 1:
        listed = ", ".join(f"{b} {f[:12]}" for b, f in sorted(backbones))
        raise UserError(
            f"the tasks were trained on different backbones ({listed}); bundle each apart"
        )
    return next(iter(backbones))


def _entry(tf: TaskFile, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A task's line in the manifest."""
    return {
        "name": tf.path.stem,
        "file": f"tasks/{tf.path.name}",
        "sha256": sha256_file(tf.path),
        "bytes": tf.path.stat().st_size,
        "kind": tf.kind,
        "dataset": tf.meta.get("dataset"),
        "num_classes": len(tf.class_names),
        "classes": tf.class_names,
        "run_id": tf.meta.get("run_id"),
        "accuracy": _accuracy(records, tf.meta.get("run_id")),
        "fingerprint": tf.meta["fingerprint"],
        **method_of(tf).storage(tf),
    }


def verify_bundle(folder: str | Path, weights: str | None = None) -> dict[str, Any]:
    """Re-check a bundle: file hashes, task digests, metadata, and the backbone fingerprint.

    The backbone is checked when ``weights`` is given or the manifest's reference is a file
    here (a torchvision weights name is not fetched). Every problem found is reported at once.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UserError(f"{path} is not a bundle manifest (format {found!r})")
    try:
        return _verify(folder, manifest, weights)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise UserError(
            f"{path} is not a well-formed bundle manifest ({type(err).__name__}: {err}); "
            "re-export the bundle"
        ) from None


def _verify(folder: Path, manifest: dict[str, Any], weights: str | None) -> dict[str, Any]:
    """Every problem of the bundle at once: the manifest's digest, each task, the weights."""
    bb = manifest["backbone"]
    problems = []
    if manifest.get("sha256") != manifest_digest(manifest):
        problems.append(f"{MANIFEST} was edited after export (its digest does not match)")
    for entry in manifest["tasks"]:
        problems += _task_problems(folder, entry, bb)
    reference = weights or bb["weights"]
    checked = bool(weights) or bool(reference and Path(reference).is_file())
    if checked:
        problems += _weights_problems(reference, None if weights else bb.get("weights_sha256"), bb)
    if problems:
        raise UserError(f"bundle {folder} failed verification:\n  " + "\n  ".join(problems))
    return {"tasks": len(manifest["tasks"]), "backbone_checked": checked, "manifest": manifest}


def _task_problems(folder: Path, entry: dict[str, Any], bb: dict[str, Any]) -> list[str]:
    """What is wrong with one task of the bundle against its manifest entry."""
    file = folder / entry["file"]
    if not file.is_file():
        return [f"{entry['file']} is missing"]
    if file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
        return [f"{entry['file']} differs from the manifest (size or SHA-256)"]
    try:
        tf = read_task(file)
    except UserError as err:
        return [str(err)]
    problems = []
    expected = {**entry, "backbone": bb["name"]}
    for key in CHECKED_META:
        if tf.meta.get(key) != expected[key]:
            problems.append(f"{entry['file']}: {key} is {tf.meta.get(key)!r}, manifest says "
                            f"{expected[key]!r}")  # fmt: skip
    if tf.class_names != entry["classes"]:
        problems.append(f"{entry['file']}: class names differ from the manifest")
    storage = method_of(tf).storage(tf)
    for key in STORAGE_KEYS:
        if key in storage and storage[key] != entry.get(key):
            problems.append(f"{entry['file']}: {key} is {storage[key]!r}, manifest says "
                            f"{entry.get(key)!r}")  # fmt: skip
    if entry["fingerprint"] != bb["fingerprint"]:
        problems.append(f"{entry['file']} was made for other backbone weights than the bundle's")
    return problems


def _weights_problems(reference: str, stored_sha: str | None, bb: dict[str, Any]) -> list[str]:
    """Whether the backbone weights are the bundle's: the file's SHA-256 when recorded,
    else the fingerprint of the network they build."""
    if stored_sha and sha256_file(Path(reference)) != stored_sha:
        return [f"backbone weights {reference} differ from the bundle's (SHA-256)"]
    actual = MultiTaskModel(bb["name"], reference).fingerprint
    if actual != bb["fingerprint"]:
        return [
            f"backbone weights {reference} have fingerprint {actual[:12]}, the bundle needs "
            f"{bb['fingerprint'][:12]}"
        ]
    return []
