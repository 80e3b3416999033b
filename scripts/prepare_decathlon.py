"""Check an extracted Visual Decathlon tree against the devkit JSONs and the published counts,
then compute the per-domain mean/std the loaders read.

    python scripts/prepare_decathlon.py --root data/decathlon-1.0 [--domains dtd svhn]

Nothing is downloaded (the archives need a browser / an ImageNet account): it says what is
missing. Split sizes come from conf/dataset/decathlon/<domain>.yaml (counts). Mean/std are
computed from each domain's train images (a seeded subset of --max-images for imagenet12)
for the domains not yet in --stats; scripts/decathlon_stats.py recomputes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omegaconf import OmegaConf

from piggyback_lab.data.decathlon import DOMAINS, check_tree, write_stats
from piggyback_lab.utils.errors import exit_on_user_error

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
    parser.add_argument("--stats", default="data/splits/decathlon_stats.json")
    parser.add_argument("--no-stats", action="store_true", help="only check the tree")
    parser.add_argument("--max-images", type=int, default=50_000, help="per domain, for stats")
    args = parser.parse_args(argv)
    counts = None if args.no_counts else published_counts(args.domains)
    for line in check_tree(args.root, args.domains, counts):
        print(line)
    if args.no_stats:
        return
    stats = write_stats(args.root, args.stats, args.domains, args.max_images, recompute=False)
    for domain, entry in stats.items():
        print(f"{domain}: mean {entry['mean']} std {entry['std']} ({entry['images']} images)")
    print(f"mean/std of {len(args.domains)} domain(s) in {args.stats}")


if __name__ == "__main__":
    main()
