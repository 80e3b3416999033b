"""Regenerate the result tables and figures from run records: ``make tables``.

Reads every record under --runs and the published numbers (--paper), writes Markdown, LaTeX
and CSV tables under <out>/tables/ and PNG figures under <out>/figures/, and prints which
cells have not been run. With no records it still writes the published columns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from piggyback_lab.reporting.figures import write_figures
from piggyback_lab.reporting.tables import build_tables, load_published, write_tables
from piggyback_lab.runs.records import read_records
from piggyback_lab.utils.atomic import atomic_write_bytes
from piggyback_lab.utils.errors import UserError, exit_on_user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="results/runs", help="folder of run records")
    parser.add_argument("--out", default="results", help="writes <out>/tables and <out>/figures")
    parser.add_argument(
        "--paper", default="results/paper/published.csv", help="published numbers (CSV)"
    )
    parser.add_argument(
        "--readme",
        default=None,
        help="a Markdown file whose mini-benchmark section (between the markers "
        f"{README_START!r} and {README_END!r}) is replaced by the tables measured on a "
        "laptop CPU (minicnn, minivit, efficientnet_lite0)",
    )
    return parser.parse_args(argv)


README_START, README_END = "<!-- mini-table:start -->", "<!-- mini-table:end -->"
# the tables measured on a laptop CPU: the mini benchmark and the real-transfer one, in order
README_BACKBONES = ("minicnn", "minivit", "efficientnet_lite0")


def update_readme(readme: Path, tables: list[Path]) -> bool:
    """Put the ``tables`` that exist between the README's markers; False when the markers
    are missing or no table exists."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    found = [t for t in tables if t.exists()]
    if start < 0 or end < start or not found:
        return False
    body = "\n\n".join(t.read_text().strip() for t in found)
    atomic_write_bytes(
        readme, (text[: start + len(README_START)] + "\n" + body + "\n" + text[end:]).encode()
    )
    return True


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = Path(args.runs)
    if runs.exists() and not runs.is_dir():
        raise UserError(f"--runs {runs} is a file; pass the folder that holds the run records")
    records = read_records(runs) if runs.is_dir() else []
    published = load_published(args.paper)
    tables = build_tables(records, published)
    out = Path(args.out)
    written = write_tables(tables, out / "tables")
    figures = write_figures(records, out / "figures")
    if records:
        print(f"{len(records)} run records under {runs}")
    else:
        print(f"no run records under {runs} yet: the tables show the published columns only")
    for path in written:
        print(f"wrote {path}")
    for path in figures:
        print(f"wrote {path}")
    mini_tables = [out / "tables" / f"{name}.md" for name in README_BACKBONES]
    if args.readme and update_readme(Path(args.readme), mini_tables):
        print(f"updated the mini-benchmark table in {args.readme}")
    not_run = [(t.backbone, m, d) for t in tables for m, d in t.not_run]
    if not_run:
        print(f"cells not run yet ({len(not_run)}):")
        for table in tables:
            by_method: dict[str, list[str]] = {}
            for method, dataset in table.not_run:
                by_method.setdefault(method, []).append(dataset)
            for method, datasets in by_method.items():
                print(f"  {table.backbone} {method}: {', '.join(datasets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
