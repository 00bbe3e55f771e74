"""Plan-and-Solve: its two stages on the tiny model (fixtures from rlhf_lab.testing), then a real
evaluation through the CLI."""

import random

import pytest

from rlhf_lab.api import ConfigError, Task
from rlhf_lab_plan_and_solve import TRIGGERS, PlanAndSolve, PlanAndSolveConfig

ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6)]]


@pytest.mark.parametrize("variant", ["ps", "ps+"])
def test_plans_then_solves_with_the_plan_in_the_prompt(variant, rlhf_lab_lm):
    task = Task.from_rows(ROWS, question_template="Q: {question}\nA:", max_new_tokens=6, chat_template="never")
    lm = rlhf_lab_lm(task)
    answers = PlanAndSolve(PlanAndSolveConfig(name="plan_and_solve", variant=variant)).run(task.docs, task, lm, random.Random(0))
    plan, solve = TRIGGERS[variant]
    assert lm.calls == {"generate": 2}  # two batched generations for the three documents, not six
    for i, doc in enumerate(task.docs):
        (planned, solved) = lm.trace[i]
        assert planned["prompt"] == f"Q: {doc.question}\nA: {plan}"
        assert solved["prompt"] == f"Q: {doc.question}\nA: {plan} {planned['outputs'][0].strip()} {solve}"
        assert answers[i] == solved["outputs"][0]


def test_rejects_an_unknown_variant():
    with pytest.raises(ConfigError, match="ps\\+"):
        PlanAndSolve(PlanAndSolveConfig(name="plan_and_solve", variant="ps++"))


@pytest.mark.slow
def test_evaluates_through_the_cli(rlhf_lab_run, rlhf_lab_cli):
    summary = rlhf_lab_run("mode=eval", "eval=synthetic", "eval.num_rows=8", "prompting=plan_and_solve", "prompting.variant=ps+").summary
    assert summary["eval/synthetic/plan_and_solve/scored"] == 8
    assert summary["eval/synthetic/plan_and_solve/model_calls"] == 2
    listing = rlhf_lab_cli(module="rlhf_lab.plugins")
    assert "rlhf-lab-plan-and-solve 0.2.0" in listing.stdout and "prompting=plan_and_solve" in listing.stdout, listing.output
