"""``python -m rlhf_lab [overrides]``: plugins first (they add config options), then Hydra."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf_lab.errors import RlhfLabError
from rlhf_lab.plugins import disabled_from_argv, load_plugins

_PKG = Path(__file__).resolve().parent
# conf/ sits inside the installed wheel, and beside the package in a source checkout.
CONF_DIR = str(_PKG / "conf" if (_PKG / "conf").is_dir() else _PKG.parent / "conf")
log = logging.getLogger("rlhf_lab")


def main() -> None:
    started = time.perf_counter()
    try:
        host = load_plugins(disabled_from_argv(sys.argv[1:]))
    except RlhfLabError as exc:
        print(f"rlhf_lab: error: {exc}", file=sys.stderr)
        sys.exit(1)
    host.store_configs()

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> None:
        from rlhf_lab.app import run

        try:
            run(cfg, host, started)
        except RlhfLabError as exc:
            log.error("%s", exc)
            print(f"rlhf_lab: error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)

    task()


if __name__ == "__main__":
    main()
