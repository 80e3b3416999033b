"""Regenerate the result tables and figures from run records: ``make tables``.

Reads every record under --runs and the published numbers (--paper), writes Markdown, LaTeX
and CSV tables under <out>/tables/ and PNG figures under <out>/figures/, and prints which
cells have not been run. With no records it still writes the published columns. Final runs
on VTAB-1k or FGVC also get yardstick tables per backbone, <out>/tables/vtab_<backbone>.md
and fgvc_<backbone>.md (.csv beside them; reporting/yardstick.py).

Each row states its budget (method.epochs) and lr; a method run at several budgets gets a row
per budget (--mix-budgets: one row, said under the table). Runs cut short (limit_*_batches
below 1.0, debug=smoke) are left out (--include-cut-short: shown, marked †). --backbone,
--method, --dataset select (repeatable or comma-separated); --only-run drops what never ran.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from piggyback_lab.reporting.figures import write_figures
from piggyback_lab.reporting.tables import (
    CUT_MARK,
    BackboneTable,
    Selection,
    build_tables,
    load_published,
    select_records,
    write_tables,
)
from piggyback_lab.reporting.yardstick import build_yardstick_tables, write_yardstick_tables
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
    for name, what in (("backbone", "backbones"), ("method", "methods"), ("dataset", "datasets")):
        parser.add_argument(
            f"--{name}",
            action="append",
            default=[],
            help=f"only these {what} (repeatable or comma-separated)",
        )
    flags = (
        ("--mix-budgets", "let a method's row hold cells of different epoch budgets (said "
         "under the table) instead of a row per budget"),
        ("--include-cut-short", f"show runs cut short (limit_*_batches below 1.0, "
         f"debug=smoke), marked {CUT_MARK}; left out by default"),
        ("--only-run", "leave out never-run rows, columns and tables, and the list of "
         "cells not run yet"),
    )  # fmt: skip
    for flag, text in flags:
        parser.add_argument(flag, action="store_true", help=text)
    return parser.parse_args(argv)


def selection(args: argparse.Namespace) -> Selection:
    """The filters and flags as a Selection (``a,b`` and repeated flags both list names)."""

    def names(values: list[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))

    return Selection(
        backbones=names(args.backbone),
        methods=names(args.method),
        datasets=names(args.dataset),
        include_cut_short=args.include_cut_short,
        mix_budgets=args.mix_budgets,
        only_run=args.only_run,
    )


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
    sel = selection(args)
    tables = build_tables(records, published, sel)
    out = Path(args.out)
    written = write_tables(tables, out / "tables")
    yardstick = build_yardstick_tables(
        records, load_published(args.paper, include_yardstick=True), sel
    )
    written += write_yardstick_tables(yardstick, out / "tables")
    figures = write_figures(records, out / "figures", sel)
    if records:
        print(f"{len(records)} run records under {runs}")
    else:
        print(f"no run records under {runs} yet: the tables show the published columns only")
    _, cut = select_records(records, sel)
    if cut:
        print(
            f"left out {len(cut)} run{'s' * (len(cut) != 1)} cut short (limit_*_batches below "
            f"1.0 or debug=smoke); --include-cut-short shows them, marked {CUT_MARK}"
        )
    for path in [*written, *figures]:
        print(f"wrote {path}")
    mini_tables = [out / "tables" / f"{name}.md" for name in README_BACKBONES]
    if args.readme and update_readme(Path(args.readme), mini_tables):
        print(f"updated the mini-benchmark table in {args.readme}")
    print_not_run(tables)
    return 0


def print_not_run(tables: list[BackboneTable]) -> None:
    """The cells not run yet, per backbone and method (none listed with --only-run)."""
    not_run = [(t.backbone, m, d) for t in tables for m, d in t.not_run]
    if not not_run:
        return
    print(f"cells not run yet ({len(not_run)}; --only-run leaves them out):")
    for table in tables:
        by_method: dict[str, list[str]] = {}
        for method, dataset in table.not_run:
            by_method.setdefault(method, []).append(dataset)
        for method, datasets in by_method.items():
            print(f"  {table.backbone} {method}: {', '.join(datasets)}")


if __name__ == "__main__":
    sys.exit(main())
