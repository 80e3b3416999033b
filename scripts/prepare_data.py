"""Prepare one of the paper's datasets as an ImageFolder tree, or check and install one of
the yardstick's split-file benchmarks (see docs/datasets.md).

python scripts/prepare_data.py DATASET --source PATH [--out data/] [--download]
    [--allow-count-mismatch] [--resize N] [--no-verify] [--workers N]
python scripts/prepare_data.py vtab --source PATH/vtab-1k [--out data/] [--tasks a,b]
python scripts/prepare_data.py fgvc_cub --source PATH/CUB_200_2011 [--out data/]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from piggyback_lab.data.prepare import EXPECTED, fetch, prepare_dataset
from piggyback_lab.runs.split_files import SPLIT_FILE_DATASETS, prepare_split_files
from piggyback_lab.utils.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dataset", choices=sorted(EXPECTED) + sorted(SPLIT_FILE_DATASETS))
    ap.add_argument("--source", type=Path, help="archive, folder of archives, or extracted folder")
    ap.add_argument("--out", type=Path, default=Path("data"), help="writes OUT/DATASET (data/)")
    ap.add_argument(
        "--download",
        action="store_true",
        help="fetch the official files first (cub, flowers, sketch) into --source "
        "(default OUT/downloads/DATASET)",
    )
    ap.add_argument("--allow-count-mismatch", action="store_true")
    ap.add_argument(
        "--resize",
        type=int,
        help="store images pre-resized: cub/cars exactly NxN (use 224), others shorter side N "
        "(use 256); the faster prepared form",
    )
    ap.add_argument("--no-verify", action="store_true", help="skip the archive checksum checks")
    ap.add_argument("--workers", type=int, help="decode/write processes (default: cores, max 8)")
    ap.add_argument("--tasks", help="vtab: only these tasks (comma-separated; default all 19)")
    args = ap.parse_args(argv)
    if args.dataset in SPLIT_FILE_DATASETS:
        if args.source is None:
            raise UserError(f"--source PATH is required: the folder {args.dataset} came in")
        prepare_split_files(args.dataset, args.source, args.out, args.tasks)
        return
    source = args.source
    if args.download:
        source = fetch(args.dataset, source or args.out / "downloads" / args.dataset)
    elif source is None:
        raise UserError("--source PATH is required (or --download for cub, flowers, sketch)")
    prepare_dataset(
        args.dataset,
        source,
        args.out,
        resize=args.resize,
        allow_count_mismatch=args.allow_count_mismatch,
        verify=not args.no_verify,
        workers=args.workers,
    )


if __name__ == "__main__":
    main()
