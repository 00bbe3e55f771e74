"""PPO on the real tiny model: KL 0 at step 0, the rollout's reward shaping, max_steps counting
rollouts, learning a simple reward (and staying at the reference under a large beta), reward
sources through the CLI, and a failing reward stopping the run with the last checkpoint kept."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from rlhf_lab.config import DataConfig, LoraConfig, ModelConfig, OptimConfig
from rlhf_lab.data.builtin import load_synthetic
from rlhf_lab.data.collate import Collator
from rlhf_lab.data.module import DataModule
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import load_scalar_head_model
from rlhf_lab.objectives.ppo import PPO, PPOConfig
from rlhf_lab.rollout.experience import Rollout
from tests.rewards.functions import length, share_of_a
from tests.rollout.runs import ENV, LEARN, QUICK, curve, head, make_system, prompt_rows, tail

METRICS = (
    "train/reward", "train/kl", "train/entropy", "train/policy_loss", "train/value_loss", "train/clipfrac",
    "train/approx_kl", "train/response_length", "train/rollout_tokens_per_s",
    "time/generate_s", "time/score_s", "time/forward_s", "time/update_s", "train/lr", "train/grad_norm",
)


@pytest.mark.parametrize("lora", [0, 4])
def test_the_samplers_logps_are_the_policys_and_kl_is_zero_at_step_zero(tiny_tokenizer, lora):
    model_cfg = ModelConfig(lora=LoraConfig(r=lora))
    system = make_system(PPO, PPOConfig, tiny_tokenizer, share_of_a, model_cfg=model_cfg, max_new_tokens=6)
    assert (system.reference is None) == bool(lora)  # LoRA: the reference is the policy without adapters
    rollout, metrics = system.rollout(prompt_rows(PPO, tiny_tokenizer))
    # log pi_old comes from the sampler (KV cache, a token at a time), log pi_ref from a forward pass
    # over whole sequences; at step 0 the policy is the reference, so they agree to float rounding
    # (measured: at most 9.5e-7 over 32 completions of 24 tokens), and no dropout separates them.
    torch.testing.assert_close(rollout.logps * rollout.mask, rollout.ref_logps * rollout.mask, atol=1e-5, rtol=0)
    assert abs(metrics["train/kl"].item()) < 1e-5
    assert torch.equal(rollout.values, torch.zeros_like(rollout.values))  # the critic starts at V = 0
    assert rollout.mask.sum(1).max().item() <= 6


def test_rollout_scores_and_missing_eos_penalty(tiny_tokenizer):
    system = make_system(PPO, PPOConfig, tiny_tokenizer, length, max_new_tokens=3, missing_eos_penalty=10.0)
    rows = prompt_rows(PPO, tiny_tokenizer, n=16)
    rollout, metrics = system.rollout(rows)
    texts = tiny_tokenizer.batch_decode(rollout.completion_ids * rollout.mask.long(), skip_special_tokens=True)
    raw = torch.tensor([float(len(t)) for t in texts])
    ended = rollout.completion_ids.gather(1, rollout.mask.sum(1, keepdim=True).long() - 1).squeeze(1) == tiny_tokenizer.eos_token_id
    # R(x, y) minus 10 for every completion that hit max_new_tokens without EOS
    assert rollout.scores.tolist() == pytest.approx((raw - 10.0 * (~ended).float()).tolist())
    assert metrics["train/reward"].item() == pytest.approx(raw.mean().item())  # logged before the penalty
    whitened, _ = make_system(PPO, PPOConfig, tiny_tokenizer, length, max_new_tokens=3, whiten_rewards=True).rollout(rows)
    assert whitened.scores.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert whitened.scores.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)


def test_no_grad_passes_in_chunks_of_forward_batch_size_match_one_pass(tiny_tokenizer):
    """8 completions in chunks of 3 (3 + 3 + 2): the chunks' log-probs line up with one pass over all 8."""
    system = make_system(PPO, PPOConfig, tiny_tokenizer, length, max_new_tokens=5)
    rollout, _ = system.rollout(prompt_rows(PPO, tiny_tokenizer, n=8))
    rollout.logps = None  # recomputed by the forward passes too, as when the sampler's are not the policy's
    system.evaluate(rollout)
    whole = (rollout.logps.clone(), rollout.ref_logps.clone())
    system.cfg.forward_batch_size = 3
    rollout.logps = None
    system.evaluate(rollout)
    assert rollout.logps.shape == whole[0].shape and rollout.ref_logps.shape == whole[1].shape
    mask = rollout.mask
    torch.testing.assert_close(rollout.logps * mask, whole[0] * mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(rollout.ref_logps * mask, whole[1] * mask, atol=1e-5, rtol=0)
    assert not torch.equal(whole[1][0] * mask[0], whole[1][3] * mask[3])  # rows differ: a misordered chunk would show


def test_a_padding_free_update_takes_the_padded_updates_loss_and_gradients(tiny_tokenizer):
    """Prompts of 2-7 tokens, completions of 1-6 (three of four ended early): evaluate (log pi_old,
    log pi_ref, V) and the loss (log pi and V with gradients) with the rollout packed (one row), and
    padded. Equal loss, metrics and gradients of policy and critic: every token's log-prob and value
    went back to its place, and nothing reads the zeros on the padding (float32: 1e-5)."""
    system = make_system(PPO, PPOConfig, tiny_tokenizer, length, beta=0.1)
    prompts, completions = [[5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16], [17, 18, 19, 20]], [[30, 31, 2], [32], [33, 34, 35, 36, 37, 38], [39, 2]]
    layout = Rollout.layout(prompts, completions, tiny_tokenizer.pad_token_id, "cpu")
    results = []
    for packing in (None, Collator(tiny_tokenizer.pad_token_id, padding_free=True, row_width=0)):
        system.packing = packing
        rollout = Rollout(*layout, reward=torch.tensor([0.5, -1.0, 2.0, 0.0]), scores=torch.tensor([0.5, -1.0, 2.0, 0.0]))
        system.zero_grad()
        with torch.no_grad():
            system.evaluate(rollout)
        system.estimate_advantages(rollout, {})
        loss, metrics = system.loss(rollout)
        loss.backward()
        results.append((loss, metrics, [p.grad.clone() for p in system.parameters() if p.grad is not None]))
    (padded, padded_metrics, padded_grads), (packed, packed_metrics, packed_grads) = results
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for key, value in padded_metrics.items():
        torch.testing.assert_close(packed_metrics[key], value, atol=1e-5, rtol=1e-5)
    assert len(packed_grads) == len(padded_grads) > 0
    for packed_grad, padded_grad in zip(packed_grads, padded_grads):
        torch.testing.assert_close(packed_grad, padded_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("estimator", "per_token"), [("k1", 0.3), ("k2", 0.5 * 0.3**2), ("k3", math.exp(-0.3) + 0.3 - 1)])
def test_the_kl_penalty_uses_the_chosen_estimator(tiny_tokenizer, estimator, per_token):
    """log pi - log pi_ref = 0.3 on every token; with gamma = lambda = 1 and V = 0 the return at the
    first token is R(x, y) - beta * |y| * k(0.3): k1 = 0.3, k2 = 0.3^2 / 2, k3 = e^-0.3 + 0.3 - 1."""
    system = make_system(PPO, PPOConfig, tiny_tokenizer, length, max_new_tokens=5, kl_estimator=estimator, beta=0.5, gamma=1.0, lam=1.0)
    rollout, _ = system.rollout(prompt_rows(PPO, tiny_tokenizer, n=4))
    rollout.ref_logps = rollout.logps - 0.3
    system.estimate_advantages(rollout, {})
    expected = rollout.scores - 0.5 * rollout.mask.sum(1) * per_token
    assert rollout.returns[:, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_max_steps_counts_rollouts_not_optimiser_steps(tiny_tokenizer):
    system = make_system(PPO, PPOConfig, tiny_tokenizer, share_of_a, max_new_tokens=4, epochs=2, minibatches=3)
    data_cfg = OmegaConf.structured(DataConfig(loader="synthetic", num_rows=64, batch_size=6, val_fraction=0, max_length=64))
    data = DataModule(data_cfg, "prompt", PPO.encode, Encoder(tiny_tokenizer, 64), {"synthetic": load_synthetic}, seed=0)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, datamodule=data)
    assert trainer.global_step == 3
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 3  # rollouts
    optimizer = trainer.optimizers[0]
    steps = {int(optimizer.state[p]["step"]) for group in optimizer.param_groups for p in group["params"]}
    assert steps == {3 * 2 * 3}  # rollouts x epochs x minibatches optimiser steps, on policy and critic alike
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3  # the schedule advances once per rollout


def test_logs_the_learning_rate_and_the_gradient_norm_before_clipping(tiny_tokenizer):
    optim = OptimConfig(lr=3e-4, scheduler="constant", grad_clip=1e-6)
    system = make_system(PPO, PPOConfig, tiny_tokenizer, share_of_a, optim=optim, max_new_tokens=4, epochs=1)
    data_cfg = OmegaConf.structured(DataConfig(loader="synthetic", num_rows=32, batch_size=8, val_fraction=0, max_length=64))
    data = DataModule(data_cfg, "prompt", PPO.encode, Encoder(tiny_tokenizer, 64), {"synthetic": load_synthetic}, seed=0)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, datamodule=data)
    assert trainer.callback_metrics["train/lr"].item() == pytest.approx(3e-4)
    assert trainer.callback_metrics["train/grad_norm"].item() > 1e-3  # the norm before clipping, not the clipped 1e-6


def test_config_errors(tiny_tokenizer):
    with pytest.raises(ConfigError, match="set optim.accumulate_grad_batches=1"):
        make_system(PPO, PPOConfig, tiny_tokenizer, share_of_a, optim=OptimConfig(accumulate_grad_batches=2))


def test_runs_out_of_the_box_with_the_datas_verifiable_reward(cli):
    res = cli("objective=ppo", "logger=csv", "trainer.log_every_n_steps=1", "trainer.max_steps=2", "data.num_rows=60", "data.batch_size=8", env=ENV)
    assert res.returncode == 0, res.output[-3000:]
    summary = res.summary
    assert summary["global_step"] == 2 and summary["objective"] == "ppo"
    for key in (*METRICS, "val/reward"):
        assert key in summary, key
    # exact answers of the synthetic tasks, 1 right and 0 wrong: a step's mean over its 8 prompts is
    # a count of right answers / 8 (a shaped, penalised or length reward would not be)
    rewards = curve(res.run_dir, "train/reward")
    assert len(rewards) == 2 and all((8 * r).is_integer() and 0 <= r <= 1 for r in rewards), rewards
    assert (res.run_dir / "model" / "model.safetensors").exists()


def test_learns_a_simple_reward_and_a_large_beta_stays_at_the_reference(cli):
    runs = {}
    for beta in (0.01, 1.0):
        res = cli("objective=ppo", *LEARN, f"objective.beta={beta}", "objective.epochs=2", "data.batch_size=16", "trainer.max_steps=60", env=ENV)
        assert res.returncode == 0, res.output[-3000:]
        runs[beta] = {key: curve(res.run_dir, key) for key in ("train/reward", "train/kl")}
    reward, kl = runs[0.01]["train/reward"], runs[0.01]["train/kl"]
    assert abs(kl[0]) < 1e-5  # step 0: the policy is the reference
    assert tail(reward) > 2 * head(reward) and tail(reward) > head(reward) + 0.1, reward
    # the KL-regularised objective R - beta * KL improves too: the reward gained outweighs the KL paid
    objective = [r - 0.01 * k for r, k in zip(reward, kl)]
    assert tail(objective) > head(objective) + 0.05, (reward, kl)
    close_reward, close_kl = runs[1.0]["train/reward"], runs[1.0]["train/kl"]
    assert tail(close_kl, 10) < 1.0 and tail(close_kl, 10) < tail(kl, 10) / 5, (close_kl, kl)
    assert tail(close_reward, 10) < tail(reward, 10) - 0.05


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_tokenizer):
    model = load_scalar_head_model(ModelConfig(), tiny_tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def test_reward_model_by_path_with_a_gold_score_and_adaptive_beta(cli, reward_model_dir):
    res = cli(
        "objective=ppo", *QUICK, "reward=model", f"reward.path={reward_model_dir}", "reward.gold_fn=tests.rewards.functions:share_of_a",
        "objective.target_kl=0.001", "objective.kl_horizon=100", "objective.max_new_tokens=6",
        "trainer.max_steps=3", "data.num_rows=60", "data.batch_size=8", env=ENV,
    )
    assert res.returncode == 0, res.output[-3000:]
    summary = res.summary
    # the gold score is logged at every step beside the reward model's, and is not that score:
    # the share of 'a' (in [0, 1]) where the random scalar head gives values of its own
    gold, proxy = curve(res.run_dir, "train/reward_gold"), curve(res.run_dir, "train/reward")
    assert len(gold) == len(proxy) == 3 and all(0 <= g <= 1 for g in gold), gold
    assert all(abs(g - p) > 1e-6 for g, p in zip(gold, proxy)), (gold, proxy)
    beta = curve(res.run_dir, "train/beta")
    # step 0 has KL 0, below the target: e = clip(0 / 0.001 - 1, -0.2, 0.2) = -0.2, beta * (1 - 0.2 * 8 / 100)
    assert beta[:2] == pytest.approx([0.05, 0.05 * 0.984])


def test_a_failing_reward_stops_the_run_and_keeps_the_last_checkpoint(cli):
    """One failure through the CLI; every other kind of bad score (nan, inf, None, a wrong count)
    is the same RewardError, tested in tests/rewards/test_rewards.py without a run."""
    res = cli(
        "objective=ppo", "logger=csv", "data.val_fraction=0", "reward=python", "reward.fn=tests.rewards.functions:fails_later",
        "objective.max_new_tokens=4", "data.num_rows=80", "data.batch_size=8", "trainer.max_steps=10", "trainer.checkpoint_every_n_steps=2",
        env={**ENV, "FAIL_AT_CALL": "4"},
    )
    assert res.returncode == 1, res.output[-3000:]
    assert "rlhf_lab: error: reward 'python' (tests.rewards.functions:fails_later) raised ConnectionError: judge service unreachable" in res.stderr
    assert "Traceback" not in res.output
    assert not (res.run_dir / "summary.json").exists() and not (res.run_dir / "model").exists()
    # rollouts 1-3 trained; the 4th failed before any update: the checkpoint of step 2 is intact
    last = torch.load(res.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
