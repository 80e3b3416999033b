"""Any torchvision backbone: masks on every weight a layer multiplies with its input
(attention's in_proj included), exact at '1s', exact when folded, exact across task switches.
Every shipped torchvision config is checked with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.piggyback.masks import add_masks, masked_layers
from piggyback_lab.methods.tasks import apply_task
from piggyback_lab.models import build_backbone, classifier_name
from piggyback_lab.models.surgery import prunable_weights
from piggyback_lab.runs.config import compose
from piggyback_lab.taskfile import read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import (
    CONF,
    TINY_BUDGET,
    expected_masked_count,
    make_image_folder,
    method_for,
    published_mask,
    train_in_process,
)

TORCHVISION_CONFIGS = sorted(  # configs over the torchvision base (IMAGENET1K_V1 weights)
    p.stem
    for p in (CONF / "backbone").glob("*.yaml")
    if "/backbone_base/torchvision@_here_" in p.read_text()
)
NEW_ONES = ("vit_b_16", "swin_t", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_large")


def test_the_shipped_configs_cover_the_paper_and_the_modern_backbones() -> None:
    assert set(TORCHVISION_CONFIGS) >= {"vgg16", "vgg16_bn", "resnet50", "densenet121", *NEW_ONES}


@pytest.mark.parametrize("name", TORCHVISION_CONFIGS)
def test_config_states_what_the_registry_finds(name: str) -> None:
    import torchvision

    cfg = compose([f"backbone={name}", "paths.output_dir=/out"]).backbone
    assert cfg.classifier == classifier_name(name)
    assert isinstance(build_backbone(name, None, 3).get_submodule(cfg.classifier), nn.Linear)
    weights = torchvision.models.get_model_weights(name)
    assert cfg.weights in weights.__members__
    assert cfg.input_size == weights[cfg.weights].transforms().crop_size[0]


def _random_masks(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mask in masked_layers(model).values():
            keep = torch.rand(mask.mask_real.shape, generator=g) < 0.8
            mask.mask_real.copy_(torch.where(keep, 1e-2, -1e-2))


# minivit (torchvision's VisionTransformer, 32 px) in the default run; the full-size
# configs at 224 px take 20-50 s each on 2 CPU cores (make test-all).
FULL_SIZE = [pytest.param(name, 224, marks=pytest.mark.slow) for name in NEW_ONES]


@pytest.mark.parametrize("name, size", [("minivit", 32), *FULL_SIZE])
def test_masks_fold_and_switch_exactly(name: str, size: int, tmp_path: Path) -> None:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    weights = tmp_path / "base.pt"
    torch.save(build_backbone(name, None, 10).state_dict(), weights)
    plain = build_backbone(name, str(weights), 4).eval()
    head = classifier_name(name)
    with torch.no_grad():
        expected = plain(images)

    # '1s' masks compute the plain network exactly, on every prunable weight
    masked = build_backbone(name, str(weights), 4)
    masked.get_submodule(head).load_state_dict(plain.get_submodule(head).state_dict())
    keys = add_masks(masked, published_mask(), head)
    assert sum(w.numel() for w in prunable_weights(masked, head).values()) == (
        expected_masked_count(plain, head)
    )
    assert len(keys) == len(masked_layers(masked))
    with torch.no_grad():
        assert torch.equal(masked.eval()(images), expected)

    # two tasks with random masks: folding gives the training-time logits; A -> B -> A exact
    paths, training_logits = [], []
    for seed in (1, 2):
        model = build_backbone(name, str(weights), 4)
        method = method_for(model, "piggyback", 4, backbone=name).eval()
        _random_masks(model, seed)
        with torch.no_grad():
            training_logits.append(method(images))
        path = tmp_path / f"task{seed}.safetensors"
        method.export_task(path, {"dataset": f"t{seed}", "class_names": list("abcd")})
        paths.append(path)
    folded = apply_task(build_backbone(name, str(weights), 1), read_task_file(paths[0]), head)
    with torch.no_grad():
        assert torch.equal(folded.eval()(images), training_logits[0])
    host = MultiTaskModel(name, str(weights), paths)
    a, b = (p.stem for p in paths)
    first = host.predict(images, a)
    assert torch.equal(host.predict(images, b), training_logits[1])
    assert torch.equal(host.predict(images, a), first)
    assert torch.equal(first, training_logits[0])


@pytest.mark.parametrize(
    "name, size, layers",
    [("minivit", 32, 2), pytest.param("vit_b_16", 224, 12, marks=pytest.mark.slow)],
)
def test_a_short_vit_run_masks_every_trunk_weight_and_attention_projection(
    name: str, size: int, layers: int, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "vit.pt"
    torch.save(build_backbone(name, None, 10).state_dict(), weights)
    data = make_image_folder(tmp_path / "tiny", classes=2, per_class=2, size=16)
    train_in_process(
        f"backbone={name}", f"backbone.weights={weights}", "++backbone.pretrain=false",
        "dataset=mini_digits", f"dataset.root={data}", "dataset.num_classes=2",
        f"dataset.transforms.size={size}",
        *[o for o in TINY_BUDGET if not o.startswith("backbone")], "method.batch_size=2",
        f"paths.results_dir={tmp_path / 'results'}", f"paths.log_dir={tmp_path / 'outputs'}",
        f"paths.output_dir={tmp_path / 'outputs' / 'job'}",
    )  # fmt: skip
    [record_path] = (tmp_path / "results" / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    task = read_task_file(record["task_file"])
    plain = build_backbone(name, None, 2)
    count = expected_masked_count(plain, "heads.head")
    assert record["masked_weights"] == count
    assert sum(torch.Size(e["shape"]).numel() for e in task.meta["layers"].values()) == count
    attention = [k for k in task.meta["layers"] if k.endswith("in_proj_weight")]
    assert len(attention) == layers  # one packed q/k/v projection per encoder layer
    assert any(k.endswith("self_attention.out_proj") for k in task.meta["layers"])


def test_packnet_owns_attention_weights_and_earlier_tasks_stay_exact(tmp_path: Path) -> None:
    from piggyback_lab.methods.packnet.sequence import train_task
    from piggyback_lab.methods.packnet.state import BASE, PackNetState, init_owners, prune_owner
    from piggyback_lab.runs.config import compose
    from piggyback_lab.runs.sequence import module_factory
    from tests.test_packnet import _Tensors, _trainer

    torch.manual_seed(0)
    head, tasks = "heads.head", ["a", "b"]
    model = build_backbone("minivit", None, 10)
    owners = init_owners(model, head)
    key = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    assert sum(o.numel() for o in owners.values()) == expected_masked_count(model, head)
    prune_owner(model, owners, head, BASE, 0.5)
    state = PackNetState("minivit", head, model, owners, task_order=tasks)
    cfg = compose([
        "method=packnet", "backbone=minivit", "trainer=cpu", "method.epochs=1",
        "method.retrain_epochs=1", "method.lr=0.05", "method.lr_decay_every=10",
        "method.optimizer.weight_decay=5e-4",
    ])  # fmt: skip
    attention = prunable_weights(model, head)[key]
    base_mask = owners[key].eq(BASE)
    base_values = attention.detach()[base_mask].clone()
    fixed = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    train_task(cfg.method, state, tasks[0], _Tensors(1), module_factory(cfg), _trainer, None)
    with torch.no_grad():  # as MultiTaskModel predicts (attention's inference kernel)
        first = state.view(tasks[0]).eval()(fixed)
    train_task(cfg.method, state, tasks[1], _Tensors(2), module_factory(cfg), _trainer, None)
    assert torch.equal(attention.detach()[base_mask], base_values)  # the base's, untouched
    assert all(state.shares()[key][t] > 0 for t in tasks)  # each task owns attention weights
    state.save(tmp_path / "state.safetensors")
    host = MultiTaskModel.from_file(tmp_path / "state.safetensors")
    assert torch.equal(host.predict(fixed, tasks[0]), first)
    second = host.predict(fixed, tasks[1])
    assert torch.equal(host.predict(fixed, tasks[0]), first)
    assert torch.equal(host.predict(fixed, tasks[1]), second)


@pytest.mark.parametrize("train_bn", [False, True])
def test_norms_train_per_task_only_when_asked_and_embeddings_stay_frozen(
    train_bn: bool, tmp_path: Path
) -> None:
    from piggyback_lab.models.surgery import norm_layers

    torch.manual_seed(0)
    weights = tmp_path / "base.pt"
    torch.save(build_backbone("minivit", None, 10).state_dict(), weights)
    model = build_backbone("minivit", str(weights), 4)
    method = method_for(model, "piggyback", 4, f"method.train_bn={train_bn}", backbone="minivit")
    norms = [p for m in norm_layers(model).values() for p in m.parameters()]
    assert len(norms) == 10 and all(p.requires_grad is train_bn for p in norms)  # 2 per LN
    assert not model.class_token.requires_grad and not model.encoder.pos_embedding.requires_grad
    trained = {id(p) for g in method.param_groups() for p in g["params"]}
    assert all((id(p) in trained) is train_bn for p in norms)
    with torch.no_grad():
        for p in norms:  # as a task's training would move them
            p.add_(0.1 * torch.randn_like(p))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = method.eval()(images)
    path = tmp_path / "task.safetensors"
    method.export_task(path, {"dataset": "t", "class_names": list("abcd")})
    folded = apply_task(
        build_backbone("minivit", str(weights), 1), read_task_file(path), "heads.head"
    )
    with torch.no_grad():
        assert (
            torch.equal(folded.eval()(images), expected) is train_bn
        )  # norms travel only if trained


def test_a_stated_classifier_is_an_overlay_not_a_rewrite_of_the_registry() -> None:
    """backbone.classifier names another Linear layer for one build; the registry keeps its
    own (a6ce102's use_backbone rewrote it for the rest of the process)."""
    name = "mobilenet_v3_small"  # classifier.0 and classifier.3 are Linear layers
    assert classifier_name(name) == "classifier.3"
    model = build_backbone(name, None, 5, classifier="classifier.0")
    assert model.get_submodule("classifier.0").out_features == 5
    assert model.get_submodule("classifier.3").out_features == 1000
    assert classifier_name(name, "classifier.0") == "classifier.0"
    assert classifier_name(name) == "classifier.3"  # unchanged for everyone else
    with pytest.raises(UserError, match="is not a Linear layer"):
        classifier_name(name, "features.0")
