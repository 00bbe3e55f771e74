"""``python -m rlhf_lab.report DIR [--out OUT] [--no-wandb]``: plots and tables over the runs in DIR."""

from __future__ import annotations

import argparse
from pathlib import Path

from rlhf_lab.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab.report", description=__doc__)
    parser.add_argument("dir", type=Path, help="a run, pipeline or multirun directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: DIR/report)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the figures to W&B")
    args = parser.parse_args()
    for name, path in write_report(args.dir, args.out, wandb_log=not args.no_wandb).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
