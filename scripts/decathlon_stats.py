"""(Re)compute the Visual Decathlon per-domain mean/std from the extracted train images.

    python scripts/decathlon_stats.py --root data/decathlon-1.0 \
        --out data/splits/decathlon_stats.json [--domains dtd svhn] [--max-images 50000]

The loader reads the values from --out (conf/dataset/decathlon/*.yaml: stats).
scripts/prepare_decathlon.py computes the domains still missing there on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from piggyback_lab.data.decathlon import DOMAINS, write_stats
from piggyback_lab.utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-domain mean/std of the decathlon images.")
    parser.add_argument("--root", default="data/decathlon-1.0", help="the decathlon-1.0 folder")
    parser.add_argument("--out", default="data/splits/decathlon_stats.json")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--max-images", type=int, default=None, help="seeded subset per domain")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stats = write_stats(args.root, args.out, args.domains, args.max_images, args.seed)
    for domain, entry in stats.items():
        print(f"{domain}: mean {entry['mean']} std {entry['std']} ({entry['images']} images)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
