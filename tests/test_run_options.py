"""Whole runs in this process for options no other test reaches: the run hooks of a plugin, a
separate validation file, data.limit, data loader workers, and resume from a checkpoint path."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rlhf_lab import hookimpl
from rlhf_lab.errors import ConfigError
from tests.conftest import write_jsonl
from tests.inprocess import QUICK, plugin_host, run_in_process

STEP = (*QUICK, "data.num_rows=32", "data.batch_size=4", "trainer.max_steps=1", "export=false")
ROWS = [{"prompt": f"What is {a} + {b}?", "completion": str(a + b)} for a in range(6) for b in range(4)]  # 24 rows


class RecordingPlugin:
    def __init__(self):
        self.seen = []

    @hookimpl
    def rlhf_lab_configure(self, cfg):
        self.seen.append(("configure", cfg.objective.name))
        if cfg.optim.lr == 0.123:
            raise ConfigError("optim.lr=0.123 is rejected by the test plugin")

    @hookimpl
    def rlhf_lab_run_end(self, cfg, summary, run_dir):
        self.seen.append(("run_end", summary["global_step"]))
        summary["plugin/extra"] = 7


@pytest.fixture
def plugin():
    host, recorder = plugin_host(), RecordingPlugin()
    host.pm.register(recorder, name="recording-test-plugin")
    yield recorder
    host.pm.unregister(recorder)


def test_run_hooks_see_the_config_first_and_add_to_the_summary_last(tmp_path, plugin):
    summary = run_in_process(tmp_path / "ok", *STEP)
    assert plugin.seen == [("configure", "sft"), ("run_end", 1)]
    assert summary["plugin/extra"] == 7 and json.loads((tmp_path / "ok" / "summary.json").read_text())["plugin/extra"] == 7
    with pytest.raises(ConfigError, match="rejected by the test plugin"):
        run_in_process(tmp_path / "rejected", *STEP, "optim.lr=0.123")
    assert not (tmp_path / "rejected" / "summary.json").exists()


def test_val_path_and_limit_choose_the_rows(tmp_path):
    train, val = write_jsonl(tmp_path / "train.jsonl", ROWS), write_jsonl(tmp_path / "val.jsonl", ROWS[:5])
    data = ("data=jsonl", f"data.path={train}", f"data.val_path={val}")
    summary = run_in_process(tmp_path / "val", *STEP, *data)
    assert (summary["data/train_rows"], summary["data/val_rows"]) == (24, 5)  # every training row, the val file's rows
    limited = run_in_process(tmp_path / "limit", *STEP, *data, "data.limit=10")
    assert limited["data/train_rows"] == 10


def test_loader_workers_give_the_same_first_step_as_the_main_process(tmp_path):
    losses = [run_in_process(tmp_path / str(n), *STEP, f"data.num_workers={n}")["train/loss"] for n in (0, 2)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


def test_resume_from_a_checkpoint_path_continues_from_its_step(tmp_path):
    saving = (*QUICK, "data.num_rows=32", "data.batch_size=4", "trainer.save_checkpoint=true", "trainer.checkpoint_every_n_steps=1", "export=false")
    run_in_process(tmp_path / "first", *saving, "trainer.max_steps=2")
    [ckpt] = [p for p in (tmp_path / "first" / "checkpoints").glob("step*.ckpt") if torch.load(p, weights_only=True)["global_step"] == 1]
    summary = run_in_process(tmp_path / "second", *saving, "trainer.max_steps=3", f"resume={ckpt}", "resume_allow_changes=[trainer.max_steps]")
    assert summary["global_step"] == 3
    with open(tmp_path / "second" / "metrics.csv") as fh:
        trained = [row["step"] for row in csv.DictReader(fh) if row.get("train/loss")]
    assert len(trained) == 2  # steps 2 and 3 trained here; step 1 came from the checkpoint
