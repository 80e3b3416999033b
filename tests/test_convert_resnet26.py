"""scripts/convert_resnet26.py reads its file as tensors first: a file that needs unpickling
(which runs code from it) is refused unless --trust-pickle says it is the authors' release.
At a6ce102 it unpickled whatever it was given."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from piggyback_lab.utils.errors import UserError
from tests.conftest import ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("convert", ROOT / "scripts/convert_resnet26.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Payload:
    """Unpickling this writes a file: the code a pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_a_pickle_is_refused_before_it_runs_and_taken_when_trusted(tmp_path: Path) -> None:
    convert = load_script()
    marker, src = tmp_path / "ran.txt", tmp_path / "imnet.t7"
    torch.save({"net": Payload(marker)}, src)
    with pytest.raises(UserError, match="--trust-pickle"):
        convert._load(str(src), trust_pickle=False)
    assert not marker.exists()  # nothing of the file ran
    convert._load(str(src), trust_pickle=True)
    assert marker.read_text() == "ran"


def test_a_file_of_tensors_needs_no_trust(tmp_path: Path) -> None:
    convert = load_script()
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "plain.pth")
    loaded = convert._load(str(tmp_path / "plain.pth"), trust_pickle=False)
    assert torch.equal(convert.original_state_dict(loaded)["w"], torch.ones(2))
