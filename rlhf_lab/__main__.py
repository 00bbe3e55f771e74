"""``python -m rlhf_lab [overrides]``: plugins first (they add config options), then Hydra.

With nothing to compose on the command line, the run is the lab's default, ``pipeline=rlhf``
(SFT, reward model, PPO on the gold-reward world; it prints the gold reward before and after and
the KL): the override is added to the command line, so ``.hydra/overrides.yaml`` records it.
"Nothing to compose" means no override except ``hydra.*``, ``resume`` and ``resume_allow_changes``
(where the run goes and whether it resumes), so ``python -m rlhf_lab resume=auto hydra.run.dir=DIR``
continues the default run. Any other override composes from the base config as usual: ``python -m rlhf_lab
objective=sft`` is the single SFT job on the embedded data, ``objective=dpo trainer=fsdp`` DPO.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf_lab.errors import RlhfLabError
from rlhf_lab.plugins import disabled_from_argv, load_plugins

_PKG = Path(__file__).resolve().parent
# conf/ sits inside the installed wheel, and beside the package in a source checkout.
CONF_DIR = str(_PKG / "conf" if (_PKG / "conf").is_dir() else _PKG.parent / "conf")
log = logging.getLogger("rlhf_lab")

DEFAULT_RUN = "pipeline=rlhf"
_CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun")


def with_default_run(argv: list[str]) -> list[str]:
    """``argv`` plus ``DEFAULT_RUN`` when it composes nothing (see the module docstring)."""
    if any(a.split("=", 1)[0] in _CONFIG_FLAGS for a in argv):
        return argv
    overrides = [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]  # not flags' values
    if any(not a.lstrip("+~").startswith(("hydra.", "hydra/", "resume=", "resume_allow_changes=")) for a in overrides):
        return argv
    return [*argv, DEFAULT_RUN]


def unselected_group_option(argv: list[str]) -> str | None:
    """An error message when an override sets an option of a config group whose default is null
    (``prompting.k=3`` with no ``prompting=<name>``), which Hydra reports as an assertion."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "config.yaml").defaults)
    null_groups = [next(iter(d)) for d in defaults if isinstance(d, dict) and next(iter(d.values())) is None]
    keys = [a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a and not a.startswith("-")]
    for group in null_groups:
        options = [k for k in keys if k.startswith(f"{group}.")]
        if options and group not in keys:
            return (f"'{options[0]}' sets an option of the '{group}' group, but no {group} is selected "
                    f"(its default is none): add {group}=<name>; `python -m rlhf_lab --help` lists the options.")
    return None


def report(exc: RlhfLabError) -> None:
    """One line on the console. The traceback, with its cause (a reward function's or a plugin's own
    exception), goes into the job log (``rlhf_lab.log``), and to the console under HYDRA_FULL_ERROR=1."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (exc,), (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(exc)
    print(f"rlhf_lab: error: {exc}", file=sys.stderr)


def main() -> None:
    started = time.perf_counter()
    if len(with_default_run(sys.argv[1:])) >= len(sys.argv):
        sys.argv.append(DEFAULT_RUN)
        if not {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i"} & set(sys.argv):
            print(f"rlhf_lab: no overrides given: running the lab's default, {DEFAULT_RUN} (SFT, reward model, PPO on "
                  "the gold-reward world). `python -m rlhf_lab objective=sft` runs the single SFT job.", file=sys.stderr)
    problem = unselected_group_option(sys.argv[1:])
    if problem:
        print(f"rlhf_lab: error: {problem}", file=sys.stderr)
        sys.exit(2)
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
            report(exc)
            sys.exit(exc.exit_code)

    task()


if __name__ == "__main__":
    main()
