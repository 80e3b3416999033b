"""Bundle task files with their backbone reference, and re-check a bundle.

  python -m src.bundle export --out BUNDLE [--weights W] [--records DIR] TASK [TASK ...]
  python -m src.bundle verify BUNDLE [--weights W]

What a bundle holds and what verify checks: src/piggyback_lab/runs/bundles.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from piggyback_lab.runs.bundles import export_bundle, verify_bundle
from piggyback_lab.utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.bundle", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a bundle folder from task files")
    exp.add_argument("tasks", nargs="+", help="task files or folders of them")
    exp.add_argument("--out", required=True, help="bundle folder to write")
    exp.add_argument("--weights", help="backbone weights (default: the backbone config's)")
    exp.add_argument("--records", default="results", help="where run records are (accuracy)")
    ver = sub.add_parser("verify", help="re-check a bundle folder")
    ver.add_argument("folder")
    ver.add_argument("--weights", help="backbone weights to check against the fingerprint")
    args = parser.parse_args(argv)
    if args.command == "export":
        manifest = export_bundle(args.out, args.tasks, args.weights, args.records)
        for t in manifest["tasks"]:
            acc = f"{t['accuracy']['top1']:.2f}%" if t["accuracy"] else "n/a"
            print(f"{t['name']}: {t['dataset']}, {t['num_classes']} classes, top-1 {acc}, "
                  f"{t['bits_per_weight']:.3f} bits/weight")  # fmt: skip
        print(f"bundle written to {args.out}")
    else:
        result = verify_bundle(args.folder, args.weights)
        note = "" if result["backbone_checked"] else " (backbone weights not checked)"
        print(f"bundle {args.folder}: {result['tasks']} tasks verified{note}")


if __name__ == "__main__":
    main()
