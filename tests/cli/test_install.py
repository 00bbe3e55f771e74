"""Installed as a wheel (not editable) and run from another directory: conf/ ships in the package."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # every test here starts python -m rlhf_lab


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """Build the wheel without network (hatchling is in the test extra) and unpack it into a target dir."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)], check=True)
    [wheel] = list(dist.glob("rlhf_lab-*.whl"))
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True)
    assert (site / "rlhf_lab" / "conf" / "config.yaml").exists()
    assert (site / "rlhf_lab" / "assets" / "tiny" / "tokenizer.json").exists()
    return site


def run_installed(site, cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(site), "CI": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_runs_from_another_directory(wheel_site, tmp_path):
    where = run_installed(wheel_site, tmp_path, "-c", "import rlhf_lab; print(rlhf_lab.__file__)")
    assert where.stdout.startswith(str(wheel_site)), where.stdout + where.stderr
    assert "objective: " in run_installed(wheel_site, tmp_path, "-m", "rlhf_lab", "--help").stdout
    shown = run_installed(wheel_site, tmp_path, "-m", "rlhf_lab", "--cfg", "job").stdout  # no overrides: the default pipeline
    assert "name: rlhf" in shown and "name: ppo" in shown
    res = run_installed(wheel_site, tmp_path, "-m", "rlhf_lab", "trainer.max_steps=3", "data.num_rows=100", "logger=csv")
    assert res.returncode == 0, res.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "outputs").glob("*/*/summary.json")]
    assert (run_dir / "model" / "model.safetensors").exists()
