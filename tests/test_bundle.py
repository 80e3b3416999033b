"""Bundles (export, verify, tampering) and the lossless compressed mask coding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from piggyback_lab.methods.piggyback import PiggybackTask
from piggyback_lab.methods.piggyback.compress import (
    binary_entropy,
    decode_bits,
    encode_bits,
    encode_mask,
)
from piggyback_lab.runs.bundles import export_bundle, verify_bundle
from piggyback_lab.runs.records import write_record
from piggyback_lab.taskfile import pack_bits, read_task_file
from piggyback_lab.utils.errors import UserError
from src.bundle import main
from tests.test_multitask import make_task, other_weights


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory, minicnn_weights: Path) -> Path:
    folder = tmp_path_factory.mktemp("bundle_tasks")
    make_task(folder / "sparse.safetensors", minicnn_weights, seed=1, density=0.05)
    make_task(folder / "head.safetensors", minicnn_weights, kind="classifier", seed=3)
    return folder


def test_export_then_verify(task_dir: Path, minicnn_weights: Path, tmp_path: Path) -> None:
    write_record(
        tmp_path / "runs" / "sparse.json", {"run_id": "sparse", "top1": 87.5, "top5": 100.0}
    )
    out = tmp_path / "bundle"
    manifest = export_bundle(out, task_dir, str(minicnn_weights), tmp_path)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    tasks = {t["name"]: t for t in manifest["tasks"]}
    assert set(tasks) == {"sparse", "head"}
    sparse = tasks["sparse"]
    assert sparse["accuracy"]["top1"] == 87.5 and tasks["head"]["accuracy"] is None
    assert sparse["classes"] == ["class1_0", "class1_1", "class1_2"] and sparse["dataset"]
    assert sparse["bits_per_weight"] == pytest.approx(1.0, abs=0.01)
    assert sparse["compressed_bits_per_weight"] < 0.5
    assert manifest["backbone"]["fingerprint"] == sparse["fingerprint"]
    assert (out / sparse["file"]).read_bytes() == (task_dir / "sparse.safetensors").read_bytes()
    result = verify_bundle(out)
    assert result["tasks"] == 2 and result["backbone_checked"]


def test_export_never_deletes_a_folder_it_did_not_write(
    task_dir: Path, minicnn_weights: Path, tmp_path: Path
) -> None:
    """An existing --out that is not a bundle is refused, its files kept (a6ce102 replaced
    it whole: --out results/tasks deleted every other trained task); a bundle is replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    with pytest.raises(UserError, match="is not a bundle"):
        export_bundle(out, task_dir, str(minicnn_weights), None)
    assert (out / "notes.txt").read_text() == "a user's file"
    bundle = tmp_path / "bundle"
    bundle.mkdir()  # an empty folder is a fine place for one
    export_bundle(bundle, task_dir, str(minicnn_weights), None)
    export_bundle(bundle, task_dir, str(minicnn_weights), None)  # a bundle is replaced
    assert (bundle / "manifest.json").is_file()


def test_verify_reports_tampering_and_wrong_weights(
    task_dir: Path, minicnn_weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    export_bundle(out, task_dir, str(minicnn_weights), None)
    task = out / "tasks" / "head.safetensors"
    data = bytearray(task.read_bytes())
    data[-1] ^= 1
    task.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"head\.safetensors differs from the manifest"):
        verify_bundle(out)

    other = other_weights(tmp_path)
    with pytest.raises(UserError, match="have fingerprint"):
        verify_bundle(out, str(other))


def test_verify_covers_the_manifest_itself(
    task_dir: Path, minicnn_weights: Path, tmp_path: Path
) -> None:
    """An edited accuracy or bits per weight fails, and so does a manifest whose structure
    changed (one error, not a crash)."""
    out = tmp_path / "bundle"
    export_bundle(out, task_dir, str(minicnn_weights), None)
    path = out / "manifest.json"
    original = json.loads(path.read_text())
    assert verify_bundle(out)["tasks"] == len(original["tasks"])
    edited = json.loads(path.read_text())
    entry = next(e for e in edited["tasks"] if "compressed_bits_per_weight" in e)
    entry["compressed_bits_per_weight"] /= 2  # a better number than the file gives
    path.write_text(json.dumps(edited))
    with pytest.raises(UserError, match="edited after export") as err:
        verify_bundle(out)
    assert "compressed_bits_per_weight" in str(err.value)  # the task entry is named too
    for broken in ({**original, "tasks": {"a": 1}}, {**original, "backbone": "x"}):
        path.write_text(json.dumps(broken))
        with pytest.raises(UserError, match="bundle"):
            verify_bundle(out)


def test_export_refuses_weights_the_tasks_were_not_trained_on(
    task_dir: Path, tmp_path: Path
) -> None:
    other = other_weights(tmp_path)
    with pytest.raises(UserError, match="made for other minicnn weights"):
        export_bundle(tmp_path / "bundle", task_dir, str(other))
    assert not (tmp_path / "bundle").exists()


def test_cli_export_and_verify(task_dir: Path, minicnn_weights: Path, tmp_path: Path, capsys):
    out = tmp_path / "b"
    main(["export", str(task_dir), "--out", str(out), "--weights", str(minicnn_weights),
          "--records", str(tmp_path)])  # fmt: skip
    assert "bundle written" in capsys.readouterr().out
    main(["verify", str(out)])
    assert "2 tasks verified" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "manifest.json is missing" in capsys.readouterr().err


@pytest.mark.parametrize("p", [0.0, 0.002, 0.05, 0.3, 0.5, 0.97, 1.0])
@pytest.mark.parametrize("n", [1, 9, 4099])
def test_compressed_coding_round_trips_exactly(p: float, n: int) -> None:
    bits = np.random.default_rng(n).random(n) < p
    decoded = decode_bits(encode_bits(bits))
    assert decoded.dtype == bool and np.array_equal(decoded, bits)
    packed = pack_bits(torch.from_numpy(bits))
    assert torch.equal(torch.from_numpy(np.packbits(decode_bits(encode_mask(packed, n)))), packed)
    # never much worse than the packed bits: at most a small header more
    assert len(encode_bits(bits)) <= (n + 7) // 8 + 12


def test_low_density_mask_costs_well_under_one_bit_per_weight(task_dir: Path) -> None:
    report = PiggybackTask().compression(read_task_file(task_dir / "sparse.safetensors"))["overall"]
    assert 0.0 < report["entropy_bpw"] <= report["rice_bpw"] < 1.0
    assert report["rice_bpw"] < 1.1 * report["entropy_bpw"] + 0.01  # within ~10% of H(p)
    n = 1_000_000
    bits = np.random.default_rng(0).random(n) < 0.05
    bpw = 8 * len(encode_bits(bits)) / n
    assert binary_entropy(bits.mean()) <= bpw < 1.03 * binary_entropy(bits.mean())
