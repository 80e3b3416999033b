"""Check an extracted Visual Decathlon tree against the devkit JSONs and the published counts.

    python scripts/prepare_decathlon.py --root data/decathlon-1.0 [--domains dtd svhn]

Nothing is downloaded (the archives need a browser / an ImageNet account): it says what is
missing. Split sizes come from conf/dataset/decathlon/<domain>.yaml (counts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omegaconf import OmegaConf

from src.data.decathlon import DOMAINS, check_tree
from src.errors import exit_on_user_error

CONF = Path(__file__).resolve().parent.parent / "conf" / "dataset" / "decathlon"


def published_counts(domains: list[str]) -> dict[str, dict]:
    return {d: dict(OmegaConf.load(CONF / f"{d}.yaml").counts) for d in domains}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check the extracted decathlon tree.")
    parser.add_argument("--root", default="data/decathlon-1.0", help="the decathlon-1.0 folder")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument(
        "--no-counts", action="store_true", help="skip the published split-size check"
    )
    args = parser.parse_args(argv)
    counts = None if args.no_counts else published_counts(args.domains)
    for line in check_tree(args.root, args.domains, counts):
        print(line)


if __name__ == "__main__":
    main()
