"""pytest fixtures for plugin authors, active in any pytest run where rlhf_lab is installed (entry
point ``pytest11``). They run the real CLI in a subprocess, offline, as a user would:

- ``rlhf_lab_run(*overrides, steps=3)``: a few training steps on the embedded tiny model and data.
- ``rlhf_lab_cli(*args, module="rlhf_lab")``: the CLI as is (``--help``, expected failures,
  ``module="rlhf_lab.plugins"`` for the plugin listing).
- ``rlhf_lab_tokenizer``: the embedded tiny tokenizer, for reward functions and prompt builders.
- ``rlhf_lab_lm(task)``: the embedded tiny model as a prompting strategy's ``run`` talks to it.
- ``rlhf_lab_fake_plugins``: plugin modules as distributions, without pip.

Only the standard library and pytest are imported here, so loading this plugin costs nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

QUICK = ("logger=csv", "data.num_rows=64", "data.batch_size=8", "trainer.log_every_n_steps=1")
OFFLINE_ENV = {
    "CI": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())


def run_cli(*args: str, cwd: Path, module: str = "rlhf_lab", env: dict | None = None, run_dir: Path | None = None, timeout: int = 600) -> RunResult:
    """``python -m <module> *args`` in a subprocess, offline; ``env`` is added to the environment
    (a value of None removes that variable)."""
    full_env = {k: v for k, v in {**os.environ, **OFFLINE_ENV, **(env or {})}.items() if v is not None}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return RunResult(proc.returncode, proc.stdout, proc.stderr, run_dir)


@pytest.fixture
def rlhf_lab_cli(tmp_path):
    """``rlhf_lab_cli(*args, module="rlhf_lab", env=None) -> RunResult``, run in ``tmp_path``."""

    def _cli(*args: str, module: str = "rlhf_lab", env: dict | None = None) -> RunResult:
        return run_cli(*args, cwd=tmp_path, module=module, env=env)

    return _cli


@pytest.fixture
def rlhf_lab_run(tmp_path):
    """``rlhf_lab_run(*overrides, steps=3, env=None) -> RunResult``: train ``steps`` optimiser steps
    on the tiny model and 64 rows of the embedded data (seconds on a CPU), in a fresh run dir; fails
    the test with the run's output unless it succeeds. ``result.summary`` is its summary.json."""
    runs = iter(range(1000))

    def _run(*overrides: str, steps: int = 3, env: dict | None = None) -> RunResult:
        run_dir = tmp_path / f"run{next(runs)}"
        args = (*QUICK, f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}", *overrides)
        result = run_cli(*args, cwd=tmp_path, env=env, run_dir=run_dir)
        if result.returncode != 0:
            pytest.fail(f"python -m rlhf_lab {' '.join(overrides)} exited {result.returncode}:\n{result.output[-4000:]}")
        return result

    return _run


@pytest.fixture(scope="session")
def rlhf_lab_tokenizer():
    """The embedded tiny tokenizer (byte-level BPE, 512 tokens, with a chat template)."""
    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="session")
def rlhf_lab_lm(rlhf_lab_tokenizer):
    """``rlhf_lab_lm(task) -> LM``: the embedded tiny model (random weights, in this process) as a
    strategy's ``run`` sees it, to test a strategy's stages: ``lm.calls`` counts the batched calls,
    ``lm.trace[i]`` holds document i's generations (``prompt``, ``outputs``)."""
    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models import load_causal_lm
    from rlhf_lab.prompting.lm import LM

    model = load_causal_lm(ModelConfig())
    return lambda task: LM(model, rlhf_lab_tokenizer, task, "prompting=under_test")


@dataclass
class FakeSite:
    """A folder of plugin modules with ``.dist-info`` metadata: on ``sys.path`` or ``PYTHONPATH``,
    importlib.metadata finds them exactly like installed distributions."""

    path: Path

    def add(self, distribution: str, source: str, *, module: str | None = None, entry_point: str | None = None, version: str = "0.0.1") -> str:
        """Module ``source`` (named ``module``, default: the distribution's name with underscores)
        in a distribution whose entry point (default: the module name) is in group ``rlhf_lab``.
        Returns the module name."""
        module = module or re.sub(r"[-.]", "_", distribution)
        (self.path / f"{module}.py").write_text(source)
        dist_info = self.path / f"{module}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        (dist_info / "entry_points.txt").write_text(f"[rlhf_lab]\n{entry_point or module} = {module}\n")
        return module

    @property
    def env(self) -> dict:
        """The ``env`` argument that shows these distributions to a CLI subprocess."""
        return {"PYTHONPATH": os.pathsep.join(filter(None, [str(self.path), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def rlhf_lab_fake_plugins(tmp_path) -> FakeSite:
    """Plugins as distributions without pip: ``site.add(distribution, source)``, then run the CLI
    with ``env=site.env`` (or ``monkeypatch.syspath_prepend(site.path)`` in process)."""
    site = tmp_path / "site"
    site.mkdir()
    return FakeSite(site)
