"""The task-file container (piggyback_lab/taskfile.py) on its own: what it writes, what it
refuses on reading, and when a task is refused for the backbone in hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from piggyback_lab.taskfile import (
    FORMAT,
    _digest,
    check_compatible,
    read_task_file,
    write_task_file,
)
from piggyback_lab.utils.errors import UserError

TENSORS = {"mask.conv": torch.tensor([3, 255], dtype=torch.uint8), "classifier.bias": torch.ones(2)}
META = {"kind": "piggyback", "backbone": "minicnn", "fingerprint": "0123456789abcdef"}


def test_a_task_reads_back_as_written_for_any_metadata_length(tmp_path: Path) -> None:
    """safetensors pads its JSON header to 8 bytes; every length of metadata must read back,
    the unpadded one included."""
    header_lengths = set()
    for n in range(16):
        path = write_and_path(tmp_path / f"t{n}.safetensors", {**META, "note": "x" * n})
        header_lengths.add(int.from_bytes(path.read_bytes()[:8], "little") % 8)
        tf = read_task_file(path)
        assert tf.meta == {**META, "note": "x" * n} and tf.kind == "piggyback"
        assert tf.tensors.keys() == TENSORS.keys()
        assert all(torch.equal(tf.tensors[k], v) for k, v in TENSORS.items())
    assert header_lengths == {0}  # safetensors' alignment: the case above ran unpadded too


def write_and_path(path: Path, meta: dict) -> Path:
    write_task_file(path, TENSORS, meta)
    return path


@pytest.mark.parametrize("meta", [{}, {"kind": ""}, {"kind": 3}])
def test_a_task_is_written_only_with_its_kind(tmp_path: Path, meta: dict) -> None:
    with pytest.raises(ValueError, match="names its kind"):
        write_task_file(tmp_path / "t.safetensors", TENSORS, meta)
    assert not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize("metadata", [None, {"format": "a"}, {"format": FORMAT + "x"}])
def test_a_file_of_another_format_is_refused(tmp_path: Path, metadata: dict | None) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file(TENSORS, str(path), metadata=metadata)
    with pytest.raises(UserError, match="is not a task file of this project"):
        read_task_file(path)


def test_a_changed_tensor_is_refused_whichever_way_its_digest_compares(tmp_path: Path) -> None:
    path = write_and_path(tmp_path / "t.safetensors", META)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    unsigned = {k: v for k, v in metadata.items() if k != "sha256"}
    orders = set()
    for value in range(2, 40):  # edit one number and keep the old digest, until the stored
        # digest has compared both below and above the edited file's
        tensors = {**TENSORS, "classifier.bias": torch.full((2,), float(value))}
        edited = tmp_path / f"edited{value}.safetensors"
        save_file(tensors, str(edited), metadata=metadata)
        with pytest.raises(UserError, match="modified after it was written"):
            read_task_file(edited)
        orders.add(metadata["sha256"] < _digest(tensors, unsigned))
        if len(orders) == 2:
            break
    assert orders == {True, False}


@pytest.mark.parametrize("backbone", ["aaa", "zzz"])
def test_a_task_for_another_backbone_is_refused(tmp_path: Path, backbone: str) -> None:
    tf = read_task_file(write_and_path(tmp_path / "t.safetensors", META))
    with pytest.raises(UserError, match=f"made for backbone 'minicnn', not '{backbone}'"):
        check_compatible(tf, backbone, META["fingerprint"])


@pytest.mark.parametrize("fingerprint", ["0000000000000000", "ffffffffffffffff"])
def test_a_task_for_other_weights_is_refused_and_both_fingerprints_named(
    tmp_path: Path, fingerprint: str
) -> None:
    tf = read_task_file(write_and_path(tmp_path / "t.safetensors", META))
    with pytest.raises(UserError) as err:
        check_compatible(tf, "minicnn", fingerprint)
    assert f"(fingerprint 0123456789ab, these are {fingerprint[:12]});" in str(err.value)
    check_compatible(tf, "minicnn", "".join(["0123456789", "abcdef"]))  # equal, not identical


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_tensor_that_is_not_a_number_is_refused_though_its_digest_is_valid(
    tmp_path: Path, value: float
) -> None:
    """A task with a NaN or inf tensor written with a valid digest (a diverged run, an
    edit that recomputed the digest) was served at a6ce102: every class printed nan."""
    path = tmp_path / "t.safetensors"
    write_task_file(path, {**TENSORS, "classifier.bias": torch.tensor([1.0, value])}, META)
    with pytest.raises(UserError, match=r"classifier.bias holds NaN or infinite values"):
        read_task_file(path)
