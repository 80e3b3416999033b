"""Where a clone keeps what the wheel does not carry: the command line's configs (conf/) and
the split files under data/. The library proper (methods, models, the task files) needs
neither; the run layer composes runs from conf/ and so works in a clone."""

from pathlib import Path

CHECKOUT_ROOT = Path(__file__).resolve().parents[3]  # src/piggyback_lab/utils/ -> the clone
CONF_DIR = CHECKOUT_ROOT / "conf"
