"""Settings a run would not honour, refused before any work (each ran, or was recorded as
if it had, at a6ce102): Lightning's run-length keys, switches given as words, several
devices outside trainer=ddp, no validation under a protocol that selects on it."""

from __future__ import annotations

import pytest

from piggyback_lab.runs.config import compose
from piggyback_lab.runs.preflight import check_values
from piggyback_lab.utils.errors import UserError


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("+trainer.max_epochs=3", "set method.epochs"),
        ("+trainer.max_steps=10", "trainer.max_steps is not read"),
        ("+trainer.max_time=00:00:01", "trainer.max_time is not read"),
        ("force=no", "force must be true or false"),
        ("keep_checkpoints=maybe", "keep_checkpoints must be true or false"),
        ("verify_images=1", "verify_images must be true or false"),
        ("channels_last=sometimes", "channels_last must be auto, true or false"),
        ("trainer.devices=2", "needs trainer=ddp"),
        ("trainer.devices=-1", "needs trainer=ddp"),
        ("trainer.limit_val_batches=0", "use protocol=final"),
    ],
)
def test_a_setting_the_run_would_not_honour_is_refused(override: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        check_values(compose([override, "paths.output_dir=/out"]))


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("force=true", "channels_last=true", "keep_checkpoints=false"),
        ("trainer=ddp", "trainer.devices=2"),
        ("protocol=final", "trainer.limit_val_batches=0"),
    ],
)
def test_what_the_run_honours_passes(overrides: tuple[str, ...]) -> None:
    check_values(compose([*overrides, "paths.output_dir=/out"]))
