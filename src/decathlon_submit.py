"""Write the Visual Decathlon server submission: ``python -m src.decathlon_submit``.

One ``results.json`` over the ten test sets, each domain predicted by one trained run
(its record and task file); see piggyback_lab/runs/submission.py. Zip it for the evaluation server.
"""

from __future__ import annotations

import argparse

import torch

from piggyback_lab.data.decathlon import DOMAINS
from piggyback_lab.runs.records import read_record, read_records
from piggyback_lab.runs.submission import select_records, submit
from piggyback_lab.utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="method whose runs to submit")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--protocol", default=None, help="e.g. final (trained on train+val)")
    parser.add_argument("--runs", default="results/runs", help="folder of run records")
    parser.add_argument("--records", nargs="+", default=None, help="explicit record files")
    parser.add_argument("--out", default="results/decathlon/results.json")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    records = [read_record(p) for p in args.records] if args.records else read_records(args.runs)
    chosen = select_records(records, args.method, args.backbone, args.seed, args.protocol)
    path = submit(chosen, args.out, DOMAINS, args.device, args.batch_size, args.num_workers)
    print(f"wrote {path}; zip it (zip results.zip {path.name}) and upload it to the server")


if __name__ == "__main__":
    main()
