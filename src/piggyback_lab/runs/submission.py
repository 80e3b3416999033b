"""The Visual Decathlon server submission, from the recorded runs.

One ``results.json`` over the ten test sets: a list of {"image_id", "category_id"} with
image ids read from each domain's ``<domain>_test_stripped.json`` and
category_id = d * 10**7 + predicted index + 1. Each domain's prediction comes from one
trained run (its record and task file). Zip the file for the evaluation server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from piggyback_lab.data.decathlon import (
    DOMAINS,
    DecathlonDataset,
    Split,
    category_id,
    check_files,
    domain_transforms,
    read_split,
)
from piggyback_lab.methods import method_of
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.models import normalisation
from piggyback_lab.utils.atomic import atomic_write_bytes
from piggyback_lab.utils.errors import UserError


def require_domains(available: Mapping[str, Any], domains: Sequence[str]) -> None:
    missing = [d for d in domains if d not in available]
    if missing:
        raise UserError(
            f"the submission needs all {len(domains)} domains; nothing for: {', '.join(missing)} "
            "(train them with python -m src.train dataset=decathlon/<domain>)"
        )


def build_submission(
    predictions: Mapping[str, Mapping[int, int]],
    splits: Mapping[str, Split],
    domains: Sequence[str] = DOMAINS,
) -> list[dict[str, int]]:
    """Entries for every image of every domain's test split; refuses anything incomplete."""
    require_domains(predictions, domains)
    entries: list[dict[str, int]] = []
    seen: set[int] = set()
    for domain in domains:
        split, pred = splits[domain], predictions[domain]
        ids = set(split.image_ids)
        if set(pred) != ids:
            raise UserError(
                f"{domain}: predictions cover {len(set(pred) & ids)} of the {len(ids)} images "
                f"of {split.path} and {len(set(pred) - ids)} ids it does not list"
            )
        if seen & ids:
            raise UserError(f"{domain}: image ids of {split.path} repeat another domain's")
        seen |= ids
        for image_id in split.image_ids:
            index = int(pred[image_id])
            if not 0 <= index < split.num_classes:
                raise UserError(f"{domain}: predicted index {index} outside 0..{split.num_classes}")
            entries.append({"image_id": image_id, "category_id": category_id(domain, index)})
    return entries


def write_submission(path: str | Path, entries: list[dict[str, int]]) -> Path:
    path = Path(path)
    atomic_write_bytes(path, json.dumps(entries, separators=(",", ":")).encode())
    return path


def load_model(record: Mapping[str, Any]) -> torch.nn.Module:
    """The record's network with its task active, checked against the task's fingerprint.

    A file that holds its own network and several tasks (a PackNet state) gives the
    domain's view of it.
    """
    config = record["config"]
    name = config["backbone"]["name"]
    tf = read_task(record["task_file"])
    if method_of(tf).shared_network:
        host, task = MultiTaskModel.from_file(tf), record["dataset"]
    else:  # a task for a backbone: host it on the record's weights
        weights, head = config["backbone"]["weights"], tf.meta.get("classifier")
        host, task = MultiTaskModel(name, weights, [tf], classifier=head), tf.path.stem
    if task not in host.tasks:
        raise UserError(f"{tf.path} holds no task {task!r}")
    host.select(task)
    return host.model.eval()


@torch.no_grad()
def predict_test(
    record: Mapping[str, Any], device: str = "cpu", batch_size: int = 100, num_workers: int = 0
) -> tuple[Split, dict[int, int]]:
    """Predicted 0-based class per image id of the domain's test_stripped split."""
    ds = record["config"]["dataset"]
    split = read_split(ds["root"], ds["domain"], "test_stripped")
    check_files(ds["root"], split)
    _, test_tf = domain_transforms(
        ds["transforms"], ds["stats"], ds["domain"], ds["root"],
        ds.get("domain_stats", True), normalisation(record["backbone"]),
    )  # fmt: skip
    loader = DataLoader(
        DecathlonDataset(ds["root"], split, test_tf), batch_size=batch_size, num_workers=num_workers
    )
    model = load_model(record).to(device)
    preds: list[int] = []
    for x, _ in loader:
        preds += model(x.to(device)).argmax(1).tolist()
    return split, dict(zip(split.image_ids, preds, strict=True))


def select_records(
    records: Sequence[Mapping[str, Any]],
    method: str,
    backbone: str | None = None,
    seed: int | None = None,
    protocol: str | None = None,
) -> dict[str, Mapping[str, Any]]:
    """One decathlon run per domain for ``method``; several candidates is a UserError."""
    wanted = {"backbone": backbone, "seed": seed, "protocol": protocol}
    chosen: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        dataset = rec.get("config", {}).get("dataset", {})
        if "domain" not in dataset or rec.get("method") != method:  # not a decathlon run
            continue
        if any(value is not None and rec.get(key) != value for key, value in wanted.items()):
            continue
        chosen.setdefault(dataset["domain"], []).append(rec)
    for domain, recs in chosen.items():
        if len(recs) > 1:
            raise UserError(
                f"{len(recs)} {method} runs for {domain} ({', '.join(r['run_id'] for r in recs)}); "
                "narrow with --backbone/--seed/--protocol or pass the records with --records"
            )
    return {d: recs[0] for d, recs in chosen.items()}


def submit(
    records: Mapping[str, Mapping[str, Any]],
    out: str | Path,
    domains: Sequence[str] = DOMAINS,
    device: str = "cpu",
    batch_size: int = 100,
    num_workers: int = 0,
) -> Path:
    """Predict every domain's test set with its run and write one results.json."""
    require_domains(records, domains)
    splits, predictions = {}, {}
    for domain in domains:
        splits[domain], predictions[domain] = predict_test(
            records[domain], device, batch_size, num_workers
        )
        print(f"{domain}: {len(predictions[domain])} test predictions")
    return write_submission(out, build_submission(predictions, splits, domains))
