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

import atexit
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rlhf_lab.errors import Preempted, RlhfLabError
from rlhf_lab.lab.pipeline import STANDBY_ENV, follow_pipeline, wait_for_turn
from rlhf_lab.plugins import DISABLE_ENV, KIND_GROUPS, PluginHost, disabled_from_argv, load_plugins

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


def option_of_a_disabled_plugin(argv: list[str], host: PluginHost) -> str | None:
    """An error message when an override selects an option that is not there while plugins are
    disabled (Hydra would say only "Could not find 'objective/orpo'"): it may be theirs. Call it
    after ``host.store_configs()``."""
    from hydra.core.config_store import ConfigStore

    if not host.disabled:
        return None
    for arg in argv:
        group, sep, value = arg.lstrip("+~").partition("=")
        if not sep or group not in KIND_GROUPS.values():
            continue
        stored = {name.removesuffix(".yaml") for name in ConfigStore.instance().repo.get(group, {})}
        options = stored | {path.stem for path in (Path(CONF_DIR) / group).glob("*.yaml")}
        for name in value.split(","):  # a sweep: objective=sft,orpo
            if name and name != "null" and name not in options:
                likely = [info for info in host.disabled if info.name == name] or host.disabled
                which = ", ".join(str(info) for info in likely)
                return (f"{group}={name} is not an option while {which} {'is' if len(likely) == 1 else 'are'} disabled, "
                        f"which may register it: to enable, remove its name or its distribution's from plugins.disable=[...] "
                        f"and {DISABLE_ENV}.")
    return None


# Sweeper / launcher options that come from a Hydra plugin in one of our extras: option -> (plugin module, extra).
PLUGIN_EXTRAS = {
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    "hydra/launcher=ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def missing_extra(argv: list[str]) -> str | None:
    """An error message naming the extra to install when a chosen sweeper or launcher is not
    installed (Hydra itself says only "Could not find 'hydra/launcher/ray'")."""
    import importlib.util

    for arg in argv:
        module, extra = PLUGIN_EXTRAS.get(arg.lstrip("+~"), (None, None))
        if module and importlib.util.find_spec(module) is None:
            return f"{arg} needs the '{extra}' extra: pip install 'rlhf_lab[{extra}]' (scripts/setup.sh {extra})."
    return None


def whole_mappings(argv: list[str]) -> list[str]:
    """``argv`` with every mapping given whole (``'data.fields={prompt: question}'``,
    ``'data.sources={math: {path: m.jsonl}}'``) made to replace the mapping it names.

    Hydra sets the composed config to struct mode before it applies command-line overrides, which
    closes every dict, ``Dict[str, ...]`` schema fields included, and it merges a dict override
    into the dict already there: ``data.fields={...}`` fails with "Key 'prompt' is not in struct",
    and ``data=mixture data.sources={...}`` would keep the preset's sources. So each such
    override becomes the deletion of the keys the mapping holds (``~data.sources.add``; found by
    composing the other overrides) and a forced merge into the emptied mapping
    (``++data.sources={...}``): the entries are still checked against their schema
    (``SourceConfig``), and one entry can still be changed alone (``data.sources.math.weight=2``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    parser = OverridesParser.create()
    parsed = {}
    for i, arg in enumerate(argv):
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # Hydra reports it with its own message
            continue
        if not override.is_sweep_override() and isinstance(override.value(), dict):
            parsed[i] = override.key_or_group
    if not parsed:
        return argv
    others = [a for i, a in enumerate(argv) if i not in parsed and "=" in a and not a.startswith("-") and "," not in a]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=others)
    except Exception:  # the real composition below reports what is wrong
        return argv
    out = []
    for i, arg in enumerate(argv):
        node = OmegaConf.select(cfg, parsed[i], default=None) if i in parsed else None
        if isinstance(node, DictConfig) and not node._is_typed():  # a mapping, not a schema's own fields
            out += [f"~{parsed[i]}.{key}" for key in node] + [f"++{arg}"]
        else:
            out.append(arg)
    return out


def report(exc: RlhfLabError, where: str = "") -> None:
    """One line on the console. The traceback, with its cause (a reward function's or a plugin's own
    exception), goes into the job log (``rlhf_lab.log``), and to the console under HYDRA_FULL_ERROR=1."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (exc,), (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(exc)
    print(f"rlhf_lab: error: {where}{exc}", file=sys.stderr)


def main() -> None:
    follow_pipeline()  # a pipeline's stage: stopped (SIGTERM) when the pipeline ends
    if os.environ.pop(STANDBY_ENV, None):  # a pipeline's stage, started ahead of its turn
        wait_for_turn()
    started = time.perf_counter()
    if len(with_default_run(sys.argv[1:])) >= len(sys.argv):
        sys.argv.append(DEFAULT_RUN)
        if not {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i"} & set(sys.argv):
            print(f"rlhf_lab: no overrides given: running the lab's default, {DEFAULT_RUN} (SFT, reward model, PPO on "
                  "the gold-reward world). `python -m rlhf_lab objective=sft` runs the single SFT job.", file=sys.stderr)
    problem = unselected_group_option(sys.argv[1:]) or missing_extra(sys.argv[1:])
    if problem:
        print(f"rlhf_lab: error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        host = load_plugins(disabled_from_argv(sys.argv[1:]))
    except RlhfLabError as exc:
        print(f"rlhf_lab: error: {exc}", file=sys.stderr)
        sys.exit(1)
    host.store_configs()
    problem = option_of_a_disabled_plugin(sys.argv[1:], host)
    if problem:
        print(f"rlhf_lab: error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = whole_mappings(sys.argv[1:])

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> float | tuple[float, ...] | None:
        """One run. In a sweep it returns ``sweep.metric`` to the sweeper, and a job that fails
        returns None and the sweep goes on (rlhf_lab.sweep says why None, and how the sweep ends)."""
        from rlhf_lab.app import run
        from rlhf_lab.sweep import sweep_value

        job = HydraConfig.get().job
        in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
        try:
            summary = run(cfg, host, time.perf_counter() if in_sweep else started)  # a job's wall_s counts from its start
        except RlhfLabError as exc:
            report(exc, f"job {job.num}: " if in_sweep else "")
            if in_sweep and not isinstance(exc, Preempted):
                return None
            sys.exit(exc.exit_code)
        except Exception:
            if not in_sweep:
                raise
            log.exception("job %s failed", job.num)
            return None
        return sweep_value(summary, cfg.sweep)

    task()


def command() -> None:
    """``main()`` as a process (``python -m rlhf_lab``, the ``rlhf-lab`` script). Once it is over, the
    exit handlers run (W&B's, logging's, plugins') and the process ends without tearing down its
    modules: with torch, transformers and Lightning loaded that takes ~1.4 s of CPU, paid by every run
    and every pipeline stage, and does nothing a finished run needs. It ends as usual after any other
    exception than ``SystemExit``, while a thread that is not a daemon still runs, or under a
    profiler, tracer or debugger."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        if not isinstance(exc.code, (int, type(None))):  # sys.exit("message"): Python prints it
            raise
        code = exc.code or 0
    profiled = sys.getprofile() is not None or sys.gettrace() is not None  # cProfile, coverage, a debugger: they write at exit
    if profiled or any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the interpreter runs at exit, before its teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    command()
