"""User-facing errors: one clear message, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
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


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """The ``STOP_SIGNALS`` raise ``Interrupted`` while the body runs (Lightning calls these
    handlers from its own), so each ends the run with one line and its lock released."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
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


def exit_on_user_error(fn: F) -> F:
    """Turn a UserError raised by ``fn`` into ``error: <message>`` on stderr and exit code 2;
    a stop signal into one line saying how to go on and exit code 128 + the signal."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with interruptible():
                return fn(*args, **kwargs)
        except UserError as err:
            log_error(user_message(err))
            sys.exit(EXIT_USER_ERROR)
        except (Exception, Interrupted) as err:
            stop = interruption_behind(err)  # itself, or the signal its error was raised over
            if stop is None:
                raise
            log_error(interrupted_message(stop))
            sys.exit(128 + stop.signum)

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
