"""A LoRA task as stored (piggyback_lab/methods/lora/task.py), without training: folding and hosting
give the trained network's outputs with the update at lora_alpha / r, and each way a file
can be corrupt or made for other weights is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, wrap
from piggyback_lab.methods.lora.layer import lora_layers
from piggyback_lab.taskfile import TaskFile, read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import (
    assert_folded_and_hosted_match,
    assert_refused_by_fold_and_host,
    edited_task_file,
    tiny_net,
)

R, ALPHA = 2, 6  # scaling 3: a wrong scaling (alpha + r, alpha * r, alpha - r) shows


@pytest.fixture
def trained(tmp_path: Path) -> tuple:
    """A wrapped tiny net whose B are nonzero (a fresh LoRA's B = 0 hides the update)."""
    task = wrap(tiny_net(), "lora", classifier="fc", r=R, lora_alpha=ALPHA)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for delta in lora_layers(task.model).values():
            delta.lora_B.copy_(torch.randn(delta.lora_B.shape, generator=generator))
    path = tmp_path / "lora.safetensors"
    export_task(task, path)
    return task, path


@pytest.fixture
def task_file(trained) -> TaskFile:
    return read_task_file(trained[1])


def test_folding_and_hosting_give_the_trained_networks_outputs(trained) -> None:
    task, path = trained
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert_folded_and_hosted_match(task, path, tiny_net, "fc", x)


def test_the_folded_weight_is_w_plus_alpha_over_r_times_ba(task_file: TaskFile) -> None:
    plain = tiny_net()
    model = method_of(task_file).fold(tiny_net(), task_file, "fc")
    assert sorted(task_file.meta["layers"]) == ["conv", "mid"]
    for key in task_file.meta["layers"]:
        w = plain.get_submodule(key).weight
        a, b = task_file.tensors[f"lora_A.{key}"], task_file.tensors[f"lora_B.{key}"]
        torch.testing.assert_close(
            model.get_submodule(key).weight, w + (ALPHA / R) * (b @ a).view(w.shape)
        )


def test_rank_one_is_a_task_and_rank_zero_is_not(tmp_path: Path) -> None:
    task = wrap(tiny_net(), "lora", classifier="fc", r=1, lora_alpha=1)
    export_task(task, tmp_path / "r1.safetensors")
    tf = read_task_file(tmp_path / "r1.safetensors")
    method_of(tf).check(tf)
    empty = {
        **tf.tensors,
        **{
            f"lora_{ab}.{key}": torch.zeros(
                (0, tf.tensors[f"lora_A.{key}"].shape[1]) if ab == "A" else (shape[0], 0)
            )
            for key, shape in tf.meta["layers"].items()
            for ab in "AB"
        },
    }
    rank_zero = TaskFile(path=tf.path, meta={**tf.meta, "r": 0}, tensors=empty)
    with pytest.raises(UserError, match="no rank"):
        method_of(rank_zero).check(rank_zero)


def rows(t: torch.Tensor, change: int) -> torch.Tensor:
    return t[:change] if change < 0 else torch.cat([t, t[:change]])


CORRUPT = {
    "no layers": (None, lambda m: m.update(layers={})),
    "layers not a mapping": (None, lambda m: m.update(layers=[[5, 3, 3, 3]])),
    "a rank not an integer": (None, lambda m: m.update(r=2.0)),
    "no rank": (None, lambda m: m.pop("r")),
    "no lora_alpha": (None, lambda m: m.pop("lora_alpha")),
    "lora_alpha a string": (None, lambda m: m.update(lora_alpha="6")),
    "a shape not a list": (None, lambda m: m["layers"].update(conv=(5, 3, 3, 3))),
    "no A": (lambda t: t.pop("lora_A.conv"), None),
    "no B": (lambda t: t.pop("lora_B.mid"), None),
    "A a row short": (lambda t: t.update({"lora_A.conv": rows(t["lora_A.conv"], -1)}), None),
    "A a row over": (lambda t: t.update({"lora_A.conv": rows(t["lora_A.conv"], 1)}), None),
    "A a column short": (lambda t: t.update({"lora_A.mid": t["lora_A.mid"][:, :-1]}), None),
    "A a column over": (
        lambda t: t.update({"lora_A.mid": torch.cat([t["lora_A.mid"]] * 2, dim=1)}),
        None,
    ),
    "B a row short": (lambda t: t.update({"lora_B.conv": rows(t["lora_B.conv"], -1)}), None),
    "B a row over": (lambda t: t.update({"lora_B.conv": rows(t["lora_B.conv"], 1)}), None),
    "B a column short": (lambda t: t.update({"lora_B.mid": t["lora_B.mid"][:, :-1]}), None),
    "B a column over": (
        lambda t: t.update({"lora_B.mid": torch.cat([t["lora_B.mid"]] * 2, dim=1)}),
        None,
    ),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_every_corrupt_lora_task_is_refused(task_file: TaskFile, case: str) -> None:
    tensors, meta = CORRUPT[case]
    broken = edited_task_file(task_file, tensors, meta=meta)
    with pytest.raises(UserError, match=f"task file {task_file.path}"):
        method_of(broken).check(broken)
    method_of(task_file).check(task_file)  # the file as written passes


@pytest.mark.parametrize("other", [[5, 3, 3, 2], [4, 3, 3, 3], [5, 3, 3, 4], [6, 3, 3, 3]])
def test_an_update_for_another_weight_shape_is_refused_by_fold_and_host(
    task_file: TaskFile, other: list[int]
) -> None:
    """Shapes below and above the conv's own ([5, 3, 3, 3]) in list order."""
    broken = edited_task_file(task_file, layers=lambda layers: {**layers, "conv": other})
    message = "changes weight conv, which this backbone lacks"
    assert_refused_by_fold_and_host(broken, tiny_net, "fc", message)
