"""Report the bits per weight the compressed mask coding reaches per task file.

  python -m src.compress results/tasks            # a folder of task files
  python -m src.compress a.safetensors b.safetensors

The coding (Rice-coded gaps, below 1 bit per weight for sparse masks):
piggyback_lab/methods/piggyback/compress.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from piggyback_lab.runs.compression import compression_table
from piggyback_lab.utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.compress", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "tasks", nargs="+", help="Piggyback task files, or folders of them (e.g. results/tasks)"
    )
    args = parser.parse_args(argv)
    for line in compression_table(args.tasks):
        print(line)


if __name__ == "__main__":
    main()
