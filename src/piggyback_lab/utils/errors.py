"""User-facing errors: one clear message, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from piggyback_lab.utils.output import say

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input the user can fix: the message says what is wrong and how to fix it."""


class Interrupted(BaseException):
    """A stop signal arrived (a cluster's time limit, Ctrl-C, a closed terminal). A
    BaseException, so that no ``except Exception`` (a sweep's job, Hydra's) takes it for a
    job's own failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# What ends a run from outside: a cluster's time limit (SIGTERM; SLURM's --signal sends
# SIGUSR1 first), Ctrl-C (SIGINT), a closed terminal or SSH session (SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
# Set by a sweep's parent to its pid: a job run in another process (a joblib worker) leaves
# the line and the summary of a stop to that parent.
SWEEP_PARENT = "PIGGYBACK_LAB_SWEEP_PARENT"
_RECEIVED: list[int] = []  # the stop signals this process received, in order


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """The ``STOP_SIGNALS`` raise ``Interrupted`` while the body runs (Lightning calls these
    handlers from its own), so each ends the run with one line and its lock released.
    Outside the main thread, where no handler can be set, the body runs as it is."""

    def handler(signum: int, frame: Any) -> None:
        _RECEIVED.append(signum)
        raise Interrupted(signum)

    from piggyback_lab.utils.distributed import stops_left_to_us

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        with stops_left_to_us():
            yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def interruption_behind(err: BaseException) -> Interrupted | None:
    """The Interrupted an exception was raised over, if any. A signal sent to the whole
    process group (a cluster's time limit, ``pkill``) also ends the DataLoader workers, and
    torch reports their death as a RuntimeError raised while Interrupted unwinds."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Interrupted):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def reports_stops() -> bool:
    """Whether this process says that a stop signal ended the work: not a DDP rank other
    than 0, nor a sweep's job running in a worker of the parent that reports it."""
    from piggyback_lab.utils.distributed import global_rank

    parent = os.environ.get(SWEEP_PARENT)
    return global_rank() == 0 and parent in (None, str(os.getpid()))


def _proc_field(pid: int, name: str) -> str:
    """A field of ``/proc/<pid>/status`` ("" when the process or /proc is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    except OSError:
        pass
    return ""


def child_programs() -> list[int]:
    """This process's children that run programs of their own (joblib's workers, DDP's
    other ranks), not its forks (loader and pool workers, which their owners stop), and
    that a SIGTERM would stop (loky's resource tracker ignores it and ends with us)."""
    me = os.getpid()
    try:
        mine = Path(f"/proc/{me}/cmdline").read_bytes()
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    except OSError:  # no /proc: nothing to find
        return []
    found = []
    for pid in pids:
        if _proc_field(pid, "PPid") != str(me):
            continue
        ignores_sigterm = int(_proc_field(pid, "SigIgn") or "0", 16) >> (signal.SIGTERM - 1) & 1
        with contextlib.suppress(OSError):
            if not ignores_sigterm and Path(f"/proc/{pid}/cmdline").read_bytes() != mine:
                found.append(pid)
    return found


def stop_child_programs(grace: float = 10.0) -> None:
    """SIGTERM ``child_programs()`` (each then ends its work as a stop signal does), and
    SIGKILL those still running after ``grace`` seconds; returns once all have ended."""
    pids = child_programs()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _proc_field(p, "State")[:1] not in ("", "Z")]
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:  # reap what we can, so that none is left a zombie of ours
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


def interrupted_message(err: Interrupted) -> str:
    return (
        f"stopped by {err} before the work was finished; nothing unfinished was recorded. "
        "Run the same command again: a training run resumes from its last checkpoint"
    )


def user_message(err: UserError) -> str:
    """The error's message; one raised in a DataLoader worker comes back wrapped in the
    worker's traceback, whose last line is the message."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last.removeprefix(prefix).removeprefix(f"{type(err).__name__}: ")


def log_error(message: str) -> None:
    """``error: <message>`` on stderr, and the same line in the run's log file."""
    say(f"error: {message}", logging.ERROR)


def exit_stopped(stop: Interrupted) -> None:
    """End the process for ``stop``: its child programs stopped, then one line and exit
    code 128 + the signal where this process reports stops; elsewhere (another DDP rank, a
    sweep's worker) quietly and at once, so that no worker pool runs a next job."""
    if not reports_stops():
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(128 + stop.signum)
    stop_child_programs()
    log_error(interrupted_message(stop))
    sys.exit(128 + stop.signum)


def exit_on_user_error(fn: F) -> F:
    """Turn a UserError raised by ``fn`` into ``error: <message>`` on stderr and exit code 2;
    a stop signal into one line saying how to go on and exit code 128 + the signal."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = len(_RECEIVED)
        try:
            with interruptible():
                return fn(*args, **kwargs)
        except UserError as err:
            log_error(user_message(err))
            sys.exit(EXIT_USER_ERROR)
        except (Exception, Interrupted) as err:
            # itself, the signal its error was raised over, or one that came first (DDP's
            # other ranks fail when a signalled rank leaves before their own handler runs)
            stop = interruption_behind(err)
            if stop is None and len(_RECEIVED) > before:
                stop = Interrupted(_RECEIVED[before])
            if stop is None:
                raise
            exit_stopped(stop)

    return wrapper  # type: ignore[return-value]


def check_integer(key: str, value: Any, low: int = 1) -> int:
    """``value`` when it is an integer >= ``low``, else a UserError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low} (got {value!r})")
    return value


def check_positive(key: str, value: Any) -> float:
    """``value`` when it is a finite number > 0, else a UserError naming ``key``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise UserError(f"{key} must be a positive number (got {value!r})")
    return value


def check_choice(what: str, value: object, choices: Iterable[object]) -> None:
    """Raise a UserError naming the valid choices when ``value`` is not one of them."""
    options = list(choices)
    if value not in options:
        listed = ", ".join(str(c) for c in options)
        raise UserError(f"unknown {what} {value!r}; choose one of: {listed}")
