"""Reward sources: the verifiable rule, a Python function by import path, a reward model by path,
and the checks that turn a failing or NaN reward into an error that names it."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rlhf_lab.config import ModelConfig
from rlhf_lab.data.collate import pad_collate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import load_scalar_head_model
from rlhf_lab.models.heads import sequence_rewards
from rlhf_lab.plugins import load_plugins
from rlhf_lab.rewards import Reward, RewardError, build_reward
from rlhf_lab.rewards.model import ModelRewardConfig, RewardModelScorer
from rlhf_lab.rewards.python import PythonRewardConfig, python_reward
from rlhf_lab.rewards.verifiable import VerifiableConfig, verifiable
from tests.rewards import functions

ROWS = [{"prompt": "What is 1 + 1?", "answer": "2", "task": "add"}, {"prompt": "Reverse the word: apple", "answer": "elppa", "task": "reverse"}]


@pytest.fixture(scope="module")
def entries():
    return load_plugins().registry.entries["reward"]


def test_verifiable_matches_the_extracted_answer():
    score = verifiable(VerifiableConfig(name="verifiable"), None)
    completions = ["Let me think.\n42", "41", "", "elppa.", "ELPPA"]
    answers = ["42", "42", "42", "elppa", "elppa"]
    # the last non-empty line, a final "." ignored; case counts unless ignore_case
    assert score(["p"] * 5, completions, answers) == [1.0, 0.0, 0.0, 1.0, 0.0]
    lenient = verifiable(VerifiableConfig(name="verifiable", ignore_case=True, correct=2.0, wrong=-1.0), None)
    assert lenient(["p"] * 5, completions, answers) == [2.0, -1.0, -1.0, 2.0, 2.0]


def test_no_reward_given_means_the_rows_verifiable_answers(entries, tiny_tokenizer):
    reward = build_reward(None, entries, tiny_tokenizer)
    assert reward.name.startswith("'verifiable'")
    assert reward(["q1", "q2"], ["2", "apple"], ROWS).tolist() == [1.0, 0.0]
    with pytest.raises(RewardError, match=r"needs column\(s\) \['answer'\] that the prompt rows lack"):
        reward(["q"], ["2"], [{"prompt": "q", "task": "t"}])


def test_python_reward_by_import_path_gets_the_columns_it_names(entries, tiny_tokenizer):
    def build(fn):
        return build_reward(OmegaConf.structured(PythonRewardConfig(name="python", fn=fn)), entries, tiny_tokenizer)

    reward = build("tests.rewards.functions:needs_answer")
    assert reward.name == "'python' (tests.rewards.functions:needs_answer)"
    assert reward(["q1", "q2"], ["2", "x"], ROWS).tolist() == [1.5, 0.0]  # answer and task passed by name
    assert build("tests.rewards.functions:sees_all_columns")(["q1", "q2"], ["a", "b"], ROWS).tolist() == [3.0, 3.0]
    assert build("tests.rewards.functions:length")(["q1", "q2"], ["ab", ""], ROWS).tolist() == [2.0, 0.0]


@pytest.mark.parametrize(
    "fn,message",
    [
        ("no_colon", "reward.fn must look like 'package.module:function'"),
        ("tests.rewards.nowhere:score", "cannot import module 'tests.rewards.nowhere'"),
        ("tests.rewards.functions:missing", "module 'tests.rewards.functions' has no attribute 'missing'"),
        ("tests.rewards.functions:calls", "is not callable"),
    ],
)
def test_python_reward_path_errors_name_the_key(fn, message):
    with pytest.raises(ConfigError, match=message):
        python_reward(PythonRewardConfig(name="python", fn=fn), None)


def test_gold_score_keeps_the_reward_functions_signature():
    score = python_reward(
        PythonRewardConfig(name="python", fn="tests.rewards.functions:needs_answer", gold_fn="tests.rewards.functions:length"), None
    )
    reward = Reward("'python'", score)
    assert reward(["q1", "q2"], ["2", "x"], ROWS).tolist() == [1.5, 0.0]
    assert reward.gold_scores(["q1", "q2"], ["2", "xyz"], ROWS).tolist() == [1.0, 3.0]


@pytest.mark.parametrize(
    "returned,message",
    [
        ([float("nan"), 1.0], r"returned nan for completion 0 'a' \(prompt 'q1'\); every score must be a finite number"),
        ([1.0, float("inf")], "returned inf for completion 1"),
        ([1.0, None], "returned None for completion 1"),
        ([1.0], "returned 1 scores for 2 completions"),
    ],
)
def test_bad_scores_are_errors_naming_the_reward(returned, message):
    reward = Reward("'python' (my_module:judge)", lambda prompts, completions: returned)
    with pytest.raises(RewardError, match=r"reward 'python' \(my_module:judge\) " + message):
        reward(["q1", "q2"], ["a", "b"], ROWS)


def test_a_raising_reward_is_an_error_naming_it():
    reward = Reward("'python' (my_module:judge)", lambda prompts, completions: 1 / 0)
    with pytest.raises(RewardError, match=r"reward 'python' \(my_module:judge\) raised ZeroDivisionError: division by zero"):
        reward(["q1"], ["a"], ROWS[:1])


def test_a_reward_call_past_its_timeout_stops_naming_the_reward_and_reports_progress(monkeypatch, caplog):
    import threading

    import rlhf_lab.rewards as rewards

    monkeypatch.setattr(rewards, "PROGRESS_EVERY_S", 0.05)
    release = threading.Event()  # the stuck call: it never returns by itself

    def stuck(prompts, completions):
        release.wait()
        return [1.0] * len(completions)

    reward = Reward("'python' (judges:slow)", stuck, timeout_s=0.3)
    with caplog.at_level("INFO", logger="rlhf_lab.rewards"), pytest.raises(RewardError) as failure:
        reward(["q1", "q2"], ["a", "b"], ROWS)
    release.set()
    assert str(failure.value).startswith("reward 'python' (judges:slow) took longer than reward.timeout_s=0.3 s to score 2 completions")
    assert any("reward 'python' (judges:slow): still scoring 2 completions after" in r.getMessage() for r in caplog.records)


def test_a_reward_within_its_timeout_scores_as_without_one(monkeypatch, caplog):
    import rlhf_lab.rewards as rewards

    monkeypatch.setattr(rewards, "SLOW_S", 0.0)  # every call counts as slow: its time is reported

    def needs_grad_off(prompts, completions, answer):
        assert not torch.is_grad_enabled()  # the caller's no_grad reaches the helper thread
        return [float(c == a) for c, a in zip(completions, answer)]

    reward = Reward("'python' (judges:exact)", needs_grad_off, timeout_s=30)
    with caplog.at_level("INFO", logger="rlhf_lab.rewards"), torch.no_grad():
        assert reward(["q1", "q2"], ["2", "x"], ROWS).tolist() == [1.0, 0.0]
    assert any(r.getMessage().startswith("reward 'python' (judges:exact): scored 2 completions in ") for r in caplog.records)
    with pytest.raises(RewardError, match="raised ZeroDivisionError"):  # its own error still names it
        Reward("'python' (judges:bad)", lambda p, c: 1 / 0, timeout_s=30)(["q1"], ["a"], ROWS[:1])


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_tokenizer):
    """A reward model directory as objective=rm exports it (random backbone, a non-trivial head)."""
    model = load_scalar_head_model(ModelConfig(), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        model.score.weight.normal_(generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def test_reward_model_scores_text_as_it_was_trained(reward_model_dir, tiny_tokenizer):
    prompts = ["What is 1 + 1?", "Reverse the word: apple", "Hi"]
    completions = ["2", "elppa is the answer", ""]
    scorer = RewardModelScorer(ModelRewardConfig(name="model", path=str(reward_model_dir), batch_size=2))
    # the same sequences objective=rm trains on: chat-templated prompt, completion, EOS
    encoder = Encoder(tiny_tokenizer, max_length=1024)
    seqs = [encoder.sequence(p, c, {}) for p, c in zip(encoder.prompt_ids(prompts), encoder.completion_ids(completions))]
    expected = sequence_rewards(scorer.model, pad_collate([{"sequences": [s]} for s in seqs], tiny_tokenizer.pad_token_id))
    scores = scorer(prompts, completions)
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    assert len(set(scores)) == 3
    one_by_one = RewardModelScorer(ModelRewardConfig(name="model", path=str(reward_model_dir), batch_size=1))
    assert one_by_one(prompts, completions) == pytest.approx(scores, abs=1e-5)  # batching changes nothing


def test_reward_model_through_the_registry(entries, reward_model_dir, tiny_tokenizer):
    reward = build_reward(OmegaConf.structured(ModelRewardConfig(name="model", path=str(reward_model_dir))), entries, tiny_tokenizer)
    scores = reward(["q1", "q2"], ["a", "b"], ROWS)  # the row columns are not passed to the model
    direct = RewardModelScorer(ModelRewardConfig(name="model", path=str(reward_model_dir)))(["q1", "q2"], ["a", "b"])
    assert scores.tolist() == pytest.approx(direct, abs=1e-5) and direct[0] != pytest.approx(direct[1])
    with pytest.raises(ConfigError, match="reward.path=/nonexistent: not a reward model directory"):
        build_reward(OmegaConf.structured(ModelRewardConfig(name="model", path="/nonexistent")), entries, tiny_tokenizer)


def test_unknown_reward_name(entries, tiny_tokenizer):
    with pytest.raises(ConfigError, match="No reward named 'oracle' is registered"):
        build_reward(OmegaConf.create({"name": "oracle"}), entries, tiny_tokenizer)


def test_functions_module_is_importable():
    assert functions.share_of_a(["p"], ["aab"]) == [pytest.approx(2 / 3)]
