"""The Visual Decathlon score S of the recorded runs: ``python -m src.decathlon --runs DIR``."""

from __future__ import annotations

import argparse

from piggyback_lab.reporting.decathlon import recipe_sources, score_records
from piggyback_lab.runs.records import read_records
from piggyback_lab.utils.errors import UserError, exit_on_user_error


def _fmt(score: float | None) -> str:
    return "-" if score is None else f"{score:.0f}"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Decathlon scores of the recorded runs.")
    parser.add_argument("--runs", default="results/runs", help="folder of run records")
    args = parser.parse_args(argv)
    rows = score_records(read_records(args.runs))
    if not rows:
        raise UserError(f"no decathlon run records under {args.runs}; train dataset=decathlon/*")
    for row in rows:
        missing = f"  missing: {', '.join(row['missing'])}" if row["missing"] else ""
        print(
            f"{row['backbone']} {row['method']} seed {row['seed']} ({row['protocol']}): "
            f"S val {_fmt(row['score_val'])}  S test {_fmt(row['score_test'])}{missing}"
        )
    for method, source in recipe_sources(sorted({row["method"] for row in rows})).items():
        print(f"recipe of {method}: {source}")


if __name__ == "__main__":
    main()
