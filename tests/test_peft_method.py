"""method=peft (piggyback_lab/methods/peft_tuners/): peft's tuners injected into minivit and
a tiny CNN; only adapter and classifier train; a task file round trip, hosted and switched
exactly beside another tuner's task and the project's LoRA; folding equals hosting and is
refused on a masked model; peft's refusals in one line; one tiny `src.train` that `src.eval`
scores again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, wrap
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.peft_tuners.layer import adapter_parameters, tuner_layers
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.models import build_backbone
from piggyback_lab.runs.evaluate import evaluate
from piggyback_lab.utils.errors import UserError
from tests.conftest import (
    tiny_net,
    train_on_minivit,
)


def mini_vit() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("minivit", None, 4)


NETS = {"minivit": (mini_vit, "heads.head"), "cnn": (tiny_net, "fc")}
TUNERS = {
    "lora": {"peft_type": "LORA", "r": 4},
    "loha": {"peft_type": "LOHA", "r": 4},
    "ia3": {"peft_type": "IA3"},
}
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def peft_task(net: str, tuner: str, **settings):
    make, classifier = NETS[net]
    return wrap(make(), "peft", classifier=classifier, backbone=net, peft=TUNERS[tuner], **settings)


def perturbed(task, seed: int) -> None:
    """Every adapter and classifier tensor random: what training would leave (a fresh
    adapter adds nothing, which would hide where it sits)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*adapter_parameters(task.model), *task.head.parameters()]:
            p.add_(0.1 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("tuner", TUNERS)
@pytest.mark.parametrize("net", NETS)
def test_only_the_adapter_and_the_classifier_train(net: str, tuner: str) -> None:
    make, classifier = NETS[net]
    with torch.no_grad():
        plain = make().eval()(X)
    task = peft_task(net, tuner).eval()
    layers = tuner_layers(task.model)
    convs = [n for n, m in layers.items() if isinstance(m.get_base_layer(), nn.Conv2d)]
    assert convs  # LoRA, LoHa and IA3 all take Conv2d
    assert not any(n.startswith(classifier) or "self_attention" in n for n in layers)
    with torch.no_grad():
        torch.testing.assert_close(task(X), plain)  # a fresh adapter computes the backbone
    trained = {n for n, p in task.model.named_parameters() if p.requires_grad}
    own = {
        n
        for n, p in task.model.named_parameters()
        if any(p is q for q in adapter_parameters(task.model))
    }
    assert own and trained == own | {f"{classifier}.weight", f"{classifier}.bias"}
    assert not any("base_layer" in n for n in own)
    optimizer, _ = task.recipe()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        task.model.get_parameter(n).numel() for n in trained
    )


def exported(tmp_path: Path, net: str, tuner: str, seed: int) -> tuple[Path, torch.Tensor]:
    task = peft_task(net, tuner)
    perturbed(task, seed)
    path = tmp_path / f"{tuner}{seed}.safetensors"
    export_task(task, path, [f"c{i}" for i in range(4)])
    with torch.no_grad():
        return path, task.eval()(X)


@pytest.mark.parametrize("net", NETS)
def test_a_task_file_round_trip_hosted_and_switched_exactly(tmp_path: Path, net: str) -> None:
    make, classifier = NETS[net]
    lora_path, out_lora = exported(tmp_path, net, "lora", 1)
    loha_path, out_loha = exported(tmp_path, net, "loha", 2)
    tf = read_task(lora_path)
    assert {k.split(".")[0] for k in tf.tensors} == {"peft", "classifier"}
    assert tf.meta["peft"]["peft_type"] == "LORA" and tf.meta["layers"]
    assert tf.meta["peft"]["target_modules"] == tf.meta["layers"]
    method_of(tf).check(tf)
    own = wrap(make(), "lora", classifier=classifier, backbone=net).eval()
    perturbed_lora(own)
    export_task(own, tmp_path / "own.safetensors", [f"c{i}" for i in range(4)])
    with torch.no_grad():
        out_own, plain = own(X), make().eval()(X)
    host = MultiTaskModel(net, None, [lora_path, loha_path, tmp_path / "own.safetensors"],
                          model=make(), classifier=classifier)  # fmt: skip
    backbone = {k: v.clone() for k, v in host.model.state_dict().items()}
    expected = {"lora1": out_lora, "loha2": out_loha, "own": out_own}
    for name in ["lora1", "loha2", "lora1", "own", "loha2", "own", "lora1"]:
        torch.testing.assert_close(host.predict(X, name), expected[name], rtol=0, atol=1e-6)
    host.select(None)
    assert host.model.state_dict().keys() == backbone.keys()
    assert all(torch.equal(v, backbone[k]) for k, v in host.model.state_dict().items())
    assert not tuner_layers(host.model) and not hasattr(host.model, "peft_config")
    with torch.no_grad():
        assert torch.equal(host.model(X), plain)


def perturbed_lora(task) -> None:
    with torch.no_grad():
        for p in task.parameters():
            if p.requires_grad:
                p.add_(0.05)


@pytest.mark.parametrize("tuner", ["lora", "ia3"])
@pytest.mark.parametrize("net", NETS)
def test_folding_equals_hosting(tmp_path: Path, net: str, tuner: str) -> None:
    make, classifier = NETS[net]
    path, hosted = exported(tmp_path, net, tuner, 3)
    tf = read_task(path)
    folded = method_of(tf).fold(make(), tf, classifier).eval()
    assert not tuner_layers(folded)
    with torch.no_grad():
        torch.testing.assert_close(folded(X), hosted, rtol=1e-5, atol=1e-5)


class Masked(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (weight.abs() > 0.01)


def test_folding_into_a_masked_model_is_refused_in_one_line(tmp_path: Path) -> None:
    path, _ = exported(tmp_path, "cnn", "lora", 4)
    tf = read_task(path)
    model = tiny_net()
    parametrize.register_parametrization(model.mid, "weight", Masked())
    with pytest.raises(UserError, match="silently drop its delta") as refused:
        method_of(tf).fold(model, tf, "fc")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("peft", "says"),
    [
        ({"peft_type": "LORA", "target_modules": ["nothing_here"]}, "refuses this backbone"),
        ({"peft_type": "FOURIERFT", "target_modules": ["conv"]}, "refuses this backbone"),
        ({"peft_type": "IA3", "r": 4}, "peft refuses it"),
        ({"peft_type": "NOPE"}, "is no peft tuner"),
        ({"peft_type": "LORA", "target_modules": ["fc"]}, "adapts the classifier"),
    ],
)
def test_what_peft_refuses_is_one_line(peft: dict, says: str) -> None:
    with pytest.raises(UserError, match=says) as refused:
        wrap(tiny_net(), "peft", classifier="fc", backbone="cnn", peft=peft)
    assert "\n" not in str(refused.value)


def test_a_corrupt_adapter_is_refused(tmp_path: Path) -> None:
    path, _ = exported(tmp_path, "cnn", "lora", 5)
    tf = read_task(path)
    key = next(k for k in tf.tensors if k.startswith("peft."))
    tf.tensors[key] = tf.tensors[key] * float("nan")
    with pytest.raises(UserError, match="NaN"):
        method_of(tf).check(tf)
    tf.tensors[key] = torch.zeros_like(tf.tensors[key])
    for stray, says in [
        ("conv.stray", "not named as lora_"),
        ("gone.lora_A.weight", "do not match"),
    ]:
        tf.tensors[f"peft.{stray}"] = torch.ones(1)
        with pytest.raises(UserError, match=says):
            method_of(tf).check(tf)
        del tf.tensors[f"peft.{stray}"]
    method_of(tf).check(tf)


def test_src_train_on_minivit_then_src_eval_scores_the_same(tmp_path: Path) -> None:
    record, weights, data = train_on_minivit(
        tmp_path, "method=peft", "method.peft.peft_type=LOHA", "method.peft.r=4"
    )
    assert record["method"] == "peft" and record["backbone"] == "minivit"
    tf = read_task(record["task_file"])
    assert tf.meta["peft"]["peft_type"] == "LOHA" and tf.meta["peft"]["r"] == 4
    common = [f"backbone.weights={weights}", f"paths.results_dir={tmp_path / 'results'}"]
    [scored] = evaluate(
        [f"tasks={record['task_file']}", f"out={tmp_path / 'evals'}", f"dataset.root={data}",
         *common]
    )  # fmt: skip
    assert scored["top1"] == record["top1"]
