"""Affine binary masks compute W * (k0 + k1 * M) + k2 per layer, start as Piggyback's W * M
bit for bit, train the k's at their own rate, store them beside the mask bits, and fold
with the arithmetic training used."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, fold_task, wrap
from piggyback_lab.methods.piggyback.masks import masked_layers
from piggyback_lab.taskfile import TaskFile, read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import tiny_net


def with_random_masks(task, seed: int = 1) -> None:
    """Masks that drop about half the weights and k's far from their start."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in masked_layers(task.model).values():
            layer.mask_real.copy_(torch.rand(layer.mask_real.shape, generator=generator) * 1e-2)
            layer.affine.copy_(torch.randn(3, generator=generator))


def test_it_starts_as_piggyback_bit_for_bit() -> None:
    x = torch.randn(2, 3, 8, 8)
    affine = wrap(tiny_net(), "affine_masks", classifier="fc")
    piggyback = wrap(tiny_net(), "piggyback", classifier="fc")
    with torch.no_grad():
        for a, p in zip(
            masked_layers(affine.model).values(),
            masked_layers(piggyback.model).values(),
            strict=True,
        ):
            torch.manual_seed(2)
            p.mask_real.uniform_(0, 1e-2)
            a.mask_real.copy_(p.mask_real)
        assert torch.equal(affine(x), piggyback(x))
    starts = [tuple(layer.affine.tolist()) for layer in masked_layers(affine.model).values()]
    assert starts == [(0.0, 1.0, 0.0)] * 2  # conv and mid


def test_the_weight_is_w_times_k0_plus_k1_m_plus_k2_and_each_k_gets_its_gradient() -> None:
    task = wrap(tiny_net(), "affine_masks", classifier="fc")
    with_random_masks(task)
    layer = masked_layers(task.model)["conv"]
    w, m = layer.weight, layer.mask().detach()
    assert 0 < float(m.mean()) < 1
    k0, k1, k2 = layer.affine.detach()
    expected = w * (k0 + k1 * m) + k2
    torch.testing.assert_close(task.model.conv.weight, expected, rtol=0, atol=0)
    upstream = torch.randn_like(w)
    (task.model.conv.weight * upstream).sum().backward()
    grads = layer.affine.grad
    torch.testing.assert_close(
        grads, torch.stack([(upstream * w).sum(), (upstream * w * m).sum(), upstream.sum()])
    )
    # the mask's straight-through gradient is dL/dW_hat * W * k1
    torch.testing.assert_close(layer.mask_real.grad, upstream * w * k1)


def test_the_ks_train_at_affine_lr_and_the_masks_at_lr() -> None:
    task = wrap(
        tiny_net(), "affine_masks", classifier="fc", lr=1e-4, affine_lr=3e-3, classifier_lr=2e-2
    )
    optimizer, _ = task.recipe()
    by_rate = {g["lr"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    layers = masked_layers(task.model).values()
    assert by_rate == {
        1e-4: {id(layer.mask_real) for layer in layers},
        3e-3: {id(layer.affine) for layer in layers},
        2e-2: {id(p) for p in task.head.parameters()},
    }
    default = wrap(tiny_net(), "affine_masks", classifier="fc", lr=5e-4).recipe()[0]
    assert [g["lr"] for g in default.param_groups][:2] == [5e-4, 5e-4]  # affine_lr null: lr
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable == {
        f"model.{layer}.parametrizations.weight.0.{name}"
        for layer in ("conv", "mid")
        for name in ("mask_real", "affine")
    } | {"model.fc.weight", "model.fc.bias"}


def test_the_task_stores_the_ks_and_folds_with_the_training_arithmetic(tmp_path: Path) -> None:
    task = wrap(tiny_net(), "affine_masks", classifier="fc")
    with_random_masks(task)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        trained = task.eval()(x)
    path = tmp_path / "task.safetensors"
    export_task(task, path)
    tf = read_task_file(path)
    layers = masked_layers(task.model)
    for name, layer in layers.items():
        assert torch.equal(tf.tensors[f"affine.{name}"], layer.affine.detach())
    storage = method_of(tf).storage(tf)
    n = sum(layer.weight.numel() for layer in layers.values())
    mask_bytes = sum(tf.tensors[f"mask.{name}"].numel() for name in layers)
    assert storage["bits_per_weight"] == pytest.approx(8 * mask_bytes / n + 2 * 96 / n)
    with torch.no_grad():
        folded = fold_task(tiny_net(), path)(x)
    assert torch.equal(folded, trained)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("affine.conv"), "has no \\(k0, k1, k2\\)"),
        (lambda t: t.__setitem__("affine.conv", torch.ones(2)), "has no \\(k0, k1, k2\\)"),
        (lambda t: t.__setitem__("affine.conv", torch.ones(4)), "has no \\(k0, k1, k2\\)"),
        (lambda t: t.__setitem__("affine.conv", torch.ones(1, 3)), "has no \\(k0, k1, k2\\)"),
        (
            lambda t: t.__setitem__("affine.conv", torch.ones(3, dtype=torch.int64)),
            "has no \\(k0, k1, k2\\)",
        ),
        (
            lambda t: t.__setitem__("affine.conv", torch.tensor([0.0, float("nan"), 0.0])),
            "not finite",
        ),
    ],
)
def test_a_task_file_with_broken_ks_is_refused(tmp_path: Path, change, message: str) -> None:
    task = wrap(tiny_net(), "affine_masks", classifier="fc")
    path = tmp_path / "task.safetensors"
    export_task(task, path)
    tf = read_task_file(path)
    tensors = copy.copy(tf.tensors)
    change(tensors)
    broken = TaskFile(path=tf.path, tensors=tensors, meta=tf.meta)
    with pytest.raises(UserError, match=message):
        method_of(broken).check(broken)
