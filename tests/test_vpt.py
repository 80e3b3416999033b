"""VPT (piggyback_lab/methods/vpt/): prompt tokens after the class token of timm's and
torchvision's ViTs, with no position embedding, shallow or deep, the official
initialisation; no tokens give the backbone exactly; only prompts and classifier train; a
task file round trip hosted and switched exactly beside other tasks; a CNN, corrupt files
and folding refused in one line; and one tiny `src.train` on minivit that `src.eval` and
`src.predict` serve."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, fold_task, wrap
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.methods.vpt.task import PROMPTS
from piggyback_lab.models import build_backbone
from piggyback_lab.runs.evaluate import evaluate
from piggyback_lab.runs.predict import predict
from piggyback_lab.taskfile import TaskFile, read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import (
    tiny_net,
    train_on_minivit,
)


def tiny_timm_vit() -> nn.Module:
    """timm's VisionTransformer (cls_token, pos_embed, blocks, norm, head), built offline."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8,
        depth=3,
    )  # fmt: skip


def mini_vit() -> nn.Module:
    """torchvision's VisionTransformer (class_token, encoder.layers): the project's minivit."""
    torch.manual_seed(0)
    return build_backbone("minivit", None, 4)


# net, classifier, blocks, width, pixels per patch
NETS = {
    "timm": (tiny_timm_vit, "head", lambda m: m.blocks, 192, 64),
    "torchvision": (mini_vit, "heads.head", lambda m: m.encoder.layers, 96, 64),
}
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
PATCHES = 16  # 32 x 32 images in 8 x 8 patches


def vpt(kind: str, **settings) -> nn.Module:
    net, classifier, *_ = NETS[kind]
    return wrap(net(), "vpt", classifier=classifier, backbone=kind, **settings)


def block_inputs(model: nn.Module, blocks: nn.Module) -> list[torch.Tensor]:
    """The token sequence each block is called with, on X (hooks after VPT's own)."""
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_pre_hook(lambda _, a: seen.append(a[0])) for b in blocks]
    with torch.no_grad():
        model.eval()(X)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("kind", NETS)
def test_prompts_follow_the_class_token_with_no_position_embedding(kind: str, deep: bool) -> None:
    net, _, blocks, width, patch_area = NETS[kind]
    model = net()
    plain = block_inputs(model, blocks(model))
    task = vpt(kind, num_tokens=7, deep=deep)
    prompted = block_inputs(task.model, blocks(task.model))
    prompts = task.prompts.prompts.detach()
    assert prompts.shape == (len(plain) if deep else 1, 7, width)
    val = math.sqrt(6 / (3 * patch_area + width))  # official vit.py:57
    assert prompts.abs().max() <= val and prompts.abs().max() > 0.9 * val
    first = prompted[0]
    assert first.shape[1] == 1 + 7 + PATCHES
    assert torch.equal(first[:, 0], plain[0][:, 0]) and torch.equal(first[:, 8:], plain[0][:, 1:])
    for i, x in enumerate(prompted):  # deep: new prompts before every block
        row = i if deep else 0
        assert x.shape[1] == 1 + 7 + PATCHES
        if deep or i == 0:
            assert torch.equal(x[:, 1:8], prompts[row].expand(3, -1, -1))
        else:  # shallow: the prompts' outputs of the block before, carried on
            assert not torch.equal(x[:, 1:8], prompts[0].expand(3, -1, -1))


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("kind", NETS)
def test_prompts_change_the_output_and_no_tokens_give_the_backbone_exactly(
    kind: str, deep: bool
) -> None:
    net = NETS[kind][0]
    with torch.no_grad():
        plain = net().eval()(X)
    task = vpt(kind, deep=deep).eval()  # num_classes unset: the backbone's own classifier
    with torch.no_grad():
        assert not torch.allclose(task(X), plain, atol=1e-4)
        task.as_pretrained()  # zero prompt tokens
        assert torch.equal(task(X), plain)
        for handle in task.hooks:
            handle.remove()
        assert torch.equal(task(X), plain)


@pytest.mark.parametrize("kind", NETS)
def test_only_the_prompts_and_the_classifier_train_and_the_backbone_stays_in_eval(
    kind: str,
) -> None:
    task = vpt(kind, num_classes=3, prompt_dropout=0.1)
    head = NETS[kind][1]
    trained = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trained == {"prompts.prompts", f"model.{head}.weight", f"model.{head}.bias"}
    groups = task.trainable_parameters()
    assert [len(g["params"]) for g in groups] == [1, 2] and groups[0]["params"][0] is (
        task.prompts.prompts
    )
    task.train()  # official vit.py:89-100: the frozen backbone in eval, the prompts' dropout on
    assert task.prompts.dropout.training and not any(m.training for m in task.model.modules())


def test_a_training_step_changes_the_outputs_and_only_prompts_and_classifier() -> None:
    task = vpt("torchvision", num_classes=3, deep=True)
    optimizer, _ = task.recipe()
    before = {k: v.clone() for k, v in task.state_dict().items()}
    with torch.no_grad():
        out = task.eval()(X)
    task.train()
    F.cross_entropy(task(X), torch.tensor([0, 1, 2])).backward()
    optimizer.step()
    changed = {k for k, v in task.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"prompts.prompts", "model.heads.head.weight", "model.heads.head.bias"}
    with torch.no_grad():
        assert not torch.allclose(task.eval()(X), out)


def perturbed(task: nn.Module, seed: int) -> nn.Module:
    """Prompts and classifier random: what training would leave."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [task.prompts.prompts, *task.head.parameters()]:
            p.copy_(torch.randn(p.shape, generator=generator))
    return task.eval()


def exported(tmp_path: Path, name: str, task: nn.Module) -> tuple[Path, torch.Tensor]:
    path = tmp_path / f"{name}.safetensors"
    export_task(task, path, [f"c{i}" for i in range(task.head.out_features)])
    with torch.no_grad():
        return path, task(X)


@pytest.mark.parametrize("kind", NETS)
def test_tasks_switch_exactly_beside_another_methods_and_leave_the_backbone(
    tmp_path: Path, kind: str
) -> None:
    net, classifier, *_ = NETS[kind]
    a, out_a = exported(tmp_path, "a", perturbed(vpt(kind, num_classes=3), 1))
    b, out_b = exported(tmp_path, "b", perturbed(vpt(kind, num_tokens=3, deep=True), 2))
    lora = wrap(net(), "lora", classifier=classifier, backbone=kind).eval()
    c, out_lora = exported(tmp_path, "lora", lora)
    tf = read_task(a)
    assert sorted(tf.tensors) == [f"classifier.{k}" for k in ("bias", "weight")] + [PROMPTS]
    assert tf.meta["num_tokens"] == 5 and tf.meta["deep"] is False
    bits = method_of(tf).storage(tf)["bits_per_weight"]
    assert bits == pytest.approx(32 * tf.tensors[PROMPTS].numel() / tf.meta["trunk_weights"])
    host = MultiTaskModel(kind, None, [a, b, c], model=net(), classifier=classifier)
    backbone = {k: v.clone() for k, v in host.model.state_dict().items()}
    expected = {"a": out_a, "b": out_b, "lora": out_lora}
    for name in ["a", "b", "a", "lora", "b", "lora", "a"]:
        assert torch.equal(host.predict(X, name), expected[name]), name
    host.select(None)
    assert all(torch.equal(v, backbone[k]) for k, v in host.model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in host.model.modules())
    with torch.no_grad():
        assert torch.equal(host.model(X), net().eval()(X))


def test_folding_is_refused_in_one_line(tmp_path: Path) -> None:
    path, _ = exported(tmp_path, "a", vpt("torchvision"))
    tf = read_task(path)
    for fold in (
        lambda: fold_task(mini_vit(), path),
        lambda: method_of(tf).fold(mini_vit(), tf, "heads.head"),
    ):
        with pytest.raises(UserError, match="cannot be folded") as refused:
            fold()
        assert "\n" not in str(refused.value) and "prompt tokens" in str(refused.value)


def test_a_backbone_without_tokens_is_refused_in_one_line() -> None:
    with pytest.raises(UserError) as refused:
        wrap(tiny_net(), "vpt", classifier="fc", backbone="minicnn")
    assert str(refused.value) == (
        "vpt prepends prompt tokens to a transformer's token sequence; minicnn has none "
        "(vpt takes a timm or torchvision VisionTransformer)"
    )


def edited(tf: TaskFile, tensors=None, meta=None) -> TaskFile:
    new_tensors, new_meta = dict(tf.tensors), dict(tf.meta)
    if tensors:
        tensors(new_tensors)
    if meta:
        meta(new_meta)
    return TaskFile(path=tf.path, meta=new_meta, tensors=new_tensors)


CORRUPT = {
    "no prompts": (lambda t: t.pop(PROMPTS), None),
    "no count": (None, lambda m: m.pop("num_tokens")),
    "another count": (None, lambda m: m.update(num_tokens=4)),
    "deep not a flag": (None, lambda m: m.update(deep="yes")),
    "two rows, not deep": (lambda t: t.update({PROMPTS: torch.zeros(2, 5, 96)}), None),
    "a matrix": (lambda t: t.update({PROMPTS: torch.zeros(5, 96)}), None),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_every_corrupt_task_is_refused(tmp_path: Path, case: str) -> None:
    tf = read_task_file(exported(tmp_path, "a", vpt("torchvision"))[0])
    broken = edited(tf, *CORRUPT[case])
    with pytest.raises(UserError, match=f"task file {tf.path}"):
        method_of(broken).check(broken)
    method_of(tf).check(tf)  # the file as written passes


@pytest.mark.parametrize(
    "prompts", [torch.zeros(1, 5, 64), torch.zeros(3, 5, 96)], ids=["width", "depth"]
)
def test_prompts_for_another_backbone_are_refused_by_the_host(
    tmp_path: Path, prompts: torch.Tensor
) -> None:
    tf = read_task_file(exported(tmp_path, "a", vpt("torchvision"))[0])
    broken = edited(tf, lambda t: t.update({PROMPTS: prompts}), lambda m: m.update(deep=True))
    method_of(broken).check(broken)  # well-formed: only the backbone can tell
    with pytest.raises(UserError, match="it was made for another backbone"):
        MultiTaskModel("torchvision", None, [broken], model=mini_vit(), classifier="heads.head")


def test_src_train_on_minivit_then_src_eval_and_src_predict_serve_it(tmp_path: Path) -> None:
    record, weights, data = train_on_minivit(
        tmp_path, "method=vpt", "method.deep=true", "method.num_tokens=3"
    )
    assert record["method"] == "vpt" and record["backbone"] == "minivit"
    assert record["trainable_params"] == 2 * 3 * 96 + 3 * 96 + 3  # prompts, classifier
    tf = read_task(record["task_file"])
    assert tf.meta["deep"] is True and tf.tensors[PROMPTS].shape == (2, 3, 96)
    common = [f"backbone.weights={weights}", f"paths.results_dir={tmp_path / 'results'}"]
    [scored] = evaluate(
        [f"tasks={record['task_file']}", f"out={tmp_path / 'evals'}", f"dataset.root={data}",
         *common]
    )  # fmt: skip
    assert scored["top1"] == record["top1"]
    predicted = predict(
        [f"task={record['task_file']}", f"images={data / 'test'}", "topk=1", *common]
    )
    assert len(predicted) == 6 and all(len(p["topk"]) == 1 for p in predicted)
