"""AdaptFormer (piggyback_lab/methods/adaptformer/): the official adapter beside each block's
MLP on timm's and torchvision's ViTs, computing the backbone exactly at start; only adapters
and classifier train; a task file round trip hosted and switched exactly beside other
tasks; a CNN and folding refused in one line; and one tiny `src.train` on minivit that
`src.eval` and `src.predict` serve."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from piggyback_lab.methods import method_of
from piggyback_lab.methods.adaptformer.layer import adaptformer_layers
from piggyback_lab.methods.api import export_task, fold_task, wrap
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.models import build_backbone
from piggyback_lab.runs.evaluate import evaluate
from piggyback_lab.runs.predict import predict
from piggyback_lab.taskfile import TaskFile, read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import (
    tiny_net,
    train_on_minivit,
)

BOTTLENECK = 64  # the config's default, the official --ffn_num


def tiny_timm_vit() -> nn.Module:
    """timm's VisionTransformer (blocks[i].norm2, .mlp), small and built offline."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8,
        depth=2,
    )  # fmt: skip


def mini_vit() -> nn.Module:
    """torchvision's VisionTransformer (encoder_layer_i.ln_2, .mlp): the project's minivit."""
    torch.manual_seed(0)
    return build_backbone("minivit", None, 4)


NETS = {"timm": (tiny_timm_vit, "head", 192), "torchvision": (mini_vit, "heads.head", 96)}
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def perturbed(task, seed: int) -> None:
    """Every adapter's and the classifier's tensors random: what training would leave
    (a fresh adapter's zero up-projection hides where the adapter sits)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adaptformer_layers(task.model).values():
            for p in adapter.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        for p in task.head.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("kind", NETS)
def test_a_fresh_adapter_computes_the_backbone_exactly(kind: str) -> None:
    net, classifier, dim = NETS[kind]
    plain = net().eval()
    with torch.no_grad():
        expected = plain(X)
    task = wrap(net(), "adaptformer", classifier=classifier).eval()
    adapters = adaptformer_layers(task.model)
    assert len(adapters) == 2
    for adapter in adapters.values():  # the official "lora" init (models/adapter.py:43-48)
        assert adapter.scale == 0.1 and adapter.down_proj.weight.shape == (BOTTLENECK, dim)
        assert not adapter.up_proj.weight.any() and not adapter.up_proj.bias.any()
        assert not adapter.down_proj.bias.any()
        assert adapter.down_proj.weight.abs().max() <= 1 / math.sqrt(dim)  # a = sqrt(5)
        assert adapter.down_proj.weight.std() > 0.5 / math.sqrt(3 * dim)
    with torch.no_grad():
        assert torch.equal(task(X), expected)


def test_the_adapter_reads_the_residual_stream_and_joins_the_blocks_output() -> None:
    """models/custom_modules.py:77-93: x + mlp(norm2(x)) + s * up(relu(down(x))), x the
    stream after attention."""
    task = wrap(tiny_timm_vit(), "adaptformer", classifier="head").eval()
    perturbed(task, 1)
    block, adapter = task.model.blocks[0], adaptformer_layers(task.model)["blocks.0"]
    tokens = torch.randn(2, 17, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = tokens + block.attn(block.norm1(tokens))
        up = adapter.up_proj(torch.relu(adapter.down_proj(x)))
        torch.testing.assert_close(block(tokens), x + block.mlp(block.norm2(x)) + 0.1 * up)


@pytest.mark.parametrize("kind", NETS)
def test_only_the_adapters_and_the_classifier_train(kind: str) -> None:
    net, classifier, dim = NETS[kind]
    task = wrap(net(), "adaptformer", classifier=classifier)
    per_block = 2 * dim * BOTTLENECK + BOTTLENECK + dim
    head = sum(p.numel() for p in task.head.parameters())
    assert task.trainable_parameter_count() == 2 * per_block + head
    trained = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trained == {
        n for n, _ in task.model.named_parameters()
        if ".adaptmlp." in n or n.startswith(classifier + ".")
    }  # fmt: skip
    optimizer, _ = task.recipe()
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3]


def test_a_training_step_changes_the_outputs_and_only_adapters_and_classifier() -> None:
    torch.manual_seed(0)
    task = wrap(mini_vit(), "adaptformer", classifier="heads.head")
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    with torch.no_grad():
        first = task.eval()(X)
    optimizer, _ = task.recipe()
    for _ in range(2):  # the first step moves up_proj off zero, the second down_proj too
        task.train()
        optimizer.zero_grad()
        F.cross_entropy(task(X), torch.tensor([0, 1, 2])).backward()
        optimizer.step()
    with torch.no_grad():
        assert not torch.equal(task.eval()(X), first)
    changed = {k for k, v in task.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".adaptmlp." in k or k.startswith("heads.head.") for k in changed)
    assert any(k.endswith("adaptmlp.down_proj.weight") for k in changed)


def exported(tmp_path: Path, name: str, seed: int, net=mini_vit, classifier="heads.head", **kw):
    task = wrap(net(), "adaptformer", classifier=classifier, backbone="sequential", **kw)
    perturbed(task, seed)
    path = tmp_path / f"{name}.safetensors"
    export_task(task, path, [f"c{i}" for i in range(4)])
    task.eval()
    with torch.no_grad():
        return path, task.model(X)


def test_a_task_file_stores_only_adapters_and_classifier(tmp_path: Path) -> None:
    path, _ = exported(tmp_path, "a", 1)
    tf = read_task(path)
    assert {k.split(".")[0] for k in tf.tensors} == {"adaptformer", "classifier"}
    assert tf.meta["blocks"] == {f"encoder.layers.encoder_layer_{i}": 96 for i in (0, 1)}
    assert (tf.meta["bottleneck"], tf.meta["scale"]) == (BOTTLENECK, 0.1)
    stored = sum(t.numel() for k, t in tf.tensors.items() if k.startswith("adaptformer."))
    assert stored == 2 * (2 * 96 * BOTTLENECK + BOTTLENECK + 96)
    bits = method_of(tf).storage(tf)["bits_per_weight"]
    assert bits == pytest.approx(32 * stored / tf.meta["trunk_weights"])


@pytest.mark.parametrize("kind", NETS)
def test_tasks_switch_exactly_beside_another_methods_and_leave_the_backbone(
    tmp_path: Path, kind: str
) -> None:
    net, classifier, _ = NETS[kind]
    a, out_a = exported(tmp_path, "a", 1, net, classifier)
    b, out_b = exported(tmp_path, "b", 2, net, classifier, layernorm_option="in")
    lora = wrap(net(), "lora", classifier=classifier, backbone="sequential").eval()
    export_task(lora, tmp_path / "lora.safetensors", [f"c{i}" for i in range(4)])
    with torch.no_grad():
        out_lora, plain = lora.model(X), net().eval()(X)
    host = MultiTaskModel("sequential", None, [a, b, tmp_path / "lora.safetensors"],
                          model=net(), classifier=classifier)  # fmt: skip
    backbone = {k: v.clone() for k, v in host.model.state_dict().items()}
    expected = {"a": out_a, "b": out_b, "lora": out_lora}
    for name in ["a", "b", "a", "lora", "b", "lora", "a"]:
        assert torch.equal(host.predict(X, name), expected[name]), name
    host.select(None)
    assert host.model.state_dict().keys() == backbone.keys()
    assert all(torch.equal(v, backbone[k]) for k, v in host.model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in host.model.modules())
    with torch.no_grad():
        assert torch.equal(host.model(X), plain)  # net() seeds: the same classifier


def test_folding_is_refused_in_one_line(tmp_path: Path) -> None:
    path, _ = exported(tmp_path, "a", 1)
    tf = read_task(path)
    for fold in (
        lambda: fold_task(mini_vit(), path),
        lambda: method_of(tf).fold(mini_vit(), tf, "heads.head"),
    ):
        with pytest.raises(UserError, match="cannot be folded") as refused:
            fold()
        assert "\n" not in str(refused.value) and "ReLU" in str(refused.value)


def test_a_backbone_without_transformer_blocks_is_refused_in_one_line() -> None:
    with pytest.raises(UserError) as refused:
        wrap(tiny_net(), "adaptformer", classifier="fc", backbone="minicnn")
    assert str(refused.value) == (
        "adaptformer adds an adapter beside each transformer block's MLP; minicnn has none"
    )


def edited(tf: TaskFile, tensors=None, meta=None) -> TaskFile:
    new_tensors, new_meta = dict(tf.tensors), {**tf.meta, "blocks": dict(tf.meta["blocks"])}
    if tensors:
        tensors(new_tensors)
    if meta:
        meta(new_meta)
    return TaskFile(path=tf.path, meta=new_meta, tensors=new_tensors)


L0 = "encoder.layers.encoder_layer_0"
CORRUPT = {
    "no blocks": (None, lambda m: m.update(blocks={})),
    "no bottleneck": (None, lambda m: m.pop("bottleneck")),
    "a bottleneck of another size": (None, lambda m: m.update(bottleneck=32)),
    "scale zero": (None, lambda m: m.update(scale=0.0)),
    "an unknown layernorm option": (None, lambda m: m.update(layernorm_option="both")),
    "a width not an integer": (None, lambda m: m["blocks"].update({L0: 96.0})),
    "no up-projection": (lambda t: t.pop(f"adaptformer.{L0}.up_proj.weight"), None),
    "a stray norm": (lambda t: t.update({f"adaptformer.{L0}.norm.weight": torch.ones(96)}), None),
    "down a row short": (
        lambda t: t.update({f"adaptformer.{L0}.down_proj.weight": torch.ones(63, 96)}),
        None,
    ),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_every_corrupt_task_is_refused(tmp_path: Path, case: str) -> None:
    tf = read_task_file(exported(tmp_path, "a", 1)[0])
    tensors, meta = CORRUPT[case]
    broken = edited(tf, tensors, meta)
    with pytest.raises(UserError, match=f"task file {tf.path}"):
        method_of(broken).check(broken)
    method_of(tf).check(tf)  # the file as written passes


def test_a_task_for_a_block_this_backbone_lacks_is_refused_by_the_host(tmp_path: Path) -> None:
    tf = read_task_file(exported(tmp_path, "a", 1)[0])
    moved = f"{L0[:-1]}7"

    def rename(tensors: dict) -> None:
        for key in [k for k in tensors if k.startswith(f"adaptformer.{L0}.")]:
            tensors[key.replace(L0, moved)] = tensors.pop(key)

    broken = edited(tf, rename, lambda m: m["blocks"].update({moved: m["blocks"].pop(L0)}))
    method_of(broken).check(broken)  # well-formed: only the backbone can tell
    with pytest.raises(UserError, match=f"beside block {moved}, which this backbone lacks"):
        MultiTaskModel("sequential", None, [broken], model=mini_vit(), classifier="heads.head")


def test_src_train_on_minivit_then_src_eval_and_src_predict_serve_it(tmp_path: Path) -> None:
    record, weights, data = train_on_minivit(tmp_path, "method=adaptformer", "method.bottleneck=8")
    assert record["method"] == "adaptformer" and record["backbone"] == "minivit"
    tf = read_task(record["task_file"])
    assert tf.meta["bottleneck"] == 8 and len(tf.meta["blocks"]) == 2
    common = [f"backbone.weights={weights}", f"paths.results_dir={tmp_path / 'results'}"]
    [scored] = evaluate(
        [f"tasks={record['task_file']}", f"out={tmp_path / 'evals'}", f"dataset.root={data}",
         *common]
    )  # fmt: skip
    assert scored["top1"] == record["top1"]
    predicted = predict(
        [f"task={record['task_file']}", f"images={data / 'test'}", "topk=1", *common]
    )
    assert [len(p["topk"]) for p in predicted] == [1] * 6
    assert {p["topk"][0]["class"] for p in predicted} <= {"c0", "c1", "c2"}
