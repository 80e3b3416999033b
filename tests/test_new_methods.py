"""Today's baselines beside Piggyback, each one package plus one config: each trains through
`piggyback_lab.runs.run` with its config's recipe, writes a task file that `src.eval` scores as
training did, folds into a plain backbone with the hosted network's logits, and switches in
a MultiTaskModel beside Piggyback, the backbone coming back bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, fold_task, wrap
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.models import build_backbone
from piggyback_lab.runs.evaluate import evaluate
from piggyback_lab.runs.records import read_records
from piggyback_lab.taskfile import read_task_file
from tests.conftest import make_image_folder, tiny_overrides, train_in_process

NEW = [
    "lora",
    "bitfit",
    "ssf",
    "parallel_adapters",
    "series_adapters",
    "affine_masks",
]  # the chain, in order


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, minicnn_weights: Path) -> dict:
    root = tmp_path_factory.mktemp("new_methods")
    data = make_image_folder(root / "data", classes=3, per_class=4, size=32)
    base = [
        *tiny_overrides(root, minicnn_weights, data),
        f"paths.output_dir={root / 'outputs' / 'job'}",
        "protocol=faithful",
    ]
    for method in ["piggyback", *NEW]:
        train_in_process(f"method={method}", *base)
    records = {r["method"]: r for r in read_records(root / "results" / "runs")}
    return {"root": root, "data": data, "weights": minicnn_weights, "records": records}


@pytest.mark.parametrize("method", NEW)
def test_it_trains_and_src_eval_scores_its_task_as_training_did(trained, method: str) -> None:
    record = trained["records"][method]
    tf = read_task_file(record["task_file"])
    assert method_of(tf).name == method and tf.meta["method"] == method
    [scored] = evaluate(
        [
            f"tasks={record['task_file']}",
            f"out={trained['root'] / 'evals'}",
            f"paths.results_dir={trained['root'] / 'results'}",
            f"dataset.root={trained['data']}",
            f"backbone.weights={trained['weights']}",
        ]
    )
    assert scored["top1"] == record["top1"] == scored["train_top1"]


def test_tasks_switch_exactly_and_leave_the_backbone_as_it_was(trained) -> None:
    chain = ["piggyback", *NEW, "piggyback"]
    paths = {m: Path(trained["records"][m]["task_file"]) for m in chain}
    host = MultiTaskModel("minicnn", str(trained["weights"]), list(dict.fromkeys(paths.values())))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = []
    for method in chain:
        model = fold_task(build_backbone("minicnn", str(trained["weights"]), 1), paths[method])
        with torch.no_grad():
            folded = model(x)
        logits.append(host.predict(x, paths[method].stem))
        torch.testing.assert_close(logits[-1], folded, rtol=0, atol=1e-5)
    assert torch.equal(logits[-1], logits[0])  # piggyback again: bit for bit
    host.select(None)
    plain = build_backbone("minicnn", str(trained["weights"]), 1).state_dict()
    for key, value in host.model.state_dict().items():
        assert key.startswith("classifier") or torch.equal(value, plain[key]), key


def test_bitfit_trains_and_stores_only_the_biases(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = wrap(torchvision.models.resnet18(), "bitfit", classifier="fc", num_classes=3)
    trained = {id(p) for g in task.trainable_parameters() for p in g["params"]}
    names = {n for n, p in task.model.named_parameters() if id(p) in trained}
    assert names == {n for n, _ in task.model.named_parameters() if n.endswith("bias")} | {
        "fc.weight"
    }  # every conv-free ResNet bias is a BatchNorm's: BitFit's norm biases
    optimizer, _ = task.recipe()
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3]
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    task.train()
    F.cross_entropy(task(x), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    changed = {k for k, v in task.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith("bias") or k.startswith("fc.") for k in changed)
    path = tmp_path / "bitfit.safetensors"
    export_task(task, path, ["a", "b", "c"])
    tf = read_task_file(path)
    assert {k.split(".")[0] for k in tf.tensors} == {"bias", "classifier"}
    storage = method_of(tf).storage(tf)
    biases = sum(t.numel() for k, t in tf.tensors.items() if k.startswith("bias."))
    assert storage["bits_per_weight"] == pytest.approx(32 * biases / tf.meta["trunk_weights"])
    task.eval()
    with torch.no_grad():
        expected = task(x)
    torch.manual_seed(0)
    assert torch.equal(fold_task(torchvision.models.resnet18(), path)(x), expected)
