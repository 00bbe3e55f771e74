"""The gold-reward world: determinism, the gold reward by hand, Bradley-Terry labelling, Bayes accuracy."""

import math
import random
import re

import pytest

from rlhf_lab.lab import world


def test_same_seed_same_rows_and_disjoint_splits():
    for fmt in ("sft", "preference", "prompt"):
        assert world.generate(fmt, 50, seed=3) == world.generate(fmt, 50, seed=3)
        assert world.generate(fmt, 50, seed=3) != world.generate(fmt, 50, seed=4)
    train, val, test = (set(world.subjects(s)) for s in ("train", "validation", "test"))
    assert (len(train), len(val), len(test)) == (70, 10, 10)
    assert not (train & val or train & test or val & test)
    assert {r["subject"] for r in world.generate("prompt", 200, split="test")} <= test


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("it is sunny.", 1.0),
        ("it is sunny and robot.", 0.0),  # (1.0 - 1.0) / 2
        ("it is happy, brave and lemon.", (0.8 + 0.6 - 0.8) / 3),
        ("it is sunny and sunny.", 1.0 - 0.5),  # fluent, one repeat
        ("it is sunny, sunny and sunny.", 1.0 - 2 * 0.5),
        ("sunny sunny", 1.0 - 1.0 - 0.5),  # not a sentence of the grammar, one repeat
        ("it is sunny", 1.0 - 1.0),  # no full stop
        ("it is sunny, happy.", 0.9 - 1.0),  # a list needs "and" before its last word
        ("the castle is sunny.", 1.0 - 1.0),
        ("", -1.0),
    ],
)
def test_gold_reward_by_hand(completion, gold):
    assert world.gold_reward(completion) == pytest.approx(gold)


def test_generated_completions_are_fluent_and_centred():
    rows = world.generate("sft", 2000)
    assert all(world.is_fluent(r["completion"]) for r in rows)
    assert abs(sum(world.gold_reward(r["completion"]) for r in rows) / len(rows)) < 0.05


def test_bayes_accuracy_by_hand():
    # sigmoid(|1 - 0| / 0.5) = sigmoid(2); a tie is a coin flip
    expected = (1 / (1 + math.exp(-2)) + 0.5) / 2
    assert world.bayes_accuracy([(1.0, 0.0), (0.5, 0.5)], temperature=0.5) == pytest.approx(expected)
    assert world.bayes_accuracy([(0.0, 1.0)], temperature=0.5) == pytest.approx(1 / (1 + math.exp(-2)))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_bradley_terry_labels_follow_the_temperature(temperature):
    """The share of pairs whose chosen answer has the higher gold reward matches the Bradley-Terry
    expectation (the Bayes-optimal accuracy) within 4 standard errors."""
    rows = world.generate("preference", 4000, temperature=temperature)
    pairs = [(world.gold_reward(r["chosen"]), world.gold_reward(r["rejected"])) for r in rows]
    agree = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in pairs) / len(pairs)
    expected = world.bayes_accuracy(pairs, temperature)
    assert abs(agree - expected) < 4 * math.sqrt(expected * (1 - expected) / len(pairs))
    assert all(r["chosen"] != r["rejected"] for r in rows)


def test_preference_probability_is_bradley_terry():
    assert world.preference_probability(0.3, 0.3, 0.25) == 0.5
    assert world.preference_probability(1.0, 0.5, 0.25) == pytest.approx(1 / (1 + math.exp(-2)))


def test_arithmetic_rows_have_correct_worked_steps():
    for row in world.generate("prompt", 100, task="arith"):
        expression = row["prompt"].removeprefix("Compute ").removesuffix(".")
        assert str(eval(expression)) == row["answer"]
        for step in row["rationale"].split(". "):
            lhs, rhs = step.rstrip(".").split(" = ")
            assert eval(lhs) == int(rhs)
    sft = world.generate("sft", 4, task="arith")
    int(sft[0]["completion"])  # a direct answer
    assert sft[1]["prompt"].endswith(world.COT_TRIGGER) and "The answer is" in sft[1]["completion"]


def test_long_problems_have_more_operations_than_any_in_training():
    def operations(split):
        return {len(world.parse_arith(r["prompt"])[1]) for r in world.generate("prompt", 300, split=split, task="arith")}

    assert operations("train") == operations("test") == {2, 3} and operations("test_long") == {5, 6}
    with pytest.raises(ValueError, match="test_long"):
        world.generate("prompt", 1, split="long", task="arith")


@pytest.mark.parametrize(
    "answer, feedback",
    [
        ("7 + 5 = 12. 12 - 3 = 9. The answer is 9.", world.CORRECT),
        ("7 + 5 = 12. 12 - 3 = 8. The answer is 8.", "12 - 3 = 9, not 8."),  # the first wrong step, with its right result
        ("7 + 5 = 13. 13 - 3 = 10. The answer is 10.", "7 + 5 = 12, not 13."),
        ("7 + 5 = 12. The answer is 12.", "It stops before - 3."),
        ("7 + 5 = 12. 12 - 3 = 9. The answer is 8.", "The answer is 9, not 8."),
        ("9", "It stops before + 5."),
    ],
)
def test_critique_by_hand(answer, feedback):
    assert world.critique("Compute 7 + 5 - 3.", answer) == feedback


def test_sft_rows_teach_each_habit_and_preference_rows_pair_right_with_wrong():
    rows = world.generate("sft", 600, task="arith")
    habits = [rows[i :: len(world.ARITH_HABITS)] for i in range(len(world.ARITH_HABITS))]
    assert all(len(h) == 100 for h in habits)
    for row in habits[world.ARITH_HABITS.index("decompose")]:  # the sub-questions, put together, are the question
        first, *rest = re.findall(r'"([^"]+)"', row["completion"])
        rebuilt = first.removesuffix(".") + "".join(s.removeprefix("Then").removesuffix(".") for s in rest) + "."
        assert rebuilt == row["prompt"].removesuffix(f" {world.DECOMPOSE_TRIGGER}")
    def operations(row):
        return len(world.parse_arith(re.match(r"Compute [^.]*\.", row["prompt"]).group())[1])

    # the model is shown how to break down problems of up to 6 operations, but solves only 2-3
    assert {operations(row) for row in habits[world.ARITH_HABITS.index("decompose")]} == {2, 3, 4, 5, 6}
    assert {operations(row) for habit in ("direct", "cot", "feedback", "revise") for row in habits[world.ARITH_HABITS.index(habit)]} == {2, 3}
    feedback = [row["completion"] for row in habits[world.ARITH_HABITS.index("feedback")]]
    assert 30 < feedback.count(world.CORRECT) < 70  # critiques of right and of wrong answers
    for row in world.generate("preference", 200, task="arith"):
        question = row["prompt"].removesuffix(f" {world.COT_TRIGGER}")
        assert world.critique(question, row["chosen"]) == world.CORRECT != world.critique(question, row["rejected"])


def test_sample_completion_uses_one_to_three_distinct_descriptors():
    rng = random.Random(0)
    for _ in range(200):
        words = world.descriptors(world.sample_completion(rng))
        assert 1 <= len(words) <= world.MAX_DESCRIPTORS and len(set(words)) == len(words)


def test_a_resumed_run_forgets_the_evaluations_after_its_checkpoint(tmp_path):
    from rlhf_lab.lab.evaluation import forget_after

    trace = tmp_path / "world_eval.jsonl"
    trace.write_text("".join(f'{{"step": {s}, "gold_reward": {s / 10}}}\n' for s in (0, 5, 10, 15)) + '{"step": 20, "gold')
    forget_after(trace, 10)  # resumed from step 10: steps 15 and 20 are evaluated again
    assert [line.split(",")[0] for line in trace.read_text().splitlines()] == ['{"step": 0', '{"step": 5', '{"step": 10']


def test_unpaired_labels_follow_the_gold_reward():
    """data.feedback=unpaired: each completion is desirable with probability sigmoid(gold / T); among
    completions above and below gold 0 the count of thumbs up matches that expectation within 4
    standard deviations. The completions are those of the preference pairs (the same budget)."""
    rows = world.generate("unpaired", 8000, temperature=0.25, feedback="unpaired")
    pairs = world.generate("preference", 4000, temperature=0.25)
    assert [r["completion"] for r in rows[:4]] == [pairs[0]["chosen"], pairs[0]["rejected"], pairs[1]["chosen"], pairs[1]["rejected"]]
    for side in (lambda g: g > 0, lambda g: g <= 0):
        golds = [(world.gold_reward(r["completion"]), r["label"]) for r in rows if side(world.gold_reward(r["completion"]))]
        p = [world.desirable_probability(g, 0.25) for g, _ in golds]
        expected, sd = sum(p), math.sqrt(sum(q * (1 - q) for q in p))
        assert abs(sum(label for _, label in golds) - expected) < 4 * sd
    assert world.desirable_probability(0.5, 0.25) == pytest.approx(1 / (1 + math.exp(-2)))


def test_paired_feedback_labels_chosen_desirable_and_rejected_not():
    rows = world.generate("unpaired", 7, feedback="paired")
    pairs = world.generate("preference", 4)
    assert len(rows) == 7 and [r["label"] for r in rows] == [True, False] * 3 + [True]
    assert [r["completion"] for r in rows[:2]] == [pairs[0]["chosen"], pairs[0]["rejected"]]
