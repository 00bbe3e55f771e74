"""The target-length reward: worked scores with the tiny tokenizer, then its place in the CLI."""

import re

import pytest

from rlhf_lab.api import ConfigError
from rlhf_lab_length_reward import TargetLengthConfig, target_length


def test_scores_by_distance_from_the_target(rlhf_lab_tokenizer):
    completions = ["", "hello world", "hello world " * 8]
    lengths = [len(rlhf_lab_tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
    score = target_length(TargetLengthConfig(name="target_length", target_tokens=lengths[1]), rlhf_lab_tokenizer)
    assert score(["p"] * 3, completions) == pytest.approx([-1.0, 0.0, -(lengths[2] - lengths[1]) / lengths[1]])


def test_rejects_a_target_below_one(rlhf_lab_tokenizer):
    with pytest.raises(ConfigError, match="target_tokens"):
        target_length(TargetLengthConfig(name="target_length", target_tokens=0), rlhf_lab_tokenizer)


@pytest.mark.slow
def test_is_an_option_of_the_cli(rlhf_lab_cli):
    help_ = rlhf_lab_cli("--help")
    assert re.search(r"^reward: .*\btarget_length\b", help_.stdout, re.M), help_.output
    listing = rlhf_lab_cli(module="rlhf_lab.plugins")
    assert "rlhf-lab-length-reward 0.1.0" in listing.stdout and "reward=target_length" in listing.stdout, listing.output


@pytest.mark.slow
def test_drives_ppo_through_the_cli(rlhf_lab_run):
    # Completions of at most 8 tokens against a target of 8 score within [-1, 0].
    overrides = ("objective=ppo", "objective.max_new_tokens=8", "objective.epochs=1", "objective.minibatches=1")
    summary = rlhf_lab_run(*overrides, "reward=target_length", "reward.target_tokens=8", steps=1).summary
    assert summary["objective"] == "ppo"
    assert -1.0 <= summary["train/reward"] <= 0.0
