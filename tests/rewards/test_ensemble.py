"""Reward-hacking defences: the three ensemble aggregates of Coste et al. by hand, an ensemble of two
real reward model directories scoring as its members' aggregate, and the held-out early stop's rule."""

import pytest
import torch
from omegaconf import OmegaConf

from rlhf_lab.config import ModelConfig
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import load_scalar_head_model
from rlhf_lab.rewards.ensemble import AGGREGATES, EnsembleRewardConfig, EnsembleScore
from rlhf_lab.rewards.model import ModelRewardConfig, RewardModelScorer

SCORES = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]])  # (k = 3 members, N = 2 completions)


def test_aggregates_by_hand():
    # completion 1: scores 1, 2, 3: mean 2, min 1, variance ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3
    # completion 2: scores 0, 0, 3: mean 1, min 0, variance (1 + 1 + 4) / 3 = 2
    torch.testing.assert_close(AGGREGATES["mean"](SCORES), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(AGGREGATES["min"](SCORES), torch.tensor([1.0, 0.0]))
    # uwo, lambda 0.5: 2 - 0.5 * 2/3 = 5/3; 1 - 0.5 * 2 = 0
    torch.testing.assert_close(AGGREGATES["uwo"](SCORES, uwo_coef=0.5), torch.tensor([5 / 3, 0.0]))


@pytest.fixture(scope="module")
def member_dirs(tmp_path_factory, tiny_tokenizer):
    """Two reward model directories that differ in their head (seeds 0 and 1), as two seeds of objective=rm would."""
    dirs = []
    for seed in (0, 1):
        model = load_scalar_head_model(ModelConfig(), tiny_tokenizer.pad_token_id)
        with torch.no_grad():
            model.score.weight.normal_(generator=torch.Generator().manual_seed(seed))
        out = tmp_path_factory.mktemp(f"rm{seed}")
        model.save_pretrained(out)
        tiny_tokenizer.save_pretrained(out)
        dirs.append(str(out))
    return dirs


def test_an_ensemble_scores_as_its_members_aggregate(member_dirs):
    prompts, completions = ["Describe the river castle.", "Hi"], ["it is sunny.", "robot robot"]
    members = torch.tensor([RewardModelScorer(ModelRewardConfig(path=d))(prompts, completions) for d in member_dirs])  # (2, 2)
    assert not torch.allclose(members[0], members[1])
    for aggregate, expected in [("mean", members.mean(0)), ("min", members.min(0).values),
                                ("uwo", members.mean(0) - 2.0 * ((members[0] - members[1]) / 2) ** 2)]:  # fmt: skip
        cfg = OmegaConf.structured(EnsembleRewardConfig(name="ensemble", paths=member_dirs, aggregate=aggregate, uwo_coef=2.0))
        torch.testing.assert_close(torch.tensor(EnsembleScore(cfg)(prompts, completions)), expected, rtol=1e-5, atol=1e-5)


def test_an_ensemble_of_one_is_a_config_error(member_dirs):
    with pytest.raises(ConfigError, match="at least 2 reward model directories"):
        EnsembleScore(EnsembleRewardConfig(name="ensemble", paths=member_dirs[:1]))


def test_held_out_stop_waits_patience_evaluations_without_a_new_best():
    from rlhf_lab.rewards.heldout import HeldOutRewardStop

    stop = HeldOutRewardStop(path="unused", patience=2, min_delta=0.05)
    # 1.0 best; 1.2 best; 1.22 is not 0.05 better (1 bad); 1.3 best again; 1.1, 1.25: 2 bad -> stop
    assert [stop.observe(s) for s in (1.0, 1.2, 1.22, 1.3, 1.1, 1.25)] == [False, False, False, False, False, True]
    assert stop.best == 1.3
