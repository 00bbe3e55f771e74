"""Plan-and-Solve: the prompt it builds, then a real evaluation through the CLI."""

import random
from types import SimpleNamespace

import pytest

from rlhf_lab.api import ConfigError
from rlhf_lab_plan_and_solve import TRIGGERS, PlanAndSolve, PlanAndSolveConfig

# The two members of a task that this strategy reads (rlhf_lab.api.Task has them all).
TASK = SimpleNamespace(question=lambda doc: f"Q: {doc}", cfg=SimpleNamespace(target_delimiter="\nA: "))


@pytest.mark.parametrize("variant", ["ps", "ps+"])
def test_prompt_is_the_question_then_the_trigger(variant):
    strategy = PlanAndSolve(PlanAndSolveConfig(name="plan_and_solve", variant=variant))
    assert strategy.prompt("What is 2 + 3?", TASK, random.Random(0)) == f"Q: What is 2 + 3?\nA: {TRIGGERS[variant]}"


def test_rejects_an_unknown_variant():
    with pytest.raises(ConfigError, match="ps\\+"):
        PlanAndSolve(PlanAndSolveConfig(name="plan_and_solve", variant="ps++"))


@pytest.mark.slow
def test_evaluates_through_the_cli(rlhf_lab_run, rlhf_lab_cli):
    summary = rlhf_lab_run("mode=eval", "eval=synthetic", "eval.num_rows=8", "prompting=plan_and_solve", "prompting.variant=ps+").summary
    assert summary["eval/synthetic/plan_and_solve/scored"] == 8
    assert 0.0 <= summary["eval/synthetic/plan_and_solve/accuracy"] <= 1.0
    listing = rlhf_lab_cli(module="rlhf_lab.plugins")
    assert "rlhf-lab-plan-and-solve 0.1.0" in listing.stdout and "prompting=plan_and_solve" in listing.stdout, listing.output
