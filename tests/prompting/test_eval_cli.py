"""Evaluation and instruction generation through the real CLI: standalone, inside training, as a sweep."""

import csv
import glob
import json
import subprocess
import sys

import pytest

from rlhf_lab.tracking import read_wandb_run
from tests.conftest import REPO, write_jsonl
from tests.prompting.test_evaluator import GSM8K_ROWS

pytestmark = pytest.mark.slow
SMALL_EVAL = ("eval.num_rows=20", "eval.max_new_tokens=6")


def test_standalone_eval_of_a_local_model_on_a_local_gsm8k_file(cli, tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    res = cli("mode=eval", "model=hf", f"model.name_or_path={tiny_model_dir}", "eval=gsm8k_style", f"eval.path={path}",
              "eval.max_new_tokens=8", "prompting=few_shot", "prompting.k=2", "logger=csv")  # fmt: skip
    assert res.returncode == 0, res.output
    s = res.summary
    assert s["eval/gsm8k_style/few_shot/scored"] == 5 and s["eval/gsm8k_style/few_shot/skipped"] == 0
    assert s["mode"] == "eval"
    [logged] = csv.DictReader((res.run_dir / "metrics.csv").open())
    # accuracy is the flexible extraction's hits out of the 5 questions (eval.accuracy_from's default)
    accuracy = s["eval/gsm8k_style/few_shot/accuracy"]
    assert accuracy == float(logged["eval/gsm8k_style/few_shot/exact_match_flexible"]) and (accuracy * 5).is_integer()
    assert float(logged["eval/gsm8k_style/few_shot/exact_match_strict"]) <= accuracy  # strict hits are flexible hits too


def test_eval_inside_training_goes_to_summary_and_a_wandb_table(cli):
    res = cli("trainer.max_steps=4", "data.num_rows=64", "eval=synthetic", "eval.every_n_steps=2", *SMALL_EVAL, "logger=wandb")
    assert res.returncode == 0, res.output
    s = res.summary
    assert {"eval/synthetic/zero_shot/accuracy", "eval_initial/synthetic/zero_shot/accuracy"} <= set(s)
    [path] = glob.glob(str(res.run_dir / "wandb" / "*-run-*" / "run-*.wandb"))
    history = read_wandb_run(path)["history"]
    steps = [row["trainer/global_step"] for row in history if "eval/synthetic/zero_shot/accuracy" in row]
    assert steps == [0, 2, 4]
    tables = [row for row in history if row.get("eval/synthetic/zero_shot/samples/_type") == "table-file"]
    assert [t["eval/synthetic/zero_shot/samples/nrows"] for t in tables] == [20, 20, 20]
    table = json.loads(open(sorted(glob.glob(str(res.run_dir / "wandb" / "*-run-*" / "files" / "**" / "*.table.json"), recursive=True))[0]).read())
    assert table["columns"] == ["prompt", "output", "strict", "flexible", "gold", "correct"]


STRATEGIES = ("zero_shot", "few_shot", "cot", "least_to_most", "self_refine", "best_of_n")


def test_sweep_over_strategies_gives_one_row_each(tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "rlhf_lab", "-m", "mode=eval", "eval=synthetic", f"prompting={','.join(STRATEGIES)}",
            "reward=python", "reward.fn=tests.rewards.functions:length", *SMALL_EVAL, "logger=none", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = {}
    for job in sorted(sweep.glob("[0-9]*")):
        summary = json.loads((job / "summary.json").read_text())
        [(key, value)] = [(k, v) for k, v in summary.items() if k.endswith("/model_calls")]
        calls[key.split("/")[2]] = value
    # one batched call per stage: best_of_n samples then scores with the reward; self_refine answers,
    # critiques and revises; least_to_most lists sub-questions, then answers at least the question
    assert calls["zero_shot"] == calls["few_shot"] == calls["cot"] == 1
    assert (calls["best_of_n"], calls["self_refine"]) == (2, 3) and calls["least_to_most"] >= 2


def test_self_instruct_writes_data_that_sft_reads(cli):
    trained = cli("trainer.max_steps=60", "data.num_rows=400", "logger=none", "trainer.save_checkpoint=false")
    assert trained.returncode == 0, trained.output
    model_dir = trained.run_dir / "model"
    made = cli("mode=self_instruct", "model=hf", f"model.name_or_path={model_dir}", "self_instruct.num_instructions=4",
               "self_instruct.batch_size=8", "self_instruct.max_new_tokens=12", "self_instruct.min_words=1", "logger=none")  # fmt: skip
    assert made.returncode == 0, made.output
    s = made.summary
    assert s["self_instruct/kept"] >= 1
    rows = [json.loads(line) for line in open(s["instructions_path"])]
    assert len(rows) == s["self_instruct/kept"]  # every kept pair is written, nothing else
    assert all(set(r) == {"prompt", "completion", "task"} and r["task"] == "self_instruct" for r in rows)
    assert all(r["prompt"].strip() and r["completion"].strip() for r in rows)  # empty outputs were dropped
    sft = cli("data=jsonl", f"data.path={s['instructions_path']}", "trainer.max_steps=1", "logger=none", "export=false")
    assert sft.returncode == 0, sft.output
    assert sft.summary["data/train_rows"] + sft.summary["data/val_rows"] == s["self_instruct/kept"]
