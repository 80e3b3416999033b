"""Google's JAX checkpoints (.npz: the ViT-B_16.npz the yardstick's anchors load) go through
timm's own loader; what it cannot read is one error line, before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from piggyback_lab.models import build_backbone
from piggyback_lab.models.registry import weights_source
from piggyback_lab.utils.errors import UserError
from tests.conftest import run_module


def test_an_npz_is_a_weights_file() -> None:
    assert weights_source("vit_base_patch16_224", "/x/ViT-B_16.npz") == "file"


def test_an_npz_that_is_not_a_jax_vit_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ViT-B_16.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(UserError, match=r"cannot read .* as vit_tiny_patch16_224's JAX checkpoint"):
        build_backbone("vit_tiny_patch16_224", str(path), 10)


def test_an_npz_for_a_network_timm_does_not_build_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(UserError, match=r"minicnn cannot read \.npz checkpoints"):
        build_backbone("minicnn", str(path), 10)


def test_a_missing_npz_is_one_error_line(tmp_path: Path) -> None:
    proc = run_module(
        "src.train", "backbone=vit_base_patch16_224_in21k",
        f"backbone.weights={tmp_path / 'ViT-B_16.npz'}", "dataset.transforms.size=224",
        f"paths.results_dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error:") and "ViT-B_16.npz" in line and "does not exist" in line
