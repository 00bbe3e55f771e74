"""data.max_length against the model's context: cut to the model's positions with one log line,
and a clear error when every row's prompt alone is too long."""

from __future__ import annotations

import logging

import pytest

from rlhf_lab.errors import DataError
from tests.conftest import write_jsonl
from tests.inprocess import QUICK, run_in_process

LONG = "word " * 300  # ~300 tokens: past GPT-2's 128 positions in tests/archs.py


def test_max_length_past_the_model_positions_is_cut_to_them(tmp_path, arch_dir, caplog):
    """GPT-2's positions are a learned table: a longer sequence used to end in IndexError."""
    data = write_jsonl(tmp_path / "long.jsonl", [{"prompt": f"Q{i}", "completion": LONG} for i in range(8)])
    with caplog.at_level(logging.INFO, logger="rlhf_lab.models"):
        summary = run_in_process(tmp_path / "run", *QUICK, "model=hf", f"model.name_or_path={arch_dir('gpt2')}", "data=jsonl",
                                 f"data.path={data}", "data.max_length=512", "data.batch_size=4", "trainer.max_steps=1", "export=false")
    assert summary["global_step"] == 1 and summary["data/truncated"] == 8
    assert [r.message for r in caplog.records if "positions" in r.message] == [
        f"data.max_length=512 is longer than the 128 positions of model {arch_dir('gpt2')}: sequences are cut at 128 tokens."
    ]


def test_rows_whose_prompts_alone_fill_the_context_say_so(tmp_path, arch_dir):
    data = write_jsonl(tmp_path / "long_prompts.jsonl", [{"prompt": LONG, "completion": "ok"} for _ in range(8)])
    dropped = r"all 8 training rows dropped: their prompts alone fill data.max_length=128 tokens \(first rows: \[.*long_prompts.jsonl row 1"
    with pytest.raises(DataError, match=dropped):
        run_in_process(tmp_path / "run", *QUICK, "model=hf", f"model.name_or_path={arch_dir('gpt2')}", "data=jsonl",
                       f"data.path={data}", "trainer.max_steps=1")
