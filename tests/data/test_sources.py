"""Loading, field mapping, converters, mixtures and row validation on local files: canonical rows
through ``load_source``, and what training sees through the DataModule (tables)."""

import json

import datasets
import pyarrow as pa
import pytest

from rlhf_lab.config import DataConfig, SourceConfig
from rlhf_lab.data.builtin import load_synthetic
from rlhf_lab.data.module import DataModule
from rlhf_lab.data.sources import load_source
from rlhf_lab.data.table import column
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import DataError
from rlhf_lab.objectives.dpo import DPO
from rlhf_lab.objectives.sft import SFT
from tests.conftest import write_jsonl

LOADERS = {"synthetic": load_synthetic}
SFT_ROWS = [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(6)]


def rows_of(cfg, fmt="sft"):
    return load_source("data", cfg, fmt, LOADERS)[0]


@pytest.fixture
def module(tiny_tokenizer):
    """``module(cfg, fmt="sft")``: the DataModule an SFT or DPO run builds."""
    return lambda cfg, fmt="sft": DataModule(cfg, fmt, {"sft": SFT, "preference": DPO}[fmt].encode, Encoder(tiny_tokenizer, 64), LOADERS, seed=0)


def tasks_of(features) -> list[str]:
    return column(features.table, "task").take(pa.array(features.indices)).to_pylist()


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_every_file_type_reads_through_datasets(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    ds = datasets.Dataset.from_list(SFT_ROWS)
    {".jsonl": lambda: ds.to_json(path, lines=True), ".json": lambda: path.write_text(json.dumps(SFT_ROWS)),
     ".parquet": lambda: ds.to_parquet(path), ".csv": lambda: ds.to_csv(path, index=False)}[suffix]()
    rows = rows_of(DataConfig(loader="file", path=str(path)))
    assert [(r["prompt"], r["completion"]) for r in rows] == [(r["prompt"], r["completion"]) for r in SFT_ROWS]
    assert {r["task"] for r in rows} == {"data"}


def test_chat_messages_rows_are_sft_rows(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}])
    assert rows_of(DataConfig(path=str(path)))[0]["messages"] == chat


def test_field_mapping(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "2+2?", "answer": "4", "task": "math"}])
    row = rows_of(DataConfig(path=str(path), fields={"prompt": "question", "completion": "answer"}))[0]
    assert (row["prompt"], row["completion"], row["task"]) == ("2+2?", "4", "math")


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"prompt": "a", "completion": "b"}, {"prompt": "c"}], "row 2: missing field(s)"),
        ([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "  "}], "row 2: field 'completion' is empty"),
        ([{"prompt": "a", "completion": "b"}] * 2 + [{"prompt": "c", "completion": 3}], "row 3: field 'completion' must be text, got int"),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path, rows, message, module):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        module(DataConfig(path=str(path)))
    assert str(path) in str(err.value) and message in str(err.value)


def test_consistently_wrong_type_is_named(tmp_path, module):
    path = write_jsonl(tmp_path / "ints.jsonl", [{"prompt": "a", "completion": 1}, {"prompt": "b", "completion": 2}])
    with pytest.raises(DataError, match=r"ints.jsonl row 1: field 'completion' must be text, got int"):
        module(DataConfig(path=str(path)))


def test_invalid_json_line_is_named(tmp_path, module):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion"\n')
    with pytest.raises(DataError, match=r"broken.jsonl row 2: not valid JSON"):
        module(DataConfig(path=str(path)))


def test_drop_policy_counts_invalid_rows(tmp_path, module):
    path = write_jsonl(tmp_path / "mixed.jsonl", SFT_ROWS + [{"prompt": "x", "completion": ""}])
    data = module(DataConfig(path=str(path), invalid_rows="drop", val_fraction=0))
    assert len(data.train_features) == 6 and data.stats["dropped_invalid"] == 1


def test_preference_row_with_identical_answers_is_rejected(tmp_path, module):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "a"}])
    with pytest.raises(DataError, match="row 2: chosen and rejected are identical"):
        module(DataConfig(path=str(path)), "preference")


def test_missing_file_is_named(tmp_path, module):
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        module(DataConfig(path=str(tmp_path / "nope.jsonl")))


@pytest.mark.parametrize("suffix,kind", [(".jsonl", "row"), (".csv", "line")])
def test_text_that_is_not_utf8_is_named_by_file_and_row(tmp_path, suffix, kind):
    path = tmp_path / f"latin1{suffix}"
    lines = {".jsonl": ['{"prompt": "a", "completion": "b"}', '{"prompt": "caf\xe9", "completion": "c"}'],
             ".csv": ["prompt,completion", "a,b", "caf\xe9,c"]}[suffix]  # fmt: skip
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=rf"latin1{suffix} {kind} {3 if suffix == '.csv' else 2}: not valid UTF-8 \(byte 0xe9 at column \d+\)"):
        rows_of(DataConfig(path=str(path)))


@pytest.mark.parametrize("content,message", [("", "the file is empty"), ("\n  \n\n", "no rows \\(the file has only blank lines\\)")])
def test_an_empty_file_is_named(tmp_path, content, message):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"empty.jsonl: {message}"):
        rows_of(DataConfig(path=str(path)))


# --- public layouts, on local files of the same shape -----------------------------------------------


def test_alpaca_layout(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ])
    rows = rows_of(DataConfig(path=str(path), converter="alpaca"))
    assert [(r["prompt"], r["completion"]) for r in rows] == [("Add.\n\n2 and 3", "5"), ("Say hi.", "hi")]




def test_ultrafeedback_layout(tmp_path):
    msgs = lambda a: [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": a}]  # noqa: E731
    path = write_jsonl(tmp_path / "uf.jsonl", [{"prompt": "Q?", "chosen": msgs("good"), "rejected": msgs("bad"), "score_chosen": 9.0}])
    row = rows_of(DataConfig(path=str(path), converter="ultrafeedback"), "preference")[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("Q?", "good", "bad")


def test_hub_loader_reads_a_dataset_directory(tmp_path):
    """`data=hub` calls datasets.load_dataset(name, subset, split): a local dataset repo works the same way."""
    repo = tmp_path / "my_dataset"
    (repo / "data").mkdir(parents=True)
    write_jsonl(repo / "data" / "train.jsonl", SFT_ROWS)
    rows = rows_of(DataConfig(loader="hub", hub=str(repo), split="train"))
    assert len(rows) == 6


def test_layout_mismatch_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "notalpaca.jsonl", [{"question": "x"}])
    with pytest.raises(DataError, match="notalpaca.jsonl row 1: not in alpaca layout"):
        rows_of(DataConfig(path=str(path), converter="alpaca"))


# --- mixtures and held-out tasks ----------------------------------------------------------------------


def test_mixture_weights_and_task_names(module):
    cfg = DataConfig(
        sources={
            "add": SourceConfig(loader="synthetic", task="add", num_rows=300, weight=3.0),
            "upper": SourceConfig(loader="synthetic", task="upper", num_rows=300, weight=1.0),
        },
        mixture_size=400,
        val_fraction=0,
    )
    data = module(cfg)
    tasks = tasks_of(data.train_features)
    assert {t: tasks.count(t) for t in ("add", "upper")} == {"add": 300, "upper": 100}
    assert list(module(cfg).train_features.indices) == list(data.train_features.indices)  # deterministic given the seed


def test_holdout_tasks_go_wholly_to_validation(module):
    data = module(DataConfig(loader="synthetic", num_rows=100, holdout_tasks=["sort"]))
    assert set(tasks_of(data.val_features)) == {"sort"} and "sort" not in tasks_of(data.train_features)
    assert len(data.train_features) + len(data.val_features) == 100
    with pytest.raises(DataError, match="not in the data"):
        module(DataConfig(loader="synthetic", num_rows=100, holdout_tasks=["poetry"]))
