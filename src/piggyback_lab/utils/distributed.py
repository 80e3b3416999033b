"""Small helpers for multi-process (DDP) runs; no-ops in a single process."""

from __future__ import annotations

import torch.distributed as dist


def all_ranks_agree(value: str) -> bool:
    """True when every rank holds the same ``value`` (e.g. a digest of the learned state)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return all(v == value for v in gathered)
