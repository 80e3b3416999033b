"""Compute the Visual Decathlon per-domain mean/std from the extracted train images.

    python scripts/decathlon_stats.py --root data/decathlon-1.0 \
        --out data/splits/decathlon_stats.json [--domains dtd svhn] [--max-images 50000]

The loader reads the values from --out (conf/dataset/decathlon/*.yaml: stats).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.data.decathlon import DOMAINS, compute_stats, update_stats_file
from src.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-domain mean/std of the decathlon images.")
    parser.add_argument("--root", default="data/decathlon-1.0", help="the decathlon-1.0 folder")
    parser.add_argument("--out", default="data/splits/decathlon_stats.json")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--max-images", type=int, default=None, help="seeded subset per domain")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stats = {}
    for domain in args.domains:
        stats[domain] = compute_stats(args.root, domain, args.max_images, args.seed)
        print(f"{domain}: mean {stats[domain]['mean']} std {stats[domain]['std']}")
    print(f"wrote {update_stats_file(args.out, stats)}")


if __name__ == "__main__":
    main()
