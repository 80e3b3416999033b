"""Lines meant for the user: printed, and copied into every log file the process writes
(Hydra's job log), which would otherwise hold only Python's logging records."""

from __future__ import annotations

import logging
import sys


def say(message: str, level: int = logging.INFO) -> None:
    """Print ``message`` (warnings and errors to stderr) and write it to the log files."""
    print(message, file=sys.stderr if level >= logging.WARNING else sys.stdout, flush=True)
    record = logging.LogRecord("run", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
