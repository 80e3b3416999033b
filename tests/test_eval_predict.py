"""Stored task files evaluated and used for prediction without any training checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from piggyback_lab.methods.packnet.state import PackNetState
from piggyback_lab.runs.builders import build_image_transforms
from piggyback_lab.runs.evaluate import compose_config, evaluate
from piggyback_lab.runs.predict import image_paths, load_images, predict
from piggyback_lab.runs.records import COMMON_KEYS, read_records
from piggyback_lab.taskfile import read_task_file
from piggyback_lab.utils.errors import UserError, exit_on_user_error
from tests.conftest import TINY_BUDGET, make_image_folder, run_module, train_in_process
from tests.test_multitask import make_packnet_state, other_weights

TASKS = {"mini_digits": 3, "mini_fashion_rot": 4}  # two mini-benchmark tasks, class counts
TRAINED_SIZE = {"mini_digits": 32, "mini_fashion_rot": 24}


def common(root: Path, weights: Path) -> list[str]:
    return [
        f"paths.data_dir={root / 'data'}",
        f"paths.results_dir={root / 'results'}",
        f"backbone.weights={weights}",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, minicnn_weights: Path) -> Path:
    """Two tasks trained 1 epoch on tiny trees put where the mini configs look for them, the
    second at a size of its own (24, not the configs' 32)."""
    root = tmp_path_factory.mktemp("two_tasks")
    for name, classes in TASKS.items():
        make_image_folder(root / "data" / "mini" / name, classes=classes, per_class=4, size=32)
        train_in_process(
            f"dataset={name}",
            f"dataset.num_classes={classes}",
            f"dataset.transforms.size={TRAINED_SIZE[name]}",
            *TINY_BUDGET,
            f"paths.log_dir={root / 'outputs'}",
            f"paths.output_dir={root / 'outputs' / name}",
            *common(root, minicnn_weights),
        )
    return root


def test_eval_reproduces_the_training_top1(trained: Path, minicnn_weights: Path) -> None:
    proc = run_module(
        "src.eval", f"tasks={trained / 'results' / 'tasks'}", *common(trained, minicnn_weights)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_records(trained / "results")
    train = {r["dataset"]: r for r in records if r.get("source") != "eval"}
    evals = {r["dataset"]: r for r in records if r.get("source") == "eval"}
    assert set(train) == set(evals) == set(TASKS)
    for record in records:  # one record type: the same facts, under the same names
        assert set(COMMON_KEYS) <= set(record), set(COMMON_KEYS) - set(record)
    for name in TASKS:
        assert evals[name]["top1"] == train[name]["top1"]
        assert evals[name]["top5"] == train[name]["top5"]
        assert evals[name]["train_top1"] == train[name]["top1"]
        assert evals[name]["method"] == "piggyback" and evals[name]["backbone"] == "minicnn"
        assert evals[name]["task_run_id"] == train[name]["run_id"]
        assert evals[name]["n_test"] == 2 * TASKS[name]
        assert evals[name]["test_transforms"]["size"] == TRAINED_SIZE[name]  # as it trained
        assert Path(evals[name]["record_path"]).parent == trained / "results" / "evals"


@pytest.mark.parametrize("form", ["comma", "list"])
def test_eval_takes_a_list_of_task_files_as_the_readme_writes_it(
    trained: Path, minicnn_weights: Path, form: str
) -> None:
    """``tasks=a,b`` and ``tasks=[a,b]``: at a6ce102 the first was Hydra's "Ambiguous
    value" and the second a stringified list; only ``tasks="'a,b'"`` worked."""
    a, b = sorted((trained / "results" / "tasks").glob("*.safetensors"))
    listed = f"{a},{b}" if form == "comma" else f"[{a},{b}]"
    out = trained / f"evals_{form}"
    records = evaluate([f"tasks={listed}", f"out={out}", *common(trained, minicnn_weights)])
    assert sorted(r["task_file"] for r in records) == [str(a), str(b)]


def test_a_task_is_tested_at_the_size_it_trained_at_unless_told_otherwise(trained: Path) -> None:
    """The task file keeps its transforms; eval and predict compose them back (an explicit
    dataset.transforms override still wins)."""
    path = next((trained / "results" / "tasks").glob("mini_fashion_rot__*.safetensors"))
    trained_with = read_task_file(path).meta["transforms"]
    assert trained_with["size"] == 24
    cfg = compose_config("mini_fashion_rot", "minicnn", [], trained_with)
    assert cfg.dataset.transforms.size == 24
    told = compose_config(
        "mini_fashion_rot", "minicnn", ["dataset.transforms.size=40"], trained_with
    )
    assert told.dataset.transforms.size == 40


def test_eval_refuses_other_backbone_weights(trained: Path, tmp_path: Path) -> None:
    other = other_weights(tmp_path)
    with pytest.raises(UserError, match="made for other minicnn weights"):
        evaluate(
            [f"tasks={trained / 'results' / 'tasks'}", f"out={tmp_path / 'evals'}",
             *common(trained, other)]
        )  # fmt: skip
    assert not (tmp_path / "evals").exists()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` pixels (a decompression bomb's)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + end


def test_predict_prints_class_names_and_skips_non_images(
    trained: Path, minicnn_weights: Path, tmp_path: Path, capsys
) -> None:
    task = next((trained / "results" / "tasks").glob("mini_fashion_rot*.safetensors"))
    folder = tmp_path / "images"
    folder.mkdir()
    test_images = sorted((trained / "data" / "mini" / "mini_fashion_rot" / "test").rglob("*.png"))
    for i, image in enumerate(test_images[:3]):
        (folder / f"img{i}.png").write_bytes(image.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "zbomb.png").write_bytes(bomb_png(100_000, 100_000))  # a 69-byte header
    args = [f"task={task}", f"images={folder}", "topk=2", *common(trained, minicnn_weights)]

    proc = run_module("src.predict", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "notes.txt" in proc.stderr and "warning" in proc.stderr
    assert "skipping" in proc.stderr and "zbomb.png" in proc.stderr  # named, not a crash
    lines = proc.stdout.strip().splitlines()
    assert [Path(line.split("\t")[0]).name for line in lines] == [
        "img0.png",
        "img1.png",
        "img2.png",
    ]
    classes = {f"c{i}" for i in range(TASKS["mini_fashion_rot"])}
    for line in lines:
        names = line.split("\t")[1].split()[::2]
        assert len(names) == 2 and set(names) <= classes

    predict([*args, "format=jsonl"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["topk"][0]["class"] in classes
        assert row["topk"][0]["prob"] >= row["topk"][1]["prob"]


def test_predict_with_only_non_images_fails_cleanly(trained: Path, tmp_path: Path, capsys) -> None:
    task = next((trained / "results" / "tasks").glob("mini_digits*.safetensors"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(predict)([f"task={task}", f"images={tmp_path / 'a.txt'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "a.txt" in err and "error: none of the files" in err


def test_eval_takes_a_packnet_state(trained: Path, tmp_path: Path) -> None:
    classes = {name: [f"c{i}" for i in range(n)] for name, n in TASKS.items()}
    path = tmp_path / "seq.safetensors"
    state = make_packnet_state(path, list(TASKS), classes)
    sizes = {"mini_digits": 32, "mini_fashion_rot": 24}  # the second trained at a size of its own
    state.meta["task_transforms"] = {
        name: {**compose_config(name, "minicnn", []).dataset.transforms, "size": size}
        for name, size in sizes.items()
    }
    state.save(path)
    records = evaluate(
        [f"tasks={path}", f"out={tmp_path / 'evals'}", f"paths.data_dir={trained / 'data'}"]
    )
    assert [r["dataset"] for r in records] == list(TASKS)
    for record in records:
        name = record["dataset"]
        assert record["method"] == "packnet" and record["n_test"] == 2 * TASKS[name]
        assert record["test_transforms"] == state.meta["task_transforms"][name]
        _, transform = build_image_transforms(
            compose_config(name, "minicnn", [f"dataset.transforms.size={sizes[name]}"])
        )
        paths, x = load_images(
            image_paths(str(trained / "data" / "mini" / name / "test")), transform
        )
        labels = torch.tensor([classes[name].index(p.parent.name) for p in paths])
        with torch.no_grad():
            logits = PackNetState.load(path).view(name).eval()(x)
        assert record["top1"] == pytest.approx(
            100.0 * float((logits.argmax(1) == labels).float().mean())
        )
    written = sorted(p.name for p in (tmp_path / "evals").iterdir())
    assert written == [f"seq__{name}.json" for name in sorted(TASKS)]
