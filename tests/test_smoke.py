"""The smoke run (``make smoke``, ``debug=smoke``): the default's whole path on a few
batches, written under outputs/smoke/, never where the tables read (results/)."""

from __future__ import annotations

import re

from piggyback_lab.runs.config import compose
from tests.conftest import ROOT


def test_the_smoke_config_is_the_default_cut_short_into_a_scratch_folder() -> None:
    default = compose(["paths.output_dir=/out"])
    smoke = compose(["debug=smoke", "paths.output_dir=/out"])
    assert (smoke.dataset.name, smoke.backbone.name, smoke.method.name) == (
        default.dataset.name, default.backbone.name, default.method.name,
    )  # fmt: skip
    assert smoke.method.epochs == 2 and smoke.trainer.limit_train_batches == 8
    assert smoke.trainer.limit_test_batches == 1.0  # the test set whole: eval agrees
    assert smoke.paths.results_dir == "outputs/smoke/results" and smoke.force
    assert default.paths.results_dir == "results"


def test_make_smoke_trains_evaluates_and_tabulates_inside_outputs_smoke() -> None:
    recipe = re.search(r"^smoke:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    steps = recipe.group(1)
    assert "-m src.train debug=smoke" in steps and "-m src.eval" in steps
    assert "make_tables.py" in steps and "--include-cut-short" in steps
    assert "results/" not in steps.replace("$(SMOKE)/results", "")
