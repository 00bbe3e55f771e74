"""``python -m rlhf_lab.report DIR [--out OUT] [--no-wandb] [--metric KEY --direction maximize]``:
tables and plots over the runs in DIR (a run, a pipeline or a multirun directory)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf_lab.errors import RlhfLabError
from rlhf_lab.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab.report", description=__doc__)
    parser.add_argument("dir", type=Path, help="a run, pipeline or multirun directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: DIR/report)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the figures to W&B")
    parser.add_argument("--metric", action="append", help="a summary.json key to rank and plot (default: the jobs' sweep.metric); repeat for several")
    parser.add_argument("--direction", action="append", choices=["minimize", "maximize"], help="one per --metric (default: minimize)")
    args = parser.parse_args()
    try:
        written = write_report(args.dir, args.out, wandb_log=not args.no_wandb, metric=args.metric, direction=args.direction)
    except RlhfLabError as exc:
        print(f"rlhf_lab.report: error: {exc}", file=sys.stderr)
        sys.exit(1)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
