"""One resident backbone, many tasks: exact switching, exact restore, PackNet states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from piggyback_lab.methods.multitask import STRATEGIES, MultiTaskModel, task_paths
from piggyback_lab.methods.packnet.state import PackNetState, claim_free, init_owners, prune_owner
from piggyback_lab.methods.piggyback.masks import masked_layers
from piggyback_lab.models import build_backbone
from piggyback_lab.models.surgery import norm_layers
from piggyback_lab.utils.errors import UserError
from tests.conftest import method_for

CLASSES = 3


def make_task(
    path: Path,
    weights: Path,
    kind: str = "piggyback",
    seed: int = 0,
    density: float = 0.7,
    classes: int = CLASSES,
    **method_kwargs,
) -> torch.nn.Module:
    """Write a task file as if trained (random masks/BN/weights); returns its network in eval."""
    torch.manual_seed(seed)
    model = build_backbone("minicnn", str(weights), classes)
    if kind == "piggyback":
        overrides = [f"method.{k}={v}" for k, v in method_kwargs.items()]
        method = method_for(model, "piggyback", classes, *overrides)
        for layer in masked_layers(model).values():
            keep = torch.rand_like(layer.mask_real) < density
            # off entries below 0: a ternary task then holds -1s, sign-flipped weights that
            # leaving the task must restore too
            layer.mask_real.data = torch.where(keep, 1e-2, -1e-2)
        if method.hparams.train_bn:
            for bn in norm_layers(model).values():
                bn.running_mean.add_(torch.randn_like(bn.running_mean))
                bn.weight.data.mul_(2)
    elif kind == "classifier":
        method = method_for(model, "classifier_only", classes)
    else:
        method = method_for(model, "finetune", classes)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    names = [f"class{seed}_{i}" for i in range(classes)]
    method.export_task(path, {"dataset": "mini_digits", "class_names": names,
                              "num_classes": classes, "run_id": path.stem})  # fmt: skip
    return method.model.eval()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory, minicnn_weights: Path) -> dict:
    folder = tmp_path_factory.mktemp("tasks")
    specs = {
        "pig_a": {"kind": "piggyback", "seed": 1, "density": 0.6},
        "pig_b_ternary_bn": {"kind": "piggyback", "seed": 2, "density": 0.8,
                             "threshold_fn": "ternarizer", "train_bn": True},
        "head_only": {"kind": "classifier", "seed": 3},
        "finetuned": {"kind": "full", "seed": 4},
    }  # fmt: skip
    nets = {name: make_task(folder / f"{name}.safetensors", minicnn_weights, **spec)
            for name, spec in specs.items()}  # fmt: skip
    ternary = nets["pig_b_ternary_bn"]
    assert all(bool(m.mask().eq(-1).any()) for m in masked_layers(ternary).values())
    return {"folder": folder, "nets": nets, "weights": minicnn_weights}


def images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        # bit for bit, including the sign of zeros
        assert torch.equal(
            a[key].reshape(-1).view(torch.uint8), b[key].reshape(-1).view(torch.uint8)
        )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_switching_is_exact_and_none_restores_the_backbone(tasks, strategy: str) -> None:
    mt = MultiTaskModel("minicnn", str(tasks["weights"]), task_paths(tasks["folder"]), strategy)
    plain = snapshot(mt.model)
    x = images()
    order = ["pig_a", "pig_b_ternary_bn", "head_only", "finetuned"]
    first = {name: mt.predict(x, name) for name in order}
    for name in order:  # each task's logits are those of the network it was exported from
        with torch.no_grad():
            assert torch.equal(first[name], tasks["nets"][name](x)), name
    for a in order:
        for b in order:
            mt.select(a)
            mt.select(b)
            assert torch.equal(mt.predict(x, a), first[a]), (a, b)
    mt.select(None)
    assert mt.active is None
    assert_same_state(snapshot(mt.model), plain)


def test_predict_without_a_task_and_unknown_task_are_user_errors(tasks) -> None:
    mt = MultiTaskModel("minicnn", str(tasks["weights"]), [tasks["folder"] / "pig_a.safetensors"])
    with pytest.raises(UserError, match="no task selected"):
        mt.predict(images())
    with pytest.raises(UserError, match="unknown task 'nope'; loaded tasks: pig_a"):
        mt.select("nope")


def test_topk_names_classes_in_probability_order(tasks) -> None:
    mt = MultiTaskModel("minicnn", str(tasks["weights"]), task_paths(tasks["folder"]))
    x = images(3)
    top = mt.topk(x, "pig_a", k=2)
    probs = mt.predict(x, "pig_a").softmax(1)
    for row, p in zip(top, probs, strict=True):
        assert [name for name, _ in row] == [f"class1_{i}" for i in p.argsort(descending=True)[:2]]
        assert row[0][1] >= row[1][1]


def other_weights(folder: Path) -> Path:
    """A minicnn weights file with other random weights than the shared test backbone's."""
    torch.manual_seed(123)
    path = folder / "other.safetensors"
    save_file(build_backbone("minicnn", None, 10).state_dict(), str(path))
    return path


def test_task_of_other_backbone_weights_is_refused(tasks, tmp_path: Path) -> None:
    mt = MultiTaskModel("minicnn", str(other_weights(tmp_path)))
    with pytest.raises(UserError, match="made for other minicnn weights"):
        mt.add_task(tasks["folder"] / "pig_a.safetensors")
    assert not mt.tasks


def test_task_paths_take_files_lists_and_folders(tasks, tmp_path: Path) -> None:
    folder = tasks["folder"]
    assert len(task_paths(folder)) == 4
    both = f"{folder / 'pig_a.safetensors'},{folder / 'head_only.safetensors'}"
    assert [p.stem for p in task_paths(both)] == ["pig_a", "head_only"]
    with pytest.raises(UserError, match="does not exist"):
        task_paths(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="holds no task files"):
        task_paths(tmp_path)


def make_packnet_state(path: Path, task_order: list[str], classes: dict[str, list[str]]):
    """Write a PackNet state as if trained: each task perturbs the weights it claims."""
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 1)
    owners = init_owners(model, "classifier")
    state = PackNetState("minicnn", "classifier", model, owners, task_order=task_order)
    prune_owner(model, owners, "classifier", owner=1, fraction=0.5)
    for task in task_order:
        claim_free(owners, state.owner(task))
        with torch.no_grad():
            for name, own in owners.items():
                weight = model.get_submodule(name).weight
                weight.add_(own.eq(state.owner(task)) * torch.randn_like(weight))
        state.add_task(task, torch.nn.Linear(128, len(classes[task])), classes[task])
        prune_owner(model, owners, "classifier", owner=state.owner(task), fraction=0.3)
    state.save(path)
    return state


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_packnet_state_loads_into_the_same_object(tmp_path: Path, strategy: str) -> None:
    path = tmp_path / "packnet.safetensors"
    order = ["t1", "t2"]
    make_packnet_state(path, order, {t: [f"{t}_{i}" for i in range(CLASSES)] for t in order})
    mt = MultiTaskModel.from_file(path, strategy=strategy)
    plain = snapshot(mt.model)
    x = images()
    reference = {t: PackNetState.load(path).view(t).eval()(x).detach() for t in order}
    for a, b in (("t1", "t2"), ("t2", "t1"), ("t1", "t1")):
        assert torch.equal(mt.predict(x, a), reference[a])
        assert torch.equal(mt.predict(x, b), reference[b])
    assert mt.topk(x, "t2", k=1)[0][0][0].startswith("t2_")
    mt.select(None)
    assert_same_state(snapshot(mt.model), plain)
