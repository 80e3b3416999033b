"""Adding a method is one package plus one config: a method defined in tests/ alone (no edit
under src/) trains, writes its task file, is evaluated by src.eval, and switches in a
MultiTaskModel beside a Piggyback task, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tests.tiny_method  # noqa: F401  (registers tiny_scale)
from piggyback_lab.methods import method_names, method_of
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.registry import TaskMethod, register
from piggyback_lab.methods.tasks import apply_task
from piggyback_lab.models import build_backbone
from piggyback_lab.runs.evaluate import evaluate
from piggyback_lab.runs.records import read_records
from piggyback_lab.taskfile import read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import ROOT, make_image_folder, tiny_overrides, train_in_process

SEARCHPATH = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory, minicnn_weights: Path) -> dict[str, Path]:
    """A tiny_scale task and a Piggyback task trained on the same data and backbone."""
    root = tmp_path_factory.mktemp("registry")
    data = make_image_folder(root / "data", classes=3, per_class=4, size=32)
    base = [
        *tiny_overrides(root, minicnn_weights, data),
        f"paths.output_dir={root / 'outputs' / 'job'}",
        "protocol=faithful",
    ]
    for method in ("tiny_scale", "piggyback"):
        train_in_process(SEARCHPATH, f"method={method}", *base)
    return {read_task_file(p).meta["method"]: p for p in (root / "results" / "tasks").glob("*")} | {
        "root": root,
        "data": data,
        "weights": minicnn_weights,
    }


def test_the_method_trains_and_writes_its_own_task_file(tasks) -> None:
    assert "tiny_scale" in method_names()
    tf = read_task_file(tasks["tiny_scale"])
    assert tf.kind == "tiny_scale" and method_of(tf).name == "tiny_scale"
    assert {k.split(".")[0] for k in tf.tensors} == {"scale", "classifier"}
    [record] = [
        r for r in read_records(tasks["root"] / "results" / "runs") if r["method"] == "tiny_scale"
    ]
    assert record["task_file"] == str(tasks["tiny_scale"]) and record["top1"] is not None


def test_src_eval_scores_it_as_training_did(tasks) -> None:
    root = tasks["root"]
    [record] = evaluate(
        [
            f"tasks={tasks['tiny_scale']}",
            f"out={root / 'evals'}",
            f"paths.results_dir={root / 'results'}",
            f"dataset.root={tasks['data']}",
            f"backbone.weights={tasks['weights']}",
        ]
    )
    assert record["method"] == "tiny_scale" and record["top1"] == record["train_top1"]


def test_it_switches_exactly_beside_a_piggyback_task(tasks) -> None:
    host = MultiTaskModel(
        "minicnn", str(tasks["weights"]), [tasks["tiny_scale"], tasks["piggyback"]]
    )
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    folded = {}
    for method in ("tiny_scale", "piggyback"):
        model = build_backbone("minicnn", str(tasks["weights"]), 1)
        tf = read_task_file(tasks[method])
        folded[method] = apply_task(model, tf, "classifier").eval()(x)
    names = {m: Path(tasks[m]).stem for m in folded}
    for method in ("tiny_scale", "piggyback", "tiny_scale"):  # A -> B -> A
        assert torch.equal(host.predict(x, names[method]), folded[method])
    host.select(None)
    plain = build_backbone("minicnn", str(tasks["weights"]), 1)
    for a, b in zip(host.model.state_dict().items(), plain.state_dict().items(), strict=True):
        assert a[0] == b[0] and (torch.equal(a[1], b[1]) or a[0].startswith("classifier"))


def test_a_kind_or_name_is_registered_once() -> None:
    class Clash(TaskMethod):
        name, kind = "other", "tiny_scale"

    with pytest.raises(ValueError, match="kind 'tiny_scale'"):
        register(Clash())


def test_an_unknown_kind_is_one_error(tmp_path: Path, tasks) -> None:
    from piggyback_lab.methods.tasks import read_task
    from piggyback_lab.taskfile import write_task_file

    tf = read_task_file(tasks["tiny_scale"])
    path = tmp_path / "foreign.safetensors"
    write_task_file(path, tf.tensors, {**tf.meta, "kind": "nobody"})
    with pytest.raises(UserError, match=r"kind 'nobody'.*import the package"):
        read_task(path)
