"""Shared fixtures: the tiny tokenizer and model, a saved model directory, and a CLI runner that
starts ``python -m rlhf_lab`` as a real subprocess in its own output directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlhf_lab.testing import RunResult
from rlhf_lab.testing import run_cli as _run_cli

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items):
    """A test that starts ``python -m rlhf_lab`` (the ``cli`` and ``rlhf_lab_run`` fixtures) is
    slow by definition: ``pytest -m "not slow"`` stays the fast lane without anyone remembering."""
    for item in items:
        if {"cli", "rlhf_lab_run"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _offline_env(tmp_path_factory):
    # Caches (DPO reference log-probs) go to a per-session directory, never the user's home.
    os.environ["RLHF_LAB_CACHE"] = str(tmp_path_factory.mktemp("rlhf_lab_cache"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("CI", "1")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The embedded tiny model saved with save_pretrained: a stand-in for a hub checkpoint."""
    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models import load_causal_lm

    out = tmp_path_factory.mktemp("tiny_model")
    load_causal_lm(ModelConfig()).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def arch_dir(tmp_path_factory):
    """``arch_dir(family) -> Path``: a saved random-init checkpoint of one of tests/archs.py's
    families (gpt2, llama, qwen2, mistral) with its tokenizer quirks, built once per session."""
    from tests.archs import build

    root, built = tmp_path_factory.mktemp("archs"), {}

    def _dir(family: str) -> Path:
        if family not in built:
            built[family] = build(family, root / family)
        return built[family]

    return _dir


def feature_set(rows: list[dict], fmt: str, encode, encoder, **data):
    """``rows`` through the real data path (validated, tokenised, cached table) as a FeatureSet, in
    row order: a loader returns them, nothing is held out."""
    from rlhf_lab.config import DataConfig
    from rlhf_lab.data.module import DataModule

    cfg = DataConfig(loader="rows", val_fraction=0.0, **data)
    return DataModule(cfg, fmt, encode, encoder, {"rows": lambda src, fmt: rows}, seed=0).train_features


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(run_dir: Path, *overrides: str, cwd: Path | None = None, env: dict | None = None, module: str = "rlhf_lab", timeout: int = 600) -> RunResult:
    """``python -m rlhf_lab *overrides`` in ``run_dir`` (unless the overrides name a hydra.run.dir)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    run_dir = Path(given[-1]) if given else run_dir
    args = [*overrides, *([] if given else [f"hydra.run.dir={run_dir}"])]
    return _run_cli(*args, cwd=cwd or REPO, module=module, env=env, run_dir=run_dir, timeout=timeout)


@pytest.fixture
def cli(tmp_path):
    """``cli(*overrides)`` runs the real CLI in a fresh run dir under tmp_path."""
    counter = iter(range(1000))

    def _run(*overrides: str, **kwargs) -> RunResult:
        return run_cli(tmp_path / f"run{next(counter)}", *overrides, **kwargs)

    return _run
