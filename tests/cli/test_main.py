"""Whole-process runs of ``python -m rlhf_lab``: outputs, W&B read back, bad input, no overwrite."""

import glob
import json
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from rlhf_lab.__main__ import unselected_group_option, with_default_run
from rlhf_lab.tracking import read_wandb_run
from tests.conftest import REPO, write_jsonl
from tests.inprocess import compose_cli

QUICK = ("trainer.max_steps=12", "data.num_rows=200", "trainer.log_every_n_steps=2")
# Lines of the libraries' that a run's console must not show (W&B, Lightning, transformers).
NOISE = ("The anonymous setting has no effect", "litlogger", "Loading weights", "Writing model shards")


def assert_quiet(output: str) -> None:
    shown = [line for line in NOISE if line in output]
    assert not shown, f"library noise on the console: {shown}\n{output}"


def wandb_runs(run_dir):
    return [read_wandb_run(p) for p in sorted(glob.glob(str(run_dir / "wandb" / "*-run-*" / "run-*.wandb")))]


def test_default_job_trains_exports_and_logs_to_offline_wandb(cli, tmp_path):
    # WANDB_SILENT unset: W&B prints its warnings, as in a user's shell
    no_credentials = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path), "NETRC": None, "WANDB_SILENT": None}
    res = cli(*QUICK, env=no_credentials)
    assert res.returncode == 0, res.output
    s = res.summary
    for key in ("train/loss", "train/token_accuracy", "val/loss", "val/token_accuracy", "train_samples_per_s",
                "train_tokens_per_s", "wall_s", "peak_rss_mb"):
        assert key in s, key
    assert s["global_step"] == 12 and s["objective"] == "sft"
    assert (res.run_dir / ".hydra" / "config.yaml").exists()
    assert (res.run_dir / "checkpoints" / "last.ckpt").exists()
    model = AutoModelForCausalLM.from_pretrained(res.run_dir / "model")
    assert (res.run_dir / "model" / "model.safetensors").exists() and model.config.vocab_size == 512

    [run] = wandb_runs(res.run_dir)
    assert run["run"]["job_type"] == "sft" and run["run"]["group"] == "default"
    assert run["config"]["objective"]["name"] == "sft" and run["config"]["trainer"]["max_steps"] == 12
    losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    assert len(losses) == 6 and losses[-1] == pytest.approx(s["train/loss"])
    assert run["summary"]["val/loss"] == pytest.approx(s["val/loss"])
    assert "W&B: no credentials found, logging offline" in res.output
    assert "step 12/12  train/loss" in res.stdout  # our progress stays
    assert_quiet(res.output)  # wandb, exported: W&B's, Lightning's and transformers' lines would show


def test_csv_logger_writes_metrics_csv(cli):
    res = cli(*QUICK, "logger=csv", "trainer.save_checkpoint=false", "export=false")
    assert res.returncode == 0, res.output
    header = (res.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "step"} <= set(header)
    assert not (res.run_dir / "checkpoints").exists() and not (res.run_dir / "model").exists()
    assert not glob.glob(str(res.run_dir / "wandb"))


def test_training_from_a_local_hf_directory_with_lora(cli, tiny_model_dir):
    res = cli(*QUICK, "logger=none", "model=hf", f"model.name_or_path={tiny_model_dir}", "model.lora.r=4", "optim.lr=1e-3")
    assert res.returncode == 0, res.output
    assert_quiet(res.output)  # weights loaded from a directory: transformers' bar would show
    exported = AutoModelForCausalLM.from_pretrained(res.run_dir / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for n, p in exported.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # merged adapters changed the linear layers only


def test_malformed_data_stops_before_training_naming_file_and_row(cli, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": ""}])
    res = cli("data=jsonl", f"data.path={bad}", "logger=csv")
    assert res.returncode == 1
    assert f"{bad} row 2: field 'completion' is empty" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (res.run_dir / "summary.json").exists() and not (res.run_dir / "metrics.csv").exists()


@pytest.mark.parametrize("overrides,line", [
    (("data=jsonl", "data.path={dir}/latin1.jsonl"), "{dir}/latin1.jsonl row 2: not valid UTF-8 (byte 0xe9 at column 16)"),
    (("trainer.max_steps=-5",), "trainer.max_steps=-5: must be a positive number of steps"),
    (("model=hf", "model.name_or_path={dir}/nope"), "model.name_or_path={dir}/nope: no such directory"),
])  # fmt: skip
def test_bad_input_is_one_line_naming_it_and_nothing_is_written(cli, tmp_path, overrides, line):
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "c"}\n'.encode("latin-1"))
    res = cli(*QUICK, "logger=csv", *(o.format(dir=tmp_path) for o in overrides))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(f"rlhf_lab: error: {line.format(dir=tmp_path)}")
    assert "rlhf_lab: error" not in "".join(res.stderr.strip().splitlines()[:-1]) and "Traceback" not in res.output
    assert sorted(p.name for p in res.run_dir.iterdir()) == [".hydra", ".rlhf_lab.lock", "rlhf_lab.log"]


def test_a_reward_functions_own_traceback_goes_to_the_job_log_and_to_the_console_when_asked(cli):
    res = cli("objective=grpo", "reward=python", "reward.fn=tests.rewards.functions:fails_later", "logger=csv",
              "data.num_rows=32", "data.batch_size=4", "objective.max_new_tokens=4", "trainer.max_steps=2",
              env={"FAIL_AT_CALL": "1", "HYDRA_FULL_ERROR": "1"})
    assert res.returncode == 1
    line = "rlhf_lab: error: reward 'python' (tests.rewards.functions:fails_later) raised ConnectionError: judge service unreachable"
    assert res.stderr.strip().splitlines()[-1] == line
    for trace in (res.stderr, (res.run_dir / "rlhf_lab.log").read_text()):
        assert 'tests/rewards/functions.py", line' in trace and "in fails_later" in trace
        assert "The above exception was the direct cause of the following exception" in trace


def test_an_output_directory_is_never_overwritten(cli, tmp_path):
    first = cli(*QUICK, "logger=csv", "export=false")
    assert first.returncode == 0, first.output
    before = (first.run_dir / "summary.json").read_text()
    again = cli(*QUICK, "logger=csv", f"hydra.run.dir={first.run_dir}")
    assert again.returncode != 0 and "already holds a run" in again.output
    assert (first.run_dir / "summary.json").read_text() == before
    assert not (first.run_dir / "model").exists()


def test_help_lists_the_groups_and_their_options(cli):
    help_text = cli("--help").stdout
    for group in ("data:", "model: hf, tiny", "objective:", "optim:", "trainer:", "logger: csv, none, tensorboard, wandb"):
        assert group in help_text, group


MODEL_CODE = ("torch", "lightning", "transformers", "datasets", "torchmetrics", "scipy", "matplotlib", "wandb")
# Runs the real entry point (`python -m rlhf_lab ARGS`) and prints, at exit, which of MODEL_CODE it imported.
IMPORT_PROBE = (
    "import atexit, runpy, sys\n"
    f"atexit.register(lambda: print('imported:', sorted({{m.split('.')[0] for m in sys.modules}} & {set(MODEL_CODE)!r})))\n"
    "runpy.run_module('rlhf_lab', run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.slow  # a fresh interpreter: this one has imported everything already
@pytest.mark.parametrize("argv", [["--help"], ["--cfg", "job"], ["objective=dpo", "trainer=fsdp", "--cfg", "job"]])
def test_composing_a_config_imports_no_model_code(argv):
    """--help and --cfg job compose from the schemas alone: no built-in (or example) plugin imports
    torch, Lightning or transformers to register, so the command line answers in well under a second
    of imports (issue 15.4). A system registered as a class instead of "module:attr", or a schema
    moved back beside its system, shows up here."""
    res = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "imported: []", res.stdout.splitlines()[-1]


@pytest.mark.slow  # a fresh interpreter
def test_a_pipelines_own_process_loads_no_training_stack():
    """A pipeline's process only starts its stages, each a run of its own in a subprocess: what it
    runs (the composition root up to the pipeline's branch, the run directory's guard, the sweep
    callback) imports none of MODEL_CODE, which would delay the first stage by seconds (issue 18.4)."""
    code = ("import sys, rlhf_lab.app, rlhf_lab.training.rundir, rlhf_lab.sweep\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(MODEL_CODE)!r}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_multirun_jobs_are_separate_wandb_runs_in_one_group(cli, tmp_path):
    sweep = tmp_path / "sweep"
    res = cli("-m", *QUICK, "trainer.max_steps=3", "optim.lr=1e-3,2e-3", "export=false", "trainer.save_checkpoint=false",
              f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.output
    runs = [wandb_runs(sweep / str(i))[0] for i in range(2)]
    assert [r["config"]["optim"]["lr"] for r in runs] == [1e-3, 2e-3]
    assert runs[0]["run"]["group"] == runs[1]["run"]["group"] != "default"
    assert all(json.loads((sweep / str(i) / "summary.json").read_text())["global_step"] == 3 for i in range(2))


@pytest.mark.parametrize(("argv", "default"), [
    ([], True),
    (["hydra.run.dir=out", "resume=auto"], True),   # where the run goes / resuming it: still the default run
    (["resume=auto", "resume_allow_changes=[optim.lr]"], True),
    (["--cfg", "job"], True),                       # a flag's value is not an override
    (["-m"], True),
    (["objective=sft"], False),
    (["logger=csv"], False),
    (["+foo=1"], False),
    (["--config-name", "other"], False),
])
def test_the_default_run_is_added_only_when_nothing_is_composed(argv, default):
    assert with_default_run(argv) == ([*argv, "pipeline=rlhf"] if default else argv)


def test_cfg_without_overrides_shows_the_default_pipeline():
    """What ``--cfg job`` prints, composed in process (the whole-mapping test below runs ``--cfg job``
    through the real entry point): the default pipeline without overrides, a single run with one."""
    default = compose_cli(*with_default_run([]))
    assert default.pipeline.name == "rlhf" and default.pipeline.stages
    assert compose_cli(*with_default_run(["logger=csv"])).pipeline is None
    chosen = compose_cli("objective=sft", "optim.lr=0.5")
    assert chosen.optim.lr == 0.5 and chosen.objective.name == "sft"


def test_an_option_of_an_unselected_group_is_named_not_an_assertion(cli):
    assert unselected_group_option(["prompting=few_shot", "prompting.k=3"]) is None
    assert unselected_group_option(["+reward=model", "reward.path=x"]) is None
    assert "add reward=<name>" in unselected_group_option(["objective=ppo", "reward.path=x"])
    res = cli("mode=eval", "eval=world_arith", "prompting.k=3")
    assert res.returncode == 2 and "'prompting.k' sets an option of the 'prompting' group" in res.stderr
    assert "Traceback" not in res.stderr and "AssertionError" not in res.stderr


def test_a_whole_mapping_from_the_shell_replaces_the_presets(cli):
    """README's syntax through the real entry point (whole_mappings rewrites it before Hydra composes)."""
    shown = cli("--cfg", "job", "data=mixture", "data.sources={math: {path: m.jsonl, weight: 2.0}}", "data.fields={prompt: q}")
    assert shown.returncode == 0, shown.output
    data = yaml.safe_load(shown.stdout)["data"]
    assert list(data["sources"]) == ["math"] and data["sources"]["math"]["weight"] == 2.0 and data["fields"] == {"prompt": "q"}
