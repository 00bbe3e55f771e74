"""A language model prompted to choose, on the real tiny model: its probability from the two
answers' log-likelihoods (checked against a direct forward pass), symmetric over both orders, and
online DPO's pairs labelled by it."""

import pytest
import torch
from omegaconf import OmegaConf

from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives.online_dpo import OnlineDPO, OnlineDPOConfig
from rlhf_lab.rewards.judge import JudgeConfig, PairwiseJudge
from tests.rollout.runs import make_system, prompt_rows

PROMPTS, FIRST, SECOND = ["Describe the river castle.", "Hi"], ["it is sunny.", "hello"], ["robot robot", "it is lemon."]


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    return PairwiseJudge(OmegaConf.structured(JudgeConfig(name="judge", path=str(tiny_model_dir), both_orders=False)))


def test_the_probability_is_the_answers_likelihood_ratio(judge, tiny_tokenizer):
    question = judge.template.format(prompt=PROMPTS[0], a=FIRST[0], b=SECOND[0])
    prompt_ids = judge.encoder.prompt_ids([question])[0]
    logps = []
    for choice in ("A", "B"):  # log p(choice | question), by hand: one forward pass of question + choice
        ids = prompt_ids + tiny_tokenizer(choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = judge.model(torch.tensor([ids])).logits[0, len(prompt_ids) - 1 : -1].float()
        logps.append(logits.log_softmax(-1).gather(1, torch.tensor(ids[len(prompt_ids) :])[:, None]).sum().item())
    expected = torch.sigmoid(torch.tensor(logps[0] - logps[1])).item()
    assert judge.compare(PROMPTS[:1], FIRST[:1], SECOND[:1])[0] == pytest.approx(expected, abs=1e-5)


def test_both_orders_make_the_judge_symmetric(judge):
    judge.both_orders = True
    try:
        forward, backward = judge.compare(PROMPTS, FIRST, SECOND), judge.compare(PROMPTS, SECOND, FIRST)
    finally:
        judge.both_orders = False
    assert all(0 < p < 1 for p in forward)
    assert [f + b for f, b in zip(forward, backward)] == pytest.approx([1.0, 1.0], abs=1e-6)
    with pytest.raises(ConfigError, match="reward=judge compares two completions"):
        judge(PROMPTS, FIRST)


def test_online_dpo_pairs_labelled_by_the_judge(judge, tiny_tokenizer):
    system = make_system(OnlineDPO, OnlineDPOConfig, tiny_tokenizer, judge, max_new_tokens=5)
    rollout, _ = system.rollout(prompt_rows(OnlineDPO, tiny_tokenizer, n=3))
    winners, losers = rollout.reward.chunk(2)  # P(y_w better), P(y_l better)
    assert torch.allclose(winners + losers, torch.ones(3)) and bool((winners >= 0.5).all())
