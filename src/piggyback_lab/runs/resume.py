"""What a run leaves to be resumed, and the lock that keeps two runs of one id apart."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from piggyback_lab.utils.errors import UserError
from piggyback_lab.utils.output import say


def resumable_checkpoint(path: Path, rid: str) -> str | None:
    """The checkpoint to resume from, after checking it is safe, whole and of this run."""
    if not path.exists():
        return None
    fix = f"delete {path.parent} to start over, or pass force=true"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"checkpoint {path} cannot be loaded safely ({type(err).__name__}): it is truncated, "
            f"corrupt or holds code; {fix}"
        ) from None
    if state.get("run_id") != rid:
        raise UserError(
            f"checkpoint {path} belongs to another config ({state.get('run_id')}); {fix}"
        )
    return str(path)


_HELD_LOCKS: set[int] = set()  # this process's lock descriptors (run_lock)


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the run's lock descriptors. A flock
    belongs to the open file, which a fork shares, so otherwise a killed run's workers would
    hold its lock until they noticed their parent was gone, and refuse the resume."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def run_lock(folder: Path, wait: bool = False) -> Iterator[None]:
    """Hold ``<folder>.lock`` while the run works; a second run of the same id is refused
    with the process that holds it (the lock dies with its process, so a killed run never
    blocks the next). Runs lock beside their record (``<runs_dir>/<run id>.lock``), so two
    runs that would write one record exclude each other whatever their log folders. Only
    rank 0 locks: DDP's other ranks are its children. ``wait``: wait for the holder to
    finish instead (work that the holder's result makes unnecessary, e.g. pretraining)."""
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        yield
        return
    made = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f"{folder.name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _HELD_LOCKS.add(fd)
    try:
        holder = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        if holder is not None and wait:
            say(f"waiting for process {holder}, which holds {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
            return
        if holder is not None:
            raise UserError(
                f"this run is already running (process {holder} holds {path}); wait for it "
                "to finish, or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            for parent in made:  # deepest first: a run that wrote nothing leaves no folder
                with contextlib.suppress(OSError):
                    parent.rmdir()
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)
