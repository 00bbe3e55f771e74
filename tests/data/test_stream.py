"""Streaming: the exact resume of the stream's position (mid-chunk, mid-epoch, across epochs, in a
shuffled mixture), the ranks' shares of each global batch, and a real run resumed from its checkpoint."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab.config import DataConfig, SourceConfig
from rlhf_lab.data import stream as stream_module
from rlhf_lab.data.module import DataModule
from rlhf_lab.data.sources import open_source
from rlhf_lab.data.stream import FeatureStream, StreamLoader
from rlhf_lab.data.table import Pipeline, column
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, DataError
from rlhf_lab.objectives.kto import KTO
from rlhf_lab.objectives.sft import SFT
from tests.conftest import write_jsonl
from tests.inprocess import QUICK, run_in_process

LISTED = [{"prompt": f"listed {i}", "completion": "x " * (i % 5 + 1)} for i in range(23)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(stream_module, "CHUNK_ROWS", 7)  # many chunk boundaries in a few rows


@pytest.fixture
def make(tiny_tokenizer, tmp_path):
    """``make(batch_size, rank=0, world_size=1) -> StreamLoader`` over a shuffled mixture: a JSONL
    file (31 rows, read by datasets' streaming reader, 2 of them invalid) and a loader's list
    (23 rows), weights 2:1."""
    file_rows = [{"prompt": f"file {i}", "completion": "y " * (i % 3 + 1)} for i in range(31)]
    file_rows[4] = file_rows[17] = {"prompt": "no answer"}
    path = write_jsonl(tmp_path / "stream.jsonl", file_rows)
    encoder = Encoder(tiny_tokenizer, 64)
    configs = {"file": SourceConfig(path=str(path), weight=2.0), "listed": SourceConfig(loader="listed", weight=1.0)}
    sources = [open_source(name, src, "sft", {"listed": lambda src, fmt: LISTED}) for name, src in configs.items()]
    pipelines = [Pipeline(name, src, s.where, "sft", encoder, SFT.encode) for (name, src), s in zip(configs.items(), sources)]

    def _make(batch_size: int, rank: int = 0, world_size: int = 1) -> StreamLoader:
        collate = lambda features: {"texts": [tiny_tokenizer.decode(f["sequences"][0]["input_ids"]) for f in features]}  # noqa: E731
        stream = FeatureStream(sources, pipelines, [2.0, 1.0], None, batch_size, collate, seed=3, shuffle=True, buffer=5)
        stream.rank, stream.world_size = rank, world_size
        return StreamLoader(stream, num_workers=0)

    return _make


def take(loader: StreamLoader, n: int) -> list[list[str]]:
    """``n`` batches (across epochs), each handed over as the DataModule hands it to training."""
    batches = []
    while len(batches) < n:
        for batch in loader:
            loader.taken = batch.pop("stream")["position"]
            batches.append(batch["texts"])
            if len(batches) == n:
                break
    return batches


def test_a_resumed_stream_continues_exactly_where_training_stopped(make):
    whole = take(make(4), 40)  # 52 rows drawn an epoch until the file runs out: more than two epochs
    assert len({text for batch in whole[:8] for text in batch}) > 20  # a real mix, not one source
    for stop in (1, 5, 9, 13, 22):
        first = make(4)
        done = take(first, stop)
        resumed = make(4)
        resumed.load_state_dict(first.state_dict())
        assert done + take(resumed, 40 - stop) == whole, stop
    assert whole[: len(whole) // 2] != whole[len(whole) // 2 :]  # epochs are shuffled differently


def test_ranks_take_every_other_feature_of_each_global_batch(make):
    one = take(make(4), 20)
    ranks = [take(make(2, rank, 2), 20) for rank in (0, 1)]
    for k in range(20):
        assert set(ranks[0][k] + ranks[1][k]) == set(one[k])  # an epoch's odd last batch: a rank repeats a row, as RankSampler pads
        assert len(ranks[0][k]) == len(ranks[1][k]) == -(-len(one[k]) // 2)


def test_an_invalid_row_stops_the_stream_naming_it(make, tiny_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}] * 9 + [{"prompt": "c", "completion": ""}])
    src = SourceConfig(path=str(path))
    source = open_source("data", src, "sft", {})
    pipeline = Pipeline("data", src, source.where, "sft", Encoder(tiny_tokenizer, 64), SFT.encode, stop_at_invalid=True)
    stream = FeatureStream([source], [pipeline], [1.0], None, 2, lambda f: {}, seed=0, shuffle=False, buffer=1)
    with pytest.raises(DataError, match=r"bad.jsonl row 10: field 'completion' is empty"):
        list(StreamLoader(stream, 0))


def test_a_streaming_run_resumed_from_its_checkpoint_matches_the_uninterrupted_run(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Say {i}.", "completion": f"{i} " * (i % 4 + 1)} for i in range(24)])
    run = (*QUICK, "data=jsonl", f"data.path={path}", "data.streaming=true", "data.batch_size=4", "trainer.max_steps=8",
           "data.shuffle_buffer=16", "export=false", "trainer.save_checkpoint=true", "trainer.checkpoint_every_n_steps=4")
    whole = run_in_process(tmp_path / "whole", *run)
    part = run_in_process(tmp_path / "part", *run, "trainer.max_steps=4")
    [ckpt] = [p for p in (tmp_path / "part" / "checkpoints").glob("*.ckpt") if "4" in p.name]
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["position"]
    assert part["global_step"] == 4 and state["epoch"] == 0
    assert state["rows"][0] + state["used"] == 16  # 4 batches of 4: the chunk that holds the 17th row, and how far into it
    resumed = run_in_process(tmp_path / "resumed", *run, f"resume={ckpt}", "resume_allow_changes=[trainer.max_steps]")
    assert resumed["global_step"] == whole["global_step"] == 8  # the second epoch started at step 7
    assert resumed["train/loss"] == pytest.approx(whole["train/loss"], rel=1e-6)
    assert resumed["data/rows_read"] == whole["data/rows_read"]


def kto_stream(tiny_tokenizer, tmp_path, sizes: dict[str, int], weights: list[float], batch_size: int = 3) -> StreamLoader:
    """A KTO stream over JSONL sources of ``sizes[name]`` unpaired rows (labels alternate), unshuffled."""
    encoder = Encoder(tiny_tokenizer, 64, "never")
    sources, pipelines = [], []
    for name, n in sizes.items():
        rows = [{"prompt": f"{name} {i}?", "completion": "z " * (i % 3 + 1), "label": i % 2 == 0} for i in range(n)]
        src = SourceConfig(path=str(write_jsonl(tmp_path / f"{name}.jsonl", rows)))
        sources.append(open_source(name, src, "unpaired", {}))
        pipelines.append(Pipeline(name, src, sources[-1].where, "unpaired", encoder, KTO.encode))
    collate = lambda features: {"texts": [tiny_tokenizer.decode(f["sequences"][0]["input_ids"]) for f in features]}  # noqa: E731
    return StreamLoader(FeatureStream(sources, pipelines, weights, None, batch_size, collate, seed=1, shuffle=False, buffer=1), 0)


def test_a_kto_stream_pairs_a_source_s_lone_row_in_a_chunk_with_the_other_sources_rows(tiny_tokenizer, tmp_path):
    """KTO pairs each row with another row's completion: a source that gives a chunk (7 rows here)
    a single row must not be tokenised alone (it was: 'objective=kto needs at least 2 rows')."""
    loader = kto_stream(tiny_tokenizer, tmp_path, {"many": 40, "few": 6}, [6.0, 1.0])
    whole = take(loader, 12)
    texts = [text for batch in whole for text in batch]
    assert any(text.startswith("few") for text in texts)
    for stop in (2, 5):  # exact resume holds
        first = kto_stream(tiny_tokenizer, tmp_path, {"many": 40, "few": 6}, [6.0, 1.0])
        done = take(first, stop)
        resumed = kto_stream(tiny_tokenizer, tmp_path, {"many": 40, "few": 6}, [6.0, 1.0])
        resumed.load_state_dict(first.state_dict())
        assert done + take(resumed, 12 - stop) == whole, stop


def test_a_kto_stream_whose_last_chunk_would_hold_one_row_joins_it_to_the_chunk_before(tiny_tokenizer, tmp_path):
    """15 rows in chunks of 7: the third chunk would be one row, which KTO cannot pair."""
    loader = kto_stream(tiny_tokenizer, tmp_path, {"data": 15}, [1.0], batch_size=5)
    epoch = take(loader, 3)
    assert sorted(text.split("?")[0] for batch in epoch for text in batch) == sorted(f"data {i}" for i in range(15))
    assert take(loader, 4)[3] == epoch[0]  # the next epoch starts again from the first row


def streaming_data(tiny_tokenizer, tmp_path, **data) -> DataModule:
    """A streaming SFT DataModule whose training batches are the file rows of their features."""
    cfg = DataConfig(**{"streaming": True, "batch_size": 4, "shuffle_buffer": 8, "table_cache_dir": str(tmp_path / "tables"), **data})
    module = DataModule(cfg, "sft", SFT.encode, Encoder(tiny_tokenizer, 64, "never"), {}, seed=0)
    module.stream.collate = lambda features: {"texts": [f["sequences"][0].row["_row"] for f in features]}
    return module


def val_rows(module: DataModule) -> list[tuple[str, int]]:
    table, ix = module.val_features.table, module.val_features.indices
    return list(zip(column(table, "task").take(ix).to_pylist(), column(table, "row").take(ix).to_pylist()))


def test_a_stream_validates_on_the_head_of_each_source_and_never_trains_on_it(tiny_tokenizer, tmp_path):
    """data.val_rows=6 over sources weighted 2:1: the first 4 rows of one and 2 of the other (file
    order, though training shuffles); an epoch of training reads every other row, none of those."""
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a {i}", "completion": "x"} for i in range(40)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b {i}", "completion": "y"} for i in range(40)])
    sources = {"a": SourceConfig(path=str(a), weight=2.0), "b": SourceConfig(path=str(b), weight=1.0)}
    module = streaming_data(tiny_tokenizer, tmp_path, sources=sources, val_rows=6, mixture_size=30)
    assert val_rows(module) == [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2)] and module.stats["val_rows"] == 6
    whole = take(module.train_dataloader(), 16)  # 30 rows an epoch in batches of 4: two epochs
    assert not {1, 2} & {row for batch in whole for row in batch} - {3, 4}  # rows 1-2 of both, 3-4 of a: never trained on
    first = streaming_data(tiny_tokenizer, tmp_path, sources=sources, val_rows=6, mixture_size=30)
    loader = first.train_dataloader()
    done = take(loader, 5)
    resumed = streaming_data(tiny_tokenizer, tmp_path, sources=sources, val_rows=6, mixture_size=30).train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    assert done + take(resumed, 11) == whole  # exact resume with the head skipped


def test_a_stream_of_unknown_length_takes_no_validation_unless_val_rows_sizes_it(tiny_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"p {i}", "completion": "x"} for i in range(10)])
    assert streaming_data(tiny_tokenizer, tmp_path, path=str(path), val_fraction=0.2).stats["val_rows"] == 0
    assert streaming_data(tiny_tokenizer, tmp_path, path=str(path), val_fraction=0.2, mixture_size=10).stats["val_rows"] == 2
    with pytest.raises(DataError, match=r"no training rows: each of the 0 row\(s\).*first 10 taken for validation \(data.val_rows\)"):
        take(streaming_data(tiny_tokenizer, tmp_path, path=str(path), val_rows=10).train_dataloader(), 1)


def test_a_stream_leaves_held_out_tasks_out_of_training_and_validates_on_them(tiny_tokenizer, tmp_path):
    rows = [{"prompt": f"p {i}", "completion": "x", "task": "held" if i % 3 == 0 else "kept"} for i in range(30)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    module = streaming_data(tiny_tokenizer, tmp_path, path=str(path), holdout_tasks=["held"], val_rows=8)
    assert val_rows(module) == [("held", 1), ("held", 4), ("held", 7)]
    epoch = list(module.train_dataloader())  # one epoch
    assert sorted(row for batch in epoch for row in batch["texts"]) == [i + 1 for i in range(30) if i % 3]  # the head's kept rows too
    assert epoch[-1]["stream"]["counts"]["held_out"] == 10 and epoch[-1]["stream"]["counts"]["rows_read"] == 30
    with pytest.raises(DataError, match=r"holdout_tasks names task\(s\) not in the stream's first 8 rows.*\['nope'\]"):
        streaming_data(tiny_tokenizer, tmp_path, path=str(path), holdout_tasks=["nope"], val_rows=8)
    with pytest.raises(ConfigError, match=r"data.holdout_tasks with data.streaming=true .* set data.val_rows=N"):
        streaming_data(tiny_tokenizer, tmp_path, path=str(path), holdout_tasks=["held"])


def test_a_streaming_dpo_run_scores_its_reference_live_and_validates_on_the_head(tmp_path, caplog):
    """objective.reference=precompute (the default) needs a pass over the data: a stream switches to
    live with one log line instead of failing, and validates on its first data.val_rows rows."""
    with caplog.at_level("INFO", logger="rlhf_lab.app"):
        summary = run_in_process(tmp_path / "run", *QUICK, "objective=dpo", "data.streaming=true", "data.num_rows=24", "data.val_rows=4",
                                 "data.batch_size=4", "trainer.max_steps=2", "export=false")
    assert [r.message for r in caplog.records if "objective.reference=live" in r.message] != []
    assert summary["global_step"] == 2 and summary["data/val_rows"] == 4 and "val/loss" in summary


@pytest.mark.parametrize("option,message", [
    ({"group_by_length": True}, r"data.group_by_length sorts a table's rows .* set data.group_by_length=false"),
    ({"num_workers": 2}, r"data.num_workers must be 0 or 1, got 2"),
])  # fmt: skip
def test_what_a_stream_cannot_do_is_a_config_error_naming_the_key(tiny_tokenizer, tmp_path, option, message):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "completion": "x"}] * 4)
    with pytest.raises(ConfigError, match=message):
        streaming_data(tiny_tokenizer, tmp_path, path=str(path), **option)
