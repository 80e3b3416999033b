"""Piggyback training leaves the backbone untouched; its task file round-trips exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from piggyback_lab.methods.tasks import apply_task
from piggyback_lab.models import build_backbone
from piggyback_lab.models.surgery import plain_state_dict
from piggyback_lab.taskfile import (
    backbone_fingerprint,
    check_compatible,
    pack_bits,
    read_task_file,
    unpack_bits,
)
from piggyback_lab.utils.errors import UserError
from tests.conftest import method_for, published_mask


def plain_backbone(seed: int = 0, classes: int = 4):
    torch.manual_seed(seed)
    return build_backbone("minicnn", None, classes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A Piggyback module trained a few steps on random data, its export, and the pre-state."""
    model = plain_backbone()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}
    method = method_for(model, "piggyback", 4, "method.lr=5e-3", "method.classifier_lr=5e-3")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
    )
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(method, DataLoader(data, batch_size=8))
    path = tmp_path_factory.mktemp("task") / "task.safetensors"
    size = method.export_task(path, {"dataset": "random", "class_names": list("abcd")})
    return method.eval(), before, path, size


def test_training_changes_masks_but_not_backbone_weights_or_bn_statistics(trained) -> None:
    method, before, _, _ = trained
    after = plain_state_dict(method.model)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed during Piggyback training"
    densities = [m.mask().mean().item() for m in method.model.modules() if hasattr(m, "mask_real")]
    assert min(densities) < 1.0, "training should have switched some weights off"


def test_export_load_fold_gives_the_training_time_logits(trained) -> None:
    method, _, path, _ = trained
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = method(x)
    task = read_task_file(path)
    plain = plain_backbone(classes=10).eval()
    check_compatible(task, "minicnn", backbone_fingerprint(plain, "classifier"))
    folded = apply_task(plain, task, "classifier")
    assert not any(hasattr(m, "mask_real") for m in folded.modules())  # a plain network again
    with torch.no_grad():
        torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-6)
    assert task.class_names == list("abcd")


def test_each_packed_mask_takes_ceil_n_over_8_bytes(trained) -> None:
    _, _, path, size = trained
    task = read_task_file(path)
    layers = task.meta["layers"]
    assert layers and all(
        task.tensors[f"mask.{n}"].numel() == math.ceil(math.prod(e["shape"]) / 8)
        for n, e in layers.items()
    )
    masked = sum(math.prod(e["shape"]) for e in layers.values())
    head = sum(
        t.numel() * t.element_size() for k, t in task.tensors.items() if k.startswith("classifier")
    )
    assert size < masked / 8 + head + 8192  # 1 bit per weight + classifier + header


@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 1000, 1001])
def test_pack_unpack_round_trip(n: int) -> None:
    mask = torch.rand(n) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 8)
    assert torch.equal(unpack_bits(packed, (n,)), mask)


def test_task_file_for_other_weights_is_refused(trained) -> None:
    _, _, path, _ = trained
    other = plain_backbone(seed=1)
    with pytest.raises(UserError, match="made for other minicnn weights"):
        check_compatible(read_task_file(path), "minicnn", backbone_fingerprint(other, "classifier"))
    with pytest.raises(UserError, match="made for backbone 'minicnn', not 'resnet50'"):
        check_compatible(read_task_file(path), "resnet50", "0" * 64)


def test_truncated_or_edited_task_file_is_refused(trained, tmp_path: Path) -> None:
    _, _, path, _ = trained
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_task_file(truncated)
    edited = tmp_path / "edited.safetensors"
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # a bit in the last tensor's payload
    edited.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="modified after it was written"):
        read_task_file(edited)


def test_fused_adam_takes_the_same_steps_up_to_rounding() -> None:
    """method.optimizer.fused=true is the published Adam update, in one kernel per tensor."""
    x, y = (
        torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
        torch.arange(8) % 4,
    )
    masks = {}
    for optimizer in ("adam", "adam_fused"):
        torch.manual_seed(0)
        model = build_backbone("minicnn", None, 4)
        fused = "true" if optimizer == "adam_fused" else "null"
        method = method_for(
            model, "piggyback", 4, f"method.optimizer.fused={fused}", "method.lr=1e-2",
            "method.classifier_lr=1e-2",
        )  # fmt: skip
        opt = method.configure_optimizers()["optimizer"]
        assert opt.defaults["fused"] is (True if optimizer == "adam_fused" else None)
        for _ in range(3):
            torch.nn.functional.cross_entropy(method(x), y).backward()
            opt.step()
            opt.zero_grad()
        masks[optimizer] = torch.cat([p.detach().flatten() for p in method.parameters()])
    assert not torch.equal(masks["adam"], torch.zeros_like(masks["adam"]))
    torch.testing.assert_close(masks["adam_fused"], masks["adam"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("threshold_fn", ["binarizer", "ternarizer"])
def test_folding_the_stored_mask_gives_the_training_time_weights_bit_for_bit(
    threshold_fn: str,
) -> None:
    """layer_mask hands back integer bits; W * bits must equal W * threshold(m) exactly,
    the sign of every zero included."""
    from piggyback_lab.methods.piggyback.masks import add_masks, masked_layers
    from piggyback_lab.methods.piggyback.task import layer_mask, piggyback_tensors

    model = plain_backbone()
    add_masks(model, published_mask(mask_init="uniform", threshold_fn=threshold_fn), "classifier")
    tensors = piggyback_tensors(model, "classifier", train_bn=False)
    for name, layer in masked_layers(model).items():
        with torch.no_grad():
            expected = layer(layer.weight)  # W * threshold(m), as training computes it
        bits = layer_mask(tensors, name, list(layer.weight.shape))
        assert bits.dtype == (torch.int8 if threshold_fn == "ternarizer" else torch.uint8)
        folded = layer.weight.detach() * bits
        assert folded.dtype == torch.float32
        assert torch.equal(folded.view(torch.int32), expected.view(torch.int32)), name
