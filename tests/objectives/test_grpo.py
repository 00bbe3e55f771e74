"""GRPO and RLOO on the real tiny model: groups of k completions per prompt, advantages within
each group, KL 0 at step 0, learning a simple reward, and a large beta keeping the reference."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from rlhf_lab.config import DataConfig
from rlhf_lab.data.builtin import load_synthetic
from rlhf_lab.data.module import DataModule
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives.grpo import GRPO
from rlhf_lab.objectives.rloo import RLOO
from rlhf_lab.objectives.schemas import GRPOConfig, RLOOConfig
from tests.rewards.functions import flat_on_add, length, share_of_a
from tests.rollout.runs import ENV, LEARN, curve, head, make_system, prompt_rows, tail


@pytest.mark.parametrize("system_cls,cfg_cls", [(GRPO, GRPOConfig), (RLOO, RLOOConfig)])
def test_groups_of_k_completions_share_a_prompt_and_centre_their_advantages(tiny_tokenizer, system_cls, cfg_cls):
    system = make_system(system_cls, cfg_cls, tiny_tokenizer, length, num_generations=3, max_new_tokens=5)
    rollout, metrics = system.rollout(prompt_rows(system_cls, tiny_tokenizer, n=4))
    assert rollout.input_ids.shape[0] == 12  # 4 prompts x 3 completions
    prompts = rollout.input_ids[:, : -rollout.mask.shape[1]].view(4, 3, -1)
    assert all(torch.equal(group[0], member) for group in prompts for member in group)  # consecutive rows: one prompt
    assert abs(metrics["train/kl"].item()) < 1e-5  # the policy is the reference (to float rounding: see test_ppo)
    assert rollout.values is None  # critic-free
    system.estimate_advantages(rollout, metrics)
    per_completion = rollout.advantages[:, 0]  # (12,) every token of a completion shares its advantage
    assert torch.equal(rollout.advantages, per_completion[:, None] * rollout.mask)
    assert per_completion.view(4, 3).sum(1).tolist() == pytest.approx([0.0] * 4, abs=1e-4)  # centred within each group


@pytest.mark.parametrize("scale_rewards", [True, False])
def test_grpo_advantages_divide_by_the_groups_std_unless_told_not_to(tiny_tokenizer, scale_rewards):
    system = make_system(GRPO, GRPOConfig, tiny_tokenizer, length, num_generations=3, max_new_tokens=6, scale_rewards=scale_rewards)
    rollout, metrics = system.rollout(prompt_rows(GRPO, tiny_tokenizer, n=4))
    system.estimate_advantages(rollout, metrics)
    groups = rollout.scores.view(4, 3)
    centred = groups - groups.mean(1, keepdim=True)
    expected = centred / (groups.std(1, keepdim=True) + 1e-4) if scale_rewards else centred  # Dr. GRPO: no division
    assert bool((groups.std(1) > 1.5).any())  # a spread that the division changes visibly
    assert rollout.advantages[:, 0].tolist() == pytest.approx(expected.flatten().tolist(), abs=1e-5)


def test_grpo_loss_adds_beta_times_the_k3_kl_per_token(tiny_tokenizer):
    """At the first update pi = pi_old, so the surrogate is -A per token; with log pi_ref = log pi - 0.3
    the k3 term is e^-0.3 + 0.3 - 1 on every token: L = mean_t(-A_i) + beta * k3 over all tokens."""
    system = make_system(GRPO, GRPOConfig, tiny_tokenizer, length, num_generations=2, max_new_tokens=5, beta=0.5)
    rollout, metrics = system.rollout(prompt_rows(GRPO, tiny_tokenizer, n=3))
    system.estimate_advantages(rollout, metrics)
    rollout.ref_logps = rollout.logps - 0.3
    with torch.no_grad():
        loss, loss_metrics = system.loss(rollout)
    k3 = math.exp(-0.3) + 0.3 - 1
    surrogate = -(rollout.advantages * rollout.mask).sum() / rollout.mask.sum()
    assert loss_metrics["train/kl_loss"].item() == pytest.approx(k3, abs=1e-5)
    assert loss.item() == pytest.approx(surrogate.item() + 0.5 * k3, abs=1e-5)


def test_a_group_needs_two_completions(tiny_tokenizer):
    with pytest.raises(ConfigError, match="objective.num_generations must be >= 2"):
        make_system(GRPO, GRPOConfig, tiny_tokenizer, length, num_generations=1)


def test_grpo_learns_a_simple_reward_and_a_large_beta_stays_at_the_reference(cli):
    runs = {}
    for beta in (0.04, 1.0):
        res = cli("objective=grpo", *LEARN, f"objective.beta={beta}", "data.batch_size=8", "trainer.max_steps=40", env=ENV)
        assert res.returncode == 0, res.output[-3000:]
        runs[beta] = {key: curve(res.run_dir, key) for key in ("train/reward", "train/kl", "train/kl_loss", "train/response_length")}
    reward, kl = runs[0.04]["train/reward"], runs[0.04]["train/kl"]
    assert abs(kl[0]) < 1e-5 and abs(runs[0.04]["train/kl_loss"][0]) < 1e-6  # step 0: the policy is the reference
    assert tail(reward) > 2 * head(reward) and tail(reward) > head(reward) + 0.1, reward
    # GRPO's objective, R - beta * KL per token (its KL term is a mean over tokens), improves too
    objective = [r - 0.04 * k / n for r, k, n in zip(reward, kl, runs[0.04]["train/response_length"])]
    assert tail(objective) > head(objective), (reward, kl)
    close_reward, close_kl = runs[1.0]["train/reward"], runs[1.0]["train/kl"]
    assert tail(close_kl, 10) < 1.0 and tail(close_kl, 10) < tail(kl, 10) / 5, (close_kl, kl)
    assert tail(close_reward, 10) < tail(reward, 10) - 0.05


def test_rloo_runs_through_the_cli(cli):
    res = cli("objective=rloo", *LEARN, "data.batch_size=4", "trainer.max_steps=3", env=ENV)
    assert res.returncode == 0, res.output[-3000:]
    summary = res.summary
    assert summary["objective"] == "rloo" and summary["global_step"] == 3
    assert {"train/reward", "train/kl", "train/policy_loss", "train/clipfrac"} <= set(summary)
    # the policy is the reference at step 0 and has moved away from it after the first updates:
    # an RLOO that never updates (zero advantages, a detached loss) or samples the reference would stay at KL 0
    kl = curve(res.run_dir, "train/kl")
    assert len(kl) == 3 and abs(kl[0]) < 1e-5 and min(abs(k) for k in kl[1:]) > 1e-4, kl


@pytest.mark.parametrize("aggregation,expected", [("token", 2.5), ("sequence", 3.0)])
def test_loss_aggregation_weighs_tokens_or_completions(tiny_tokenizer, aggregation, expected):
    system = make_system(GRPO, GRPOConfig, tiny_tokenizer, length, loss_aggregation=aggregation)
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # 9.0 sits on padding
    # token: (1 + 2 + 3 + 4) / 4 = 2.5, the long completion weighs 3 times the short one;
    # sequence: the completions' means 2 and 4, then (2 + 4) / 2 = 3
    assert system.aggregate(losses, mask).item() == pytest.approx(expected)


def test_dynamic_sampling_replaces_groups_without_signal(tiny_tokenizer):
    """Task 'add' scores 0 for every completion: its groups carry no signal and are replaced by groups
    of further prompts from the data, so the step trains on a full batch of groups that do."""
    system = make_system(GRPO, GRPOConfig, tiny_tokenizer, flat_on_add, num_generations=3, max_new_tokens=6,
                         dynamic_sampling=True, max_refills=3)
    data_cfg = OmegaConf.structured(DataConfig(loader="synthetic", num_rows=60, batch_size=5, val_fraction=0, max_length=64, shuffle=False))
    data = DataModule(data_cfg, "prompt", GRPO.encode, Encoder(tiny_tokenizer, 64), {"synthetic": load_synthetic}, seed=0)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, datamodule=data)
    assert trainer.callback_metrics["train/degenerate_groups"] >= 0.2 - 1e-6  # in file order, 1 row in 5 is task "add"
    assert trainer.callback_metrics["train/refills"] >= 1
    rows = next(iter(data.train_dataloader()))["rows"]
    assert any(row["task"] == "add" for row in rows)
    rollout, metrics = system.collect(rows)
    assert len(rollout.scores) == 5 * 3  # a full batch of groups
    groups = rollout.scores.view(5, 3)
    assert bool((groups != groups[:, :1]).any(1).all())  # every group has scores that differ: a signal
    # at least the 'add' group had no signal (a group of 3 completions without an 'a' has none either)
    assert metrics["train/degenerate_groups"] >= sum(row["task"] == "add" for row in rows) / 5 - 1e-6
