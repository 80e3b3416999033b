"""The reproduction contract: each preset composes to the published recipe that
docs/reproduction.md gives, with its source, row by row."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from piggyback_lab.runs.config import compose
from tests.conftest import ROOT

DOC = ROOT / "docs" / "reproduction.md"


def contract_rows() -> list[tuple[str, str, str, str]]:
    text = DOC.read_text()
    block = text.split("<!-- contract:start -->")[1].split("<!-- contract:end -->")[0]
    rows = [
        tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
        for line in block.strip().splitlines()[2:]
    ]
    return rows  # (preset, key, value, source)


ROWS = contract_rows()


def test_every_row_cites_a_source_and_every_preset_is_covered() -> None:
    assert len(ROWS) >= 40
    assert all(len(row) == 4 and row[3] for row in ROWS)
    presets = {row[0].split()[0] for row in ROWS}
    assert presets == {
        "experiment=paper_table", "experiment=paper_packnet", "experiment=paper_packnet_up",
        "experiment=decathlon", "experiment=vtab", "experiment=fgvc",
    }  # fmt: skip
    methods = {m for row in ROWS for m in re.findall(r"method=(\w+)", row[0])}
    assert methods >= {"piggyback", "finetune", "classifier_only"}


@pytest.mark.parametrize(
    "preset, key, value", [r[:3] for r in ROWS], ids=[f"{r[0]}:{r[1]}" for r in ROWS]
)
def test_preset_composes_to_the_published_value(preset: str, key: str, value: str) -> None:
    cfg = compose([*preset.split(), "paths.output_dir=x"])
    expected = OmegaConf.create(f"v: {value}").v
    actual = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(expected, float) or isinstance(actual, float):
        assert float(actual) == pytest.approx(float(expected)), key
    elif OmegaConf.is_list(actual):
        assert list(actual) == list(expected), key
    else:
        assert actual == expected, key


def test_rebuffi_finetune_schedule_steps_at_epochs_80_and_100() -> None:
    from piggyback_lab.models import build_backbone
    from tests.conftest import method_for

    module = method_for(build_backbone("minicnn", None, 4), "decathlon/finetune", 4)
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(120):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[79] == pytest.approx(0.1) and lrs[80] == pytest.approx(0.01)
    assert lrs[99] == pytest.approx(0.01) and lrs[100] == pytest.approx(0.001)


@pytest.mark.parametrize(
    "every, milestones, message",
    [(15, [80, 100], "both set"), (None, [100, 80], "must increase"), (None, None, "integer")],
)
def test_a_schedule_is_either_periodic_or_milestones(every, milestones, message) -> None:
    from piggyback_lab.methods.base import check_schedule
    from piggyback_lab.utils.errors import UserError

    with pytest.raises(UserError, match=message):
        check_schedule(every, milestones)
