"""``python -m rlhf_lab.report`` on a small synthetic multirun directory of pipelines."""

import json
import os
import subprocess
import sys

from omegaconf import OmegaConf

from rlhf_lab.tracking import read_wandb_run


def fake_run(run_dir, objective, world, beta=None, trace=()):
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({"objective": {"name": objective, **({"beta": beta} if beta is not None else {})}}, run_dir / ".hydra" / "config.yaml")
    (run_dir / "summary.json").write_text(json.dumps({"objective": objective, **world}))
    (run_dir / "world_eval.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trace))


def policy(gold, kl, win):
    return {"world_initial/gold_reward": -0.1, "world/gold_reward": gold, "world/kl": kl, "world/win_rate": win, "world/fluent": 1.0}


def test_report_writes_plots_table_and_wandb_images(tmp_path):
    sweep = tmp_path / "multirun"
    for job, beta in enumerate([0.05, 0.2]):
        fake_run(sweep / str(job) / "sft", "sft", policy(-0.1, 40.0, 0.9))  # KL to the random init: no frontier point
        fake_run(sweep / str(job) / "dpo", "dpo", policy(0.5 - beta, 3.0 - 10 * beta, 0.8), beta=beta)
        (sweep / str(job) / "summary.json").write_text(json.dumps({"pipeline": "dpo", "dpo/world/kl": 1.0}))
    trace = [{"step": s, "gold_reward": g, "proxy_reward": p, "kl": k} for s, g, p, k in [(0, -0.1, 0.0, 0.0), (10, 0.4, 1.5, 2.0), (20, 0.2, 3.0, 6.0)]]
    fake_run(sweep / "2" / "ppo", "ppo", {**policy(0.2, 6.0, 0.75), "world/proxy_reward": 3.0}, beta=0.05, trace=trace)
    fake_run(sweep / "2" / "rm", "rm", {"world/rm_accuracy": 0.81, "world/bayes_accuracy": 0.83})

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "rlhf_lab.report", str(sweep)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    out = sweep / "report"
    for png in ("frontier.png", "overoptimization.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "report.md").read_text()
    assert "| 0/dpo | dpo | 0.05 | -0.100 | 0.450 | 2.500 | 0.800 | - | 1.000 |" in table
    assert "| 2/ppo | ppo | 0.05 |" in table and "| 2/rm | 0.810 | 0.830 |" in table
    assert "sft" not in table.replace("SFT", "")
    [wandb_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    logged = {k for row in read_wandb_run(wandb_file)["history"] for k in row}
    assert {"report/frontier", "report/overoptimization"} <= {"/".join(k.split("/")[:2]) for k in logged}  # image records
