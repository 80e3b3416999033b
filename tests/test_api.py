"""The Python API on one's own model and loop: torchvision's resnet18 trained with plain
PyTorch (no Trainer, no Hydra), exported, folded back and hosted with the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from piggyback_lab.methods.api import MultiTaskModel, export_task, fold_task, wrap
from piggyback_lab.utils.errors import UserError

CLASSES = ["a", "b", "c"]


def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)  # the same "pretrained" weights every time
    return torchvision.models.resnet18(num_classes=1000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A Piggyback task trained for 3 steps of a plain loop; (file, images, its logits)."""
    task = wrap(resnet18(), "piggyback", classifier="fc", num_classes=3, backbone="resnet18")
    optimizer, schedule = task.recipe()
    assert optimizer.param_groups[0]["lr"] == 1e-4  # conf/method/piggyback.yaml's recipe
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 32, 32, generator=generator)
    y = torch.randint(0, 3, (8,), generator=generator)
    before = {k: v.clone() for k, v in task.model.state_dict().items() if "mask_real" in k}
    task.train()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(task(x), y).backward()
        optimizer.step()
    schedule.step()
    after = {k: v for k, v in task.model.state_dict().items() if "mask_real" in k}
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the masks learned
    path = tmp_path_factory.mktemp("api") / "task.safetensors"
    export_task(task, path, CLASSES, dataset="toy")
    task.eval()
    with torch.no_grad():
        logits = task(x)
    return path, x, logits


def test_a_plain_loop_exports_a_task_that_folds_back_to_the_same_logits(trained) -> None:
    path, x, logits = trained
    folded = fold_task(resnet18(), path)
    with torch.no_grad():
        assert torch.equal(folded(x), logits)


def test_the_exported_task_switches_in_a_multitask_host(trained) -> None:
    path, x, logits = trained
    host = MultiTaskModel("resnet18", None, [path], model=resnet18(), classifier="fc")
    assert torch.equal(host.predict(x, path.stem), logits)
    assert host.tasks[path.stem].class_names == CLASSES
    host.select(None)  # the backbone comes back bit for bit
    plain = resnet18().eval()
    assert all(
        torch.equal(a, b) for a, b in zip(host.model.parameters(), plain.parameters(), strict=True)
    )


def test_other_weights_are_refused(trained) -> None:
    path, _, _ = trained
    other = resnet18()
    with torch.no_grad():
        other.conv1.weight.add_(1.0)
    with pytest.raises(UserError, match="other resnet18 weights"):
        fold_task(other, path)


def test_every_method_wraps_with_its_config_defaults() -> None:
    for method in ("finetune", "classifier_only"):
        task = wrap(resnet18(), method, classifier="fc", num_classes=3)
        names = {id(p) for g in task.trainable_parameters() for p in g["params"]}
        head = {id(p) for p in task.head.parameters()}
        assert head <= names and (method == "finetune") == (len(names) > len(head))
    with pytest.raises(UserError, match="unknown method"):
        wrap(resnet18(), "lora_typo", classifier="fc")


@pytest.mark.parametrize(
    "method, base", [("affine_masks", "piggyback"), ("decathlon/finetune", "finetune")]
)
def test_a_config_with_a_defaults_list_gets_its_bases_settings_as_src_train_does(
    method: str, base: str
) -> None:
    from piggyback_lab.methods.api import method_defaults
    from piggyback_lab.runs.config import compose

    cls, optimizer, settings = method_defaults(method)
    composed = compose([f"method={method}"]).method
    assert cls.__module__.startswith(composed._target_.rpartition(".")[0])
    assert optimizer.func.__name__ == composed.optimizer._target_.rpartition(".")[2]
    assert optimizer.keywords == {
        k: v for k, v in composed.optimizer.items() if not k.startswith("_")
    }
    for key, value in settings.items():
        assert composed[key] == value, key
    assert set(method_defaults(base)[2]) <= set(settings)


@pytest.mark.parametrize("train_bn", [False, True])
def test_classifier_only_stores_norm_statistics_only_when_it_trains_them(
    tmp_path: Path, train_bn: bool
) -> None:
    """The published classifier-only baseline keeps BN in eval mode; with train_bn the
    running statistics follow the data and the task carries them, so it folds exactly."""
    task = wrap(resnet18(), "classifier_only", classifier="fc", num_classes=3, train_bn=train_bn)
    optimizer, _ = task.recipe()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    task.train()
    before = task.model.bn1.running_mean.clone()
    optimizer.zero_grad()
    F.cross_entropy(task(x), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    assert torch.equal(task.model.bn1.running_mean, before) != train_bn
    assert task.model.bn1.weight.grad is None  # norms are never optimised
    path = tmp_path / "head.safetensors"
    export_task(task, path, CLASSES)
    task.eval()
    with torch.no_grad():
        assert torch.equal(fold_task(resnet18(), path)(x), task(x))
