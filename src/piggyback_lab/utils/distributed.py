"""Small helpers for multi-process (DDP) runs; no-ops in a single process."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist


def all_ranks_agree(value: str) -> bool:
    """True when every rank holds the same ``value`` (e.g. a digest of the learned state)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return all(v == value for v in gathered)


# Where launchers put a process's global rank before torch.distributed starts (Lightning's
# order: torchrun, its own launcher, SLURM, LSF).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's rank: 0 in a single process and on DDP's first rank."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


@contextlib.contextmanager
def stops_left_to_us() -> Iterator[None]:
    """While the body runs, Lightning's SIGTERM handler only notes the signal, and ours
    (``utils.errors.interruptible``, called after it) stops the run on every rank. Its
    own also SIGTERMs the other ranks and broadcasts from rank 0 inside the handler: a
    collective that deadlocks, when the group was signalled, against a rank waiting in a
    gradient all-reduce (a CPU DDP run hung for minutes); the first rank stops the others."""
    module = sys.modules.get("pytorch_lightning.trainer.connectors.signal_connector")
    if module is None:  # Lightning not in use: nothing of it to quiet
        yield
        return
    connector = module._SignalConnector
    original = connector._sigterm_notifier_fn

    def note(self: Any, signum: int, frame: Any) -> None:
        self.received_sigterm = True

    connector._sigterm_notifier_fn = note
    try:
        yield
    finally:
        connector._sigterm_notifier_fn = original
