"""Whole runs inside the test process: Hydra's compose API builds the config the CLI would build
(plugins' options included, the command line normalised as ``python -m rlhf_lab`` does), and
``app.run`` trains, exports and writes summary.json as in a CLI run, without a subprocess's start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from rlhf_lab.__main__ import CONF_DIR, whole_mappings
from rlhf_lab.plugins import PluginHost, load_plugins

# One thread's worth of quick settings: CSV metrics every step, no validation split, no checkpoint.
QUICK = ("logger=csv", "trainer.log_every_n_steps=1", "data.val_fraction=0", "trainer.save_checkpoint=false")


@lru_cache(maxsize=1)
def plugin_host() -> PluginHost:
    host = load_plugins()
    host.store_configs()
    return host


def compose_cli(*overrides: str, hydra_config: bool = False) -> DictConfig:
    """The config ``python -m rlhf_lab *overrides`` runs with."""
    plugin_host()
    argv = whole_mappings(list(overrides))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=argv, return_hydra_config=hydra_config)


def run_in_process(run_dir: Path, *overrides: str) -> dict:
    """``python -m rlhf_lab *overrides hydra.run.dir=run_dir``, in this process; returns the summary."""
    cfg = compose_cli(*overrides, f"hydra.run.dir={run_dir}", hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    from rlhf_lab.app import run

    return run(cfg, plugin_host())
