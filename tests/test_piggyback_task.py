"""A Piggyback task as stored (piggyback_lab/methods/piggyback/task.py), without training: each
way a
file can be corrupt or made for other weights is refused, its compression report is the
codes' sizes, and a host sets aside exactly the weights a mask changes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, wrap
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.piggyback.compress import binary_entropy, coded_sizes
from piggyback_lab.methods.piggyback.masks import masked_layers
from piggyback_lab.methods.piggyback.task import layer_mask
from piggyback_lab.taskfile import TaskFile, read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import assert_refused_by_fold_and_host, edited_task_file, tiny_net


@pytest.fixture(params=["binarizer", "ternarizer"])
def task_file(request: pytest.FixtureRequest, tmp_path: Path) -> TaskFile:
    """A task whose masks keep about 60% (ternary: 30% flipped, 30% kept)."""
    task = wrap(tiny_net(), "piggyback", classifier="fc", threshold_fn=request.param)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in masked_layers(task.model).values():
            layer.mask_real.copy_(torch.rand(layer.mask_real.shape, generator=generator) - 0.4)
    export_task(task, tmp_path / "task.safetensors")
    return read_task_file(tmp_path / "task.safetensors")


CORRUPT = {
    "no layers": (None, lambda layers: {}),
    "layers not a mapping": (None, lambda layers: [1]),
    "no shape": (None, lambda layers: {**layers, "conv": {"density": 0.5}}),
    "a shape of strings": (
        None,
        lambda layers: {**layers, "conv": {**layers["conv"], "shape": ["5"]}},
    ),
    "no density": (None, lambda layers: {**layers, "conv": {"shape": layers["conv"]["shape"]}}),
    "no mask bits": (lambda t: t.pop("mask.conv"), None),
    "one byte too few": (lambda t: t.update({"mask.conv": t["mask.conv"][:-1]}), None),
    "one byte too many": (
        lambda t: t.update({"mask.conv": torch.cat([t["mask.conv"], t["mask.conv"][:1]])}),
        None,
    ),
    "bits not packed": (lambda t: t.update({"mask.conv": t["mask.conv"].to(torch.int32)}), None),
    "a sign of the wrong size": (
        lambda t: t.update({"sign.conv": torch.zeros(1, dtype=torch.uint8)}),
        None,
    ),
    "a sign not packed": (
        lambda t: t.update({"sign.conv": torch.zeros_like(t["mask.conv"], dtype=torch.int32)}),
        None,
    ),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_every_corrupt_piggyback_task_is_refused_with_its_layer_named(
    task_file: TaskFile, case: str
) -> None:
    tensors, layers = CORRUPT[case]
    broken = edited_task_file(task_file, tensors, layers)
    with pytest.raises(UserError, match=f"task file {task_file.path}"):
        method_of(broken).check(broken)
    method_of(task_file).check(task_file)  # the file as written passes


@pytest.mark.parametrize("other", [[5, 3, 3, 2], [4, 3, 3, 3], [5, 3, 3, 4], [6, 3, 3, 3]])
def test_a_mask_for_another_weight_shape_is_refused_by_fold_and_host(
    task_file: TaskFile, other: list[int]
) -> None:
    """Shapes below and above the weight's own ([5, 3, 3, 3]) in list order."""
    broken = edited_task_file(
        task_file, layers=lambda layers: {**layers, "conv": {**layers["conv"], "shape": other}}
    )
    broken.tensors["mask.conv"] = torch.zeros(math.ceil(math.prod(other) / 8), dtype=torch.uint8)
    broken.tensors.pop("sign.conv", None)
    message = re.escape(f"mask for layer conv has shape {other}")
    assert_refused_by_fold_and_host(broken, tiny_net, "fc", message)


def test_a_mask_for_a_weight_the_backbone_lacks_is_refused(task_file: TaskFile) -> None:
    extra = edited_task_file(task_file, layers=lambda layers: {**layers, "extra": layers["conv"]})
    extra.tensors["mask.extra"] = extra.tensors["mask.conv"]
    with pytest.raises(UserError, match="masks weight extra, absent here"):
        MultiTaskModel("sequential", None, [extra], model=tiny_net(), classifier="fc")


def test_a_host_sets_aside_exactly_the_weights_the_mask_changes(task_file: TaskFile) -> None:
    host = MultiTaskModel("sequential", None, [task_file], model=tiny_net(), classifier="fc")
    (task,) = host.tasks.values()
    for key, shape in method_of(task_file).layers(task_file).items():
        mask = layer_mask(task_file.tensors, key, shape)
        assert torch.equal(task.changed(key), mask != 1)
        assert 0 < int((mask != 1).sum()) < mask.numel()


def test_the_compression_report_is_each_codes_size_per_weight(task_file: TaskFile) -> None:
    report = method_of(task_file).compression(task_file)
    totals = {"n": 0, "entropy": 0.0, "rice": 0, "zlib": 0, "lzma": 0}
    for name, shape in method_of(task_file).layers(task_file).items():
        n = math.prod(shape)
        streams = [
            task_file.tensors[k] for k in (f"mask.{name}", f"sign.{name}") if k in task_file.tensors
        ]
        layer = report["layers"][name]
        kept = float(torch.tensor([int(b) for b in format_bits(streams[0], n)]).float().mean())
        assert layer["n"] == n and layer["density"] == pytest.approx(kept)
        shares = [float(torch.tensor(format_bits(s, n)).float().mean()) for s in streams]
        assert layer["entropy_bpw"] == pytest.approx(sum(binary_entropy(p) for p in shares))
        for codec in ("rice", "zlib", "lzma"):
            size = sum(coded_sizes(s, n)[codec] for s in streams)
            assert layer[f"{codec}_bpw"] == pytest.approx(8 * size / n)
            totals[codec] += size
        totals["n"] += n
        totals["entropy"] += layer["entropy_bpw"] * n
    overall = report["overall"]
    assert overall["n"] == totals["n"]
    assert overall["entropy_bpw"] == pytest.approx(totals["entropy"] / totals["n"])
    for codec in ("rice", "zlib", "lzma"):
        assert overall[f"{codec}_bpw"] == pytest.approx(8 * totals[codec] / totals["n"])


def format_bits(packed: torch.Tensor, n: int) -> list[int]:
    """The first ``n`` bits of a packed stream, most significant bit first (numpy's order)."""
    return [(int(byte) >> (7 - i)) & 1 for byte in packed.tolist() for i in range(8)][:n]
