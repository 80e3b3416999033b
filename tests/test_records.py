"""Run records (piggyback_lab/runs/records.py) function by function: what a run id hashes, the keys
and order of every record, the stamps it gets, and each way reading one can fail."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from piggyback_lab.runs import records as R
from piggyback_lab.utils.errors import UserError

CONFIG = {
    "dataset": {"name": "cub"},
    "backbone": {"name": "vgg16"},
    "method": {"name": "piggyback", "lr": 1e-4},
    "seed": 0,
    "num_workers": 2,
    "trainer": {"max_epochs": 30, "enable_progress_bar": True, "enable_model_summary": True},
    "paths": {"results_dir": "results"},
}

FACTS = dict(
    run_id="r", source="train", dataset="cub", backbone="vgg16", method="piggyback", seed=0,
    protocol="clean", top1=80.0, top5=95.0, weights_fingerprint="w", backbone_fingerprint="b",
    task_file="t.safetensors", task_state_bytes=10, wall_time_s=12.3456,
)  # fmt: skip


def changed(**changes) -> dict:
    config = json.loads(json.dumps(CONFIG))
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    return config


def test_a_run_id_names_the_run_and_hashes_only_what_changes_its_result() -> None:
    rid = R.run_id(CONFIG)
    assert rid.startswith("cub__vgg16__piggyback__s0__") and len(rid.rsplit("__", 1)[1]) == 10
    same = [
        changed(trainer__enable_progress_bar=False),
        changed(trainer__enable_model_summary=False),
        changed(paths__results_dir="elsewhere"),
    ]
    assert all(R.run_id(c) == rid for c in same)
    other = [changed(trainer__max_epochs=29), changed(num_workers=0), changed(method__lr=1e-3)]
    assert all(R.run_id(c) != rid for c in other)


def test_every_record_starts_with_the_common_keys_in_order() -> None:
    record = R.run_record(**FACTS, mask_density=0.5)
    assert tuple(record) == (*R.COMMON_KEYS, "mask_density")
    assert record["mask_density"] == 0.5 and record["wall_time_s"] == 12.35
    with pytest.raises(ValueError, match="source is one of"):
        R.run_record(**{**FACTS, "source": "other"})
    assert R.run_record(**{**FACTS, "source": "eval"})["source"] == "eval"


def test_the_stamps_name_the_commit_and_the_device(monkeypatch) -> None:
    version = R.code_version()
    assert isinstance(version["git"], str) and len(version["git"]) == 40
    assert isinstance(version["dirty"], bool)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Some GPU")
    assert R.device_name(torch.device("cuda")) == "Some GPU"
    for processor, named in [("AMD EPYC", "AMD EPYC"), ("", "cpu")]:
        monkeypatch.setattr(R.platform, "processor", lambda p=processor: p)
        # "meta" and "mps" sort above "cuda": only the type's name itself means a GPU
        for device in ("cpu", "meta", "mps"):
            assert R.device_name(torch.device(device)) == named


def fake_git(folder: Path, rev_parse_exit: int = 0, status_exit: int = 0) -> str:
    """A PATH whose git prints a commit for rev-parse and a change for status, each exiting
    with the code given."""
    folder.mkdir()
    script = folder / "git"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = rev-parse ]; then echo abc123; exit {rev_parse_exit}; fi\n'
        'if [ "$1" = ls-files ]; then exit 0; fi\n'
        f"echo ' M src/x.py'; exit {status_exit}\n"
    )
    script.chmod(0o755)
    return str(folder)


def test_a_commit_unknown_to_git_is_recorded_as_none(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", fake_git(tmp_path / "ok"))
    assert R.code_version() == {"git": "abc123", "dirty": True}
    for name, exits in [("rev-parse fails", (128, 0)), ("status fails", (0, 128))]:
        monkeypatch.setenv("PATH", fake_git(tmp_path / name, *exits))
        assert R.code_version() == {"git": None, "dirty": None}, name
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert R.code_version() == {"git": None, "dirty": None}


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "is not a piggyback-lab-record/1 record"),
        ('{"format": "a"}', "is not a piggyback-lab-record/1 record"),
        ('{"format": "zzz"}', "is not a piggyback-lab-record/1 record"),
        ('{"format": ', "truncated or corrupt"),
    ],
)
def test_a_file_that_is_not_a_whole_record_is_named(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "r.json").write_text(content)
    with pytest.raises(UserError, match=message):
        R.read_record(tmp_path / "r.json")


def test_an_unreadable_record_is_named_and_read_records_skips_it_aloud(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(UserError, match=r"cannot be read \(Is a directory\)$"):
        R.read_record(tmp_path / "folder.json")
    R.write_record(tmp_path / "good.json", R.run_record(**FACTS))
    (tmp_path / "cut.json").write_text("{")
    assert [r["run_id"] for r in R.read_records(tmp_path)] == ["r"]
    assert "warning: skipping record" in capsys.readouterr().err
    assert [r["run_id"] for r in R.read_records(tmp_path, warn=False)] == ["r"]
    assert capsys.readouterr().err == ""


def test_untracked_code_makes_the_tree_dirty_and_is_listed(tmp_path: Path) -> None:
    """A method or config just added (untracked, as the docs add one) is not in the commit
    the record names: the record says dirty and lists it (a6ce102 said dirty: false)."""

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "README.md").write_text("x")
    git("add", "README.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    (tmp_path / "notes.txt").write_text("not code")
    assert R.code_version(tmp_path)["dirty"] is False
    (tmp_path / "src" / "methods" / "mine").mkdir(parents=True)
    (tmp_path / "src" / "methods" / "mine" / "module.py").write_text("")
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "mine.yaml").write_text("")
    version = R.code_version(tmp_path)
    assert version["dirty"] is True
    assert version["untracked"] == ["conf/method/mine.yaml", "src/methods/mine/module.py"]
