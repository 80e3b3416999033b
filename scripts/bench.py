"""`make bench`: the costs that matter (issue 10), as ratios measured in one run.

python scripts/bench.py [--quick] [--only 1,3] [--device cpu|cuda] [--threads N] [--out DIR]
Writes <out>/<device>.json and <device>.md (``-quick`` appended with --quick); with --only,
the figures not re-measured are kept from the existing file of the same device. Figure 1 is
reported twice: at the device's shape and at the paper's (resnet50, batch 32, 224x224,
median of 3 steps; on CPU each step takes seconds). The figures are in benchmarks.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# torch.profiler's kineto logs its stages and, with no GPU, "gpuGetDeviceCount failed" to
# stderr: quiet below fatal (read when the profiler first starts).
os.environ.setdefault("KINETO_LOG_LEVEL", "99")

import torch
from benchmarks import FIGURES, RUNNERS, Settings, device_slug, run_figures, write_results

from piggyback_lab.utils.errors import UserError, exit_on_user_error


def parse_only(text: str | None) -> list[int]:
    if not text:
        return sorted(RUNNERS)
    try:
        numbers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        numbers = []
    if not numbers or any(n not in RUNNERS for n in numbers):
        raise UserError(
            f"--only takes figure numbers among 1-{len(RUNNERS)}, e.g. 1,3 (got {text!r})"
        )
    return numbers


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__,
        epilog="figures: " + "; ".join(f"{n}. {name}" for n, name in FIGURES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes (minicnn, figure 1 included), for tests"
    )
    ap.add_argument("--only", help="comma-separated figure numbers (default: all)")
    ap.add_argument("--device", choices=("cpu", "cuda"),
                    default="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1: steadier ratios on a busy machine)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    args = ap.parse_args(argv)
    only = parse_only(args.only)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1 (got {args.threads})")
    torch.set_num_threads(args.threads)
    settings = Settings.for_device(args.device, quick=args.quick)
    result = run_figures(settings, only)
    stem = device_slug(args.device) + ("-quick" if args.quick else "")
    json_path, md_path = write_results(result, args.out, stem)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
