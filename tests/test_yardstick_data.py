"""VTAB-1k and FGVC in the layouts the community ships: prepared, refused when wrong (one
`error:` line, nothing written), and read by a run as the protocol says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from piggyback_lab.runs.config import compose
from piggyback_lab.runs.split_files import prepare_split_files
from piggyback_lab.utils.errors import UserError
from tests.conftest import run_module
from tests.yardstick_data import (
    FGVC_DATASETS,
    MINI_VTAB,
    MINI_VTAB_SIZES,
    VTAB_TASKS,
    dataset_config,
    fgvc_sizes,
    make_fgvc,
    make_vtab,
    make_vtab_task,
)


@pytest.fixture(scope="module")
def vtab_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vtab(tmp_path_factory.mktemp("download") / "vtab-1k")


@pytest.fixture(scope="module")
def fgvc_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fgvc_download")
    for name in FGVC_DATASETS:
        make_fgvc(root, name)
    return root


def test_the_configs_cover_both_benchmarks_with_the_anchors_classes() -> None:
    assert len(VTAB_TASKS) == 19 and len(FGVC_DATASETS) == 5
    groups = {t: dataset_config(f"vtab/{t}")["group"] for t in VTAB_TASKS}
    assert sorted(groups.values()).count("natural") == 7
    assert sorted(groups.values()).count("specialized") == 4
    assert sorted(groups.values()).count("structured") == 8
    classes = {t: dataset_config(f"vtab/{t}")["num_classes"] for t in VTAB_TASKS}
    assert classes["sun397"] == 397 and classes["kitti"] == 4 and classes["smallnorb_azi"] == 18
    fgvc = {n: dataset_config(f"fgvc/{n}")["num_classes"] for n in FGVC_DATASETS}
    assert fgvc == {"cub": 200, "nabirds": 555, "flowers": 102, "dogs": 120, "cars": 196}


def test_all_19_vtab_tasks_are_prepared_and_read_as_the_protocol_says(
    vtab_source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "data"
    written = _prepare_vtab(vtab_source, out)
    assert len(written) == 19
    cifar = out / "vtab-1k" / "cifar"
    assert (cifar / "prepared.json").is_file() and (cifar / "train800val200.txt").is_file()
    for protocol, train, val in (("clean", 6, 3), ("final", 9, None), ("faithful", 9, 4)):
        module = _module("vtab/dtd", out, protocol=protocol)
        module.setup("fit")
        assert len(module.train_set) == train
        assert (module.val_set is None) if val is None else len(module.val_set) == val
        assert len(module.test_set) == MINI_VTAB["test"]
        x, y = module.train_set[0]
        assert tuple(x.shape) == (3, 224, 224) and y == 0


def test_an_alias_folder_name_is_found(tmp_path: Path) -> None:
    source = tmp_path / "vtab"
    make_vtab_task(source, "cifar").rename(source / "cifar100")  # V-PETL's folder name
    _prepare_vtab(source, tmp_path / "data", tasks="cifar")
    assert (tmp_path / "data" / "vtab-1k" / "cifar" / "test.txt").is_file()


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda d: (d / "val200.txt").unlink(), "val200.txt not found"),
        (lambda d: _rewrite(d / "test.txt", 0, "images/test/000000.jpg 47"), "outside 0..46"),
        (lambda d: _rewrite(d / "train800.txt", 0, None), "lists 5 images, expected 6"),
        (lambda d: (d / "images/test/000001.jpg").write_bytes(b"not a jpeg"), "cannot be decoded"),
        (lambda d: (d / "images/test/000002.jpg").unlink(), "missing or not files"),
        (lambda d: _rewrite(d / "test.txt", 0, "just-a-path"), "expected '<image path> <label>'"),
    ],
    ids=["missing-list", "label-out-of-range", "wrong-size", "undecodable", "missing-image",
         "bad-line"],
)  # fmt: skip
def test_a_wrong_vtab_task_is_refused_and_nothing_is_written(
    tmp_path: Path, spoil, message: str
) -> None:
    source = tmp_path / "vtab"
    spoil(make_vtab_task(source, "dtd"))
    out = tmp_path / "data"
    with pytest.raises(UserError, match=message):
        _prepare_vtab(source, out, tasks="dtd")
    assert not (out / "vtab-1k").exists() or not any((out / "vtab-1k").iterdir())


def test_a_refusal_is_one_error_line_from_the_script(tmp_path: Path) -> None:
    source = tmp_path / "vtab"
    make_vtab_task(source, "kitti")
    result = run_module(
        "scripts.prepare_data", "vtab", "--source", str(source), "--out", str(tmp_path / "d")
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: vtab: no folder for vtab/caltech101")
    assert "Traceback" not in result.stderr


def test_the_five_fgvc_datasets_are_prepared_relabelled_and_named(
    fgvc_source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "data"
    for name in FGVC_DATASETS:
        source = fgvc_source / dataset_config(f"fgvc/{name}")["folder"]
        _prepare(f"fgvc_{name}", source, out, fgvc_sizes(name))
    module = _module("fgvc/cub", out, "final", fgvc_sizes("cub"))
    module.setup("fit")
    assert len(module.train_set) == 200 * 3  # train + val
    assert sorted(set(module.train_set.targets)) == list(range(200))  # ids 1..200 -> 0..199
    assert module.class_names[0] == "001.class_1"  # the official class folders
    assert (out / "fgvc" / "CUB_200_2011" / "images").is_dir()


def test_fgvc_split_files_that_disagree_are_refused(fgvc_source: Path, tmp_path: Path) -> None:
    source = tmp_path / "Flowers"
    import shutil

    shutil.copytree(fgvc_source / "OxfordFlower", source / "OxfordFlower")
    test = json.loads((source / "OxfordFlower" / "test.json").read_text())
    test[next(iter(test))] = 999
    (source / "OxfordFlower" / "test.json").write_text(json.dumps(test))
    with pytest.raises(UserError, match=r"test\.json has class ids train\.json lacks"):
        _prepare("fgvc_flowers", source / "OxfordFlower", tmp_path / "data", fgvc_sizes("flowers"))


def _prepare(name: str, source: Path, out: Path, sizes: str, tasks: str | None = None) -> list:
    """prepare_data.py's work, with the miniature's split sizes in place of the real ones."""
    from unittest import mock

    with mock.patch(
        "piggyback_lab.runs.split_files.compose",
        lambda overrides: compose([*overrides, sizes]),
    ):
        return prepare_split_files(name, source, out, tasks)


def _prepare_vtab(source: Path, out: Path, tasks: str | None = None) -> list[Path]:
    return _prepare("vtab", source, out, MINI_VTAB_SIZES, tasks)


def _module(config: str, out: Path, protocol: str, sizes: str = MINI_VTAB_SIZES):
    cfg = compose(
        [f"dataset={config}", f"paths.data_dir={out}", f"protocol={protocol}", sizes,
         "num_workers=0"]
    )  # fmt: skip
    return instantiate(cfg.dataset, _convert_="all")


def _rewrite(path: Path, line: int, new: str | None) -> None:
    lines = path.read_text().splitlines()
    if new is None:
        del lines[line]
    else:
        lines[line] = new
    path.write_text("\n".join(lines) + "\n")
