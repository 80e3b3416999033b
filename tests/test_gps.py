"""GPS (piggyback_lab/methods/gps/): the selection keeps exactly k columns per row by
accumulated gradient magnitude; only those positions and the classifier train; a task file
round trip folds and hosts to the trained outputs and switches exactly beside a LoRA task;
corrupt files are refused; and one tiny `src.train` on minivit that `src.eval` scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, wrap
from piggyback_lab.methods.gps.layer import gps_layers, top_k_columns
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.models import build_backbone
from piggyback_lab.models.surgery import prunable_slots, prunable_weights
from piggyback_lab.runs.evaluate import evaluate
from piggyback_lab.taskfile import read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import (
    assert_folded_and_hosted_match,
    edited_task_file,
    tiny_net,
    train_on_minivit,
)

K = 2


def mini_vit() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("minivit", None, 4)


NETS = {"cnn": (tiny_net, "fc", 8), "vit": (mini_vit, "heads.head", 32)}


def batches(size: int, seed: int, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, 3, size, size, generator=g), torch.tensor([0, 1, 1])) for _ in range(n)]


def selected(kind: str, seed: int = 0, k: int = K):
    net, classifier, size = NETS[kind]
    # step schedule: the cosine's first warm-up epoch has lr 0
    task = wrap(net(), "gps", classifier=classifier, backbone="sequential", k=k, lr_schedule="step")
    task.select(batches(size, seed))
    return task


def trained(kind: str, tmp_path: Path, name: str, seed: int) -> tuple:
    """A selected task after a few Adam steps, exported; its outputs on X."""
    task = selected(kind, seed)
    opt, _ = task.recipe(epochs=10)
    for x, y in batches(NETS[kind][2], seed + 1, 3):
        opt.zero_grad()
        F.cross_entropy(task(x), y).backward()
        opt.step()
    path = tmp_path / f"{name}.safetensors"
    export_task(task, path, [f"c{i}" for i in range(4)])
    return task.eval(), path


def weights_now(model: nn.Module, classifier: str) -> dict[str, torch.Tensor]:
    """Every prunable weight as the network computes it (through its parametrization)."""
    return {k: getattr(m, p).detach().clone() for k, m, p in prunable_slots(model, classifier)}


def test_top_k_columns_are_the_largest_magnitudes_per_row_in_order() -> None:
    grad = torch.tensor([[0.1, -5.0, 2.0, 0.0], [3.0, 1.0, -4.0, 0.5]])
    assert top_k_columns(grad, 2).tolist() == [[1, 2], [0, 2]]
    conv = torch.zeros(2, 1, 2, 2)
    conv[0, 0, 1, 1], conv[1, 0, 0, 1] = -1.0, 1.0  # a kernel's row is flattened
    assert top_k_columns(conv, 1).tolist() == [[3], [1]]


def test_selection_follows_the_accumulated_gradient_of_the_loss() -> None:
    data = batches(8, 0)
    reference = tiny_net()
    reference.fc = nn.Linear(7, 4)
    task = wrap(tiny_net(), "gps", classifier="fc", k=K)
    task.head.load_state_dict(reference.fc.state_dict())
    task.select(data)
    for x, y in data:
        F.cross_entropy(reference(x), y).backward()
    for key, delta in gps_layers(task.model).items():
        grad = reference.get_submodule(key).weight.grad.abs().flatten(1)
        chosen = grad.gather(1, delta.columns)
        assert delta.columns.shape == (grad.shape[0], K) and bool(delta.chosen)
        assert (chosen.min(1).values >= grad.topk(K, 1).values[:, -1]).all(), key
    assert all(p.grad is None for p in task.parameters())
    assert not any(w.requires_grad for w in prunable_weights(task.model, "fc").values())


@pytest.mark.parametrize("kind", NETS)
def test_only_the_selected_weights_and_the_classifier_change(kind: str) -> None:
    net, classifier, size = NETS[kind]
    task = selected(kind)
    rows = sum(w.shape[0] for w in prunable_weights(net(), classifier).values())
    head = sum(p.numel() for p in task.head.parameters())
    assert task.trainable_parameter_count() == K * rows + head
    assert task.state_facts()["selected_weights"] == K * rows
    before = weights_now(task.model, classifier)
    opt, _ = task.recipe(epochs=10)
    for x, y in batches(size, 5, 3):
        opt.zero_grad()
        F.cross_entropy(task(x), y).backward()
        opt.step()
    for key, delta in gps_layers(task.model).items():
        after = weights_now(task.model, classifier)[key]
        chosen = (
            torch.zeros_like(after, dtype=torch.bool).flatten(1).scatter_(1, delta.columns, True)
        )
        chosen = chosen.view(after.shape)
        assert torch.equal(after[~chosen], before[key][~chosen]), key
        assert (after[chosen] != before[key][chosen]).any(), key


def test_a_task_stores_columns_and_deltas_compactly(tmp_path: Path) -> None:
    task, path = trained("vit", tmp_path, "a", 1)
    tf = read_task(path)
    assert {k.split(".")[0] for k in tf.tensors} == {"columns", "delta", "classifier"}
    assert all(t.dtype == torch.int16 for k, t in tf.tensors.items() if k.startswith("columns."))
    stored = sum(
        t.numel() * t.element_size() for k, t in tf.tensors.items() if k[:5] in ("colum", "delta")
    )
    assert method_of(tf).storage(tf)["bits_per_weight"] == pytest.approx(
        8 * stored / tf.meta["trunk_weights"]
    )
    assert (
        method_of(tf).state_facts(tf)["selected_weights"] == task.state_facts()["selected_weights"]
    )


@pytest.mark.parametrize("kind", NETS)
def test_folding_and_hosting_give_the_trained_outputs(tmp_path: Path, kind: str) -> None:
    net, classifier, size = NETS[kind]
    task, path = trained(kind, tmp_path, "a", 1)
    x = batches(size, 9, 1)[0][0]
    assert_folded_and_hosted_match(task, path, net, classifier, x)
    tf = read_task_file(path)
    folded = weights_now(method_of(tf).fold(net(), tf, classifier), classifier)
    plain = weights_now(net(), classifier)
    for key in tf.meta["layers"]:
        w0, w = plain[key].flatten(1), folded[key].flatten(1)
        cols, delta = tf.tensors[f"columns.{key}"].long(), tf.tensors[f"delta.{key}"]
        assert torch.equal(w.gather(1, cols), w0.gather(1, cols) + delta)
        keep = torch.ones_like(w0, dtype=torch.bool).scatter_(1, cols, False)
        assert torch.equal(w[keep], w0[keep])


@pytest.mark.parametrize("strategy", ["copy", "restore"])
def test_tasks_switch_exactly_beside_a_lora_task_and_leave_the_backbone(
    tmp_path: Path, strategy: str
) -> None:
    a, path_a = trained("vit", tmp_path, "a", 1)
    b, path_b = trained("vit", tmp_path, "b", 2)
    lora = wrap(mini_vit(), "lora", classifier="heads.head", backbone="sequential").eval()
    export_task(lora, tmp_path / "lora.safetensors", [f"c{i}" for i in range(4)])
    x = batches(32, 9, 1)[0][0]
    with torch.no_grad():
        expected = {"a": a.model(x), "b": b.model(x), "lora": lora.model(x)}
    host = MultiTaskModel("sequential", None, [path_a, path_b, tmp_path / "lora.safetensors"],
                          strategy=strategy, model=mini_vit(), classifier="heads.head")  # fmt: skip
    backbone = {k: v.clone() for k, v in host.model.state_dict().items()}
    for name in ["a", "b", "lora", "a", "lora", "b", "a"]:
        torch.testing.assert_close(host.predict(x, name), expected[name], rtol=0, atol=1e-5)
    first = host.predict(x, "b")
    host.select("lora")
    assert torch.equal(host.predict(x, "b"), first)  # bit for bit on re-entering
    host.select(None)
    assert all(torch.equal(v, backbone[k]) for k, v in host.model.state_dict().items())


def corrupt_cases(key: str) -> dict:
    def put(name: str, value) -> callable:
        return lambda t: t.update({f"{name}.{key}": value(t[f"{name}.{key}"])})

    def duplicate(c: torch.Tensor) -> torch.Tensor:
        c = c.clone()
        c[0, 1] = c[0, 0]
        return c

    def nan(d: torch.Tensor) -> torch.Tensor:
        d = d.clone()
        d[0, 0] = float("nan")
        return d

    return {
        "a column out of range": put("columns", lambda c: c + 10_000),
        "a negative column": put("columns", lambda c: c - c.max() - 1),
        "a duplicate column": put("columns", duplicate),
        "a non-finite delta": put("delta", nan),
        "float columns": put("columns", lambda c: c.float()),
        "a delta of another shape": put("delta", lambda d: d[:, :1]),
        "no delta": lambda t: t.pop(f"delta.{key}"),
    }


CASES = list(corrupt_cases("x"))


@pytest.mark.parametrize("case", CASES)
def test_every_corrupt_task_is_refused(tmp_path: Path, case: str) -> None:
    tf = read_task_file(trained("cnn", tmp_path, "a", 1)[1])
    broken = edited_task_file(tf, corrupt_cases("mid")[case])
    with pytest.raises(UserError, match=f"task file {tf.path}"):
        method_of(broken).check(broken)
    method_of(tf).check(tf)  # the file as written passes
    with pytest.raises(UserError, match="lists no selected layers"):
        method_of(tf).check(edited_task_file(tf, layers=lambda old: {}))


def test_an_unselected_task_is_not_stored_and_a_net_without_weights_is_refused(
    tmp_path: Path,
) -> None:
    task = wrap(tiny_net(), "gps", classifier="fc", k=K)
    with pytest.raises(UserError, match="call select"):
        export_task(task, tmp_path / "a.safetensors")
    net = nn.Sequential(nn.Flatten(), nn.LayerNorm(12), nn.Linear(12, 3))
    with pytest.raises(UserError, match="gps selects among Conv, Linear"):
        wrap(net, "gps", classifier="2", backbone="normonly")


def test_src_train_on_minivit_then_src_eval_gives_its_top1(tmp_path: Path) -> None:
    record, weights, data = train_on_minivit(
        tmp_path, "method=gps", "method.k=4", "method.select_batches=2"
    )
    assert record["method"] == "gps" and record["backbone"] == "minivit"
    tf = read_task(record["task_file"])
    rows = sum(shape[0] for shape in tf.meta["layers"].values())
    assert record["selected_weights"] == 4 * rows and tf.meta["k"] == 4
    common = [f"backbone.weights={weights}", f"paths.results_dir={tmp_path / 'results'}"]
    [scored] = evaluate(
        [f"tasks={record['task_file']}", f"out={tmp_path / 'evals'}", f"dataset.root={data}",
         *common]
    )  # fmt: skip
    assert scored["top1"] == record["top1"]
