"""Tokenised tables: the cache key (what hits, what misses), rows named deep in a large file, the
counts of dropped and truncated rows, worker processes, and encodes that build their own sequences."""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from rlhf_lab.config import DataConfig, ModelConfig
from rlhf_lab.data.module import DataModule
from rlhf_lab.data import table as table_module
from rlhf_lab.data.table import column
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import DataError
from rlhf_lab.models import load_tokenizer
from rlhf_lab.objectives.kto import KTO
from rlhf_lab.objectives.sft import SFT
from tests.conftest import write_jsonl

ROWS = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(40)]


@pytest.fixture
def build(tiny_tokenizer, tmp_path):
    """``build(path, **data) -> DataModule``: an SFT run's data, tables cached in one folder per test."""
    cache = tmp_path / "tables"

    def _build(path, *, encode=SFT.encode, fmt="sft", tokenizer=None, max_length=64, chat_template="auto", on_overflow="truncate", **data):
        cfg = DataConfig(path=str(path), **{"table_cache_dir": str(cache), **data})
        tokenizer = tokenizer or tiny_tokenizer
        if chat_template not in ("auto", "never"):  # the Encoder sets it on the tokenizer: not on the shared one
            tokenizer = copy.deepcopy(tokenizer)
        encoder = Encoder(tokenizer, max_length, chat_template, on_overflow)
        return DataModule(cfg, fmt, encode, encoder, {}, seed=0)

    _build.tables = lambda: sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    return _build


def test_same_data_and_options_hit_and_every_token_option_misses(build, tmp_path, arch_dir):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    first = build(path)
    assert first.stats["tables_cached"] == 0 and len(build.tables()) == 1
    # what does not change tokens: the split, batching, shuffling, the seed of the order
    again = build(path, val_fraction=0.2, batch_size=3, shuffle=False)
    assert again.stats["tables_cached"] == 1 and len(build.tables()) == 1
    copy = shutil.copy(path, tmp_path / "elsewhere.jsonl")  # the key is the content, not the path
    assert build(copy).stats["tables_cached"] == 1
    gpt2 = load_tokenizer(ModelConfig(source="hf", name_or_path=str(arch_dir("gpt2"))))
    misses = [
        dict(max_length=32),
        dict(on_overflow="error"),
        dict(chat_template="never"),
        dict(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}"),
        dict(tokenizer=gpt2),
        dict(limit=10),
        dict(task="qa"),
        dict(fields={"prompt": "completion", "completion": "prompt"}),
        dict(encode=lambda encoder, rows: SFT.encode(encoder, rows)),  # another objective's encode
    ]
    for n, options in enumerate(misses, start=2):
        assert build(path, **options).stats["tables_cached"] == 0, options
        assert len(build.tables()) == n, options
    both = write_jsonl(tmp_path / "both.jsonl", [{"prompt": "p", "completion": "c", "instruction": "i", "output": "o"}])
    build(both, val_fraction=0), build(both, val_fraction=0, converter="alpaca")
    assert len(build.tables()) == len(misses) + 3


def test_an_edited_file_misses_even_with_the_same_size_and_time(build, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    stat = path.stat()
    build(path)
    write_jsonl(path, [{**r, "completion": r["completion"].replace("Answer", "Reply!")} for r in ROWS])  # same length
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    data = build(path, val_fraction=0)
    assert data.stats["tables_cached"] == 0 and len(build.tables()) == 2
    assert "Reply!" in data.encoder.tokenizer.decode(data.train_features[0]["sequences"][0]["input_ids"])


def test_a_bad_row_deep_in_a_large_file_is_named_and_drops_are_counted(build, tmp_path):
    """12 batches of rows: row numbers run on across the batches the file is read and tokenised in."""
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(12_000)]
    rows[9_456] = {"prompt": "q", "completion": ""}
    rows[11_001] = {"prompt": "q"}
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    with pytest.raises(DataError, match=r"big.jsonl row 9457: field 'completion' is empty\. Fix the row, or set data.invalid_rows=drop"):
        build(path)
    assert build.tables() == []  # a build that stopped is not cached
    data = build(path, invalid_rows="drop", val_fraction=0)
    assert data.stats["dropped_invalid"] == 2 and len(data.train_features) == 11_998
    assert column(data.train_features.table, "row").to_numpy()[data.train_features.indices][-1] == 12_000
    with pytest.raises(DataError, match=r"big.jsonl row 9457: field 'completion' is empty"):
        build(path)  # the table cached by the drop run says the same under error
    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text().replace('{"prompt": "q11999"', '{"prompt" "q11999"'))
    with pytest.raises(DataError, match=r"broken.jsonl row 12000: not valid JSON"):
        build(broken)


def test_truncated_and_too_long_rows_are_counted_and_named(build, tmp_path):
    rows = [{"prompt": "hi", "completion": "word " * 40}, {"prompt": "hi", "completion": "ok"}, {"prompt": "word " * 40, "completion": "x"},
            {"prompt": "hi", "completion": "yes"}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    data = build(path, max_length=12, val_fraction=0)
    assert (data.stats["truncated"], data.stats["dropped_too_long"], len(data.train_features)) == (1, 1, 3)
    with pytest.raises(DataError, match=r"long.jsonl row 1: \d+ tokens exceed data.max_length=12"):
        build(path, max_length=12, on_overflow="error")


def test_worker_processes_write_the_same_table(build, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS * 60)  # 2,400 rows: three batches
    one, two = build(path, val_fraction=0), build(path, val_fraction=0, num_proc=2, table_cache_dir=str(tmp_path / "other"))
    assert two.stats["tables_cached"] == 0
    for name in ("input_ids", "labels", "row", "num_tokens"):
        assert column(one.train_features.table, name).equals(column(two.train_features.table, name)), name


def test_an_encode_that_builds_its_own_sequences_is_traced_row_by_row(build, tmp_path):
    """A plugin's encode may return plain dicts and extra keys; each feature still knows its row."""

    def encode(encoder, rows):
        return [{"sequences": [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], "row": {"asked": r["prompt"]}}
                for r in rows if r["prompt"] != "Question 2?"]

    data = build(write_jsonl(tmp_path / "train.jsonl", ROWS[:5]), encode=encode, val_fraction=0)
    features = data.train_features
    assert [f["row"]["asked"] for f in features.take(range(len(features)))] == ["Question 0?", "Question 1?", "Question 3?", "Question 4?"]
    assert column(features.table, "row").to_numpy()[features.indices].tolist() == [1, 2, 4, 5]
    assert data.stats["dropped_too_long"] == 1  # a row without features counts as dropped
    assert np.array_equal(features.lengths(), [3, 3, 3, 3])


def test_the_table_holds_no_python_rows(build, tmp_path):
    """Features are read from the memory-mapped file per batch; the module keeps only index arrays."""
    data = build(write_jsonl(tmp_path / "train.jsonl", ROWS))
    assert data.train_features.table.files and isinstance(data.train_features.indices, np.ndarray)
    meta = json.loads((tmp_path / "tables" / build.tables()[0] / "meta.json").read_text())
    assert meta["table_rows"] == 40 and meta["key"]["max_length"] == 64


def test_a_second_process_waits_for_the_first_and_reads_its_table(build, tmp_path):
    """DDP ranks and sweep jobs: while one builds a table under its lock, another with the same key
    waits, then reads that table instead of tokenising again (threads stand in for processes:
    each holds its own lock file descriptor)."""
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    encoding, calls, built = threading.Event(), [], {}

    def slow_encode(encoder, rows):
        calls.append(len(rows))
        encoding.set()
        time.sleep(0.5)  # the first build is still running when the second starts
        return SFT.encode(encoder, rows)

    first = threading.Thread(target=lambda: built.setdefault("first", build(path, encode=slow_encode)))
    first.start()
    encoding.wait()
    second = build(path, encode=slow_encode)
    first.join()
    assert calls == [40]  # tokenised once
    assert (built["first"].stats["tables_cached"], second.stats["tables_cached"]) == (0, 1) and len(build.tables()) == 1


def test_a_batch_of_invalid_rows_only_is_not_tokenised(build, tmp_path, monkeypatch):
    """With data.invalid_rows=drop, a batch whose rows are all invalid gives no features and never
    reaches ``encode`` (KTO's raised 'needs at least 2 rows; got 0')."""
    monkeypatch.setattr(table_module, "BATCH_ROWS", 2)
    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "label": i % 2 == 0} for i in range(6)]
    rows[2] = rows[3] = {"prompt": "no completion", "label": True}
    data = build(write_jsonl(tmp_path / "kto.jsonl", rows), encode=KTO.encode, fmt="unpaired", invalid_rows="drop", val_fraction=0)
    assert data.stats["dropped_invalid"] == 2 and data.stats["train_rows"] == 4


def test_val_rows_holds_out_that_many_rows_instead_of_val_fraction(build, tmp_path):
    data = build(write_jsonl(tmp_path / "train.jsonl", ROWS), val_fraction=0.5, val_rows=7)
    assert (data.stats["train_rows"], data.stats["val_rows"]) == (33, 7)
    assert build(write_jsonl(tmp_path / "train.jsonl", ROWS), val_rows=0).stats["val_rows"] == 0


@pytest.mark.slow
def test_a_table_read_from_the_cache_needs_no_datasets_import(tmp_path):
    """datasets (19 MB and 0.15-0.2 s in every process, beside pandas, which pyarrow imports anyway)
    reads a file while it is tokenised; reading its cached table back, and its features, does not
    need it (fresh interpreters: a pytest worker has imported it already)."""
    import subprocess
    import sys

    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    script = """
import sys
from rlhf_lab.config import DataConfig, ModelConfig
from rlhf_lab.data.module import DataModule
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.models import load_tokenizer
from rlhf_lab.objectives.sft import SFT
encoder = Encoder(load_tokenizer(ModelConfig()), 64, "auto", "truncate")
data = DataModule(DataConfig(path=sys.argv[1], table_cache_dir=sys.argv[2]), "sft", SFT.encode, encoder, {}, seed=0)
features = data.train_features.take([0, 1])
print(data.stats["tables_cached"], "datasets" in sys.modules, len(features[1]["sequences"][0]["input_ids"]) > 3)
"""
    def run() -> list[str]:
        return subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "tables")], capture_output=True, text=True,
                              check=True).stdout.split()

    assert run() == ["0", "True", "True"]  # tokenised: the file read through datasets' streaming reader
    assert run() == ["1", "False", "True"]  # from the cache
