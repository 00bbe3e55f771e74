"""The report over seeds, from run directories written by hand (no training): a method is a stage
and its beta, the seeds of a sweep collapse into one row with its 95% interval, and Welch's test
says which differences are within the noise."""

import json

import pytest
import torch
import yaml

from rlhf_lab.lab.evaluation import WorldEvaluation
from rlhf_lab.report import collect_runs, methods, methods_markdown, write_report
from tests.inprocess import compose_cli


def write_run(path, overrides, objective, beta, gold, kl, trace=()):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"objective": {"name": objective, "beta": beta}}))
    summary = {"objective": objective, "world/gold_reward": gold, "world/kl": kl, "world_initial/gold_reward": -0.2, "cpu_s": 10.0}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "world_eval.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trace))


@pytest.fixture
def sweep(tmp_path):
    """A pipeline swept over three seeds: stages ppo and ppo_ensemble (both beta 0.01) and best-of-n."""
    golds = {"ppo": [0.10, 0.20, 0.30], "ppo_ensemble": [0.80, 0.90, 1.00], "bon": [0.50, 0.70, 0.90]}
    for job, seed in enumerate((1, 2, 3)):
        job_dir = tmp_path / str(job)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["pipeline=compare", f"seed={seed}"]))
        (job_dir / "summary.json").write_text(json.dumps({"pipeline": "compare", "world/gold_reward": 0}))
        for stage in ("ppo", "ppo_ensemble"):
            trace = [{"step": s, "kl": s / 10, "gold_reward": golds[stage][job], "proxy_reward": 1 + s / 10} for s in (0, 10, 20)]
            write_run(job_dir / stage, ["objective=ppo"], "ppo", 0.01, golds[stage][job], 2.0 + job, trace)
        curve = [{"step": n, "n": n, "kl": n / 4, "gold_reward": golds["bon"][job] + n / 100, "proxy_reward": n} for n in (1, 2, 4)]
        write_run(job_dir / "bon", ["mode=best_of_n"], "best_of_n", 0.05, golds["bon"][job], 1.0, curve)
    return tmp_path


def test_seeds_collapse_into_methods_with_intervals_and_welch(sweep):
    groups = methods(collect_runs(sweep))
    assert list(groups) == ["bon", "ppo beta=0.01", "ppo_ensemble beta=0.01"]  # best-of-n has no beta
    assert all(len(g) == 3 for g in groups.values())
    text = methods_markdown(collect_runs(sweep))
    # ppo: mean 0.2, sd 0.1, half-width t_{0.975,2} * 0.1 / sqrt(3) = 0.248; KL 2, 3, 4: 3.00 +- 2.48
    assert "| ppo beta=0.01 | 3 | 0.200 ± 0.248 | 3.00 ± 2.48 |" in text
    # ppo vs ppo_ensemble: equal spreads, t = -0.7 / sqrt(0.01 / 3 * 2) = -8.57 on 4 df: p = 0.001
    assert "| ppo beta=0.01 | ppo_ensemble beta=0.01 | -0.700 | 0.001 | different |" in text
    # best-of-n (mean 0.7, sd 0.2) vs ppo (sd 0.1): t = 0.5 / sqrt(0.04 / 3 + 0.01 / 3) = 3.873,
    # Welch's df = (0.05 / 3)^2 / ((0.04 / 3)^2 / 2 + (0.01 / 3)^2 / 2) = 2.94: p = 0.032
    assert "| bon | ppo beta=0.01 | +0.500 | 0.032 | different |" in text
    # vs ppo_ensemble: t = -0.2 / 0.1291 = -1.549 on 2.94 df: p = 0.221, the intervals overlap
    assert "| bon | ppo_ensemble beta=0.01 | -0.200 | 0.221 | within the noise |" in text


def test_report_writes_the_frontier_with_best_of_n_and_the_overoptimisation_curves(sweep):
    written = write_report(sweep, wandb_log=False)
    assert {"frontier.png", "overoptimization.png", "report.md"} <= set(written)
    assert "Differences in gold reward, Welch's two-sided t-test" in written["report.md"].read_text()


def test_the_runs_written_by_hand_use_the_keys_the_lab_writes(sweep, tmp_path_factory):
    """A renamed metric (``world/gold`` for ``world/gold_reward``) would leave these tests reading
    keys that no run writes: the names here are the ones a real WorldEvaluation reports, under
    ``world/`` (``world_initial/`` before training) in summary.json and bare in world_eval.jsonl."""
    evaluation = WorldEvaluation(compose_cli("data=world"), tmp_path_factory.mktemp("world"))
    evaluation.prompts, evaluation.reference_gold = ["p", "q"], torch.zeros(2)
    evaluation.proxy = lambda prompts, texts: [0.0, 1.0]  # a learned reward: proxy_reward is reported too
    reported = set(evaluation._metrics(["a", "b"], torch.zeros(2), torch.zeros(2)))
    assert {"gold_reward", "kl", "proxy_reward"} <= reported
    for path in sweep.rglob("summary.json"):
        world = [k.split("/", 1) for k in json.loads(path.read_text()) if "/" in k]
        assert all(prefix in ("world", "world_initial") and name in reported for prefix, name in world), (path, world)
    for path in sweep.rglob("world_eval.jsonl"):
        for point in map(json.loads, path.read_text().splitlines()):
            assert set(point) - {"step", "n"} <= reported, (path, point)  # n: best-of-n's curve
