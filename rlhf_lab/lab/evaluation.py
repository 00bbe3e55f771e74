"""What a run on the world did to what people want: the gold reward, measured on held-out prompts.

``WorldEvaluation`` (added to every training run with ``data=world``) samples one completion per
test-split prompt from the policy before training (from the initial model, which is also the
reference), every ``data.eval_every_n_steps`` steps and at the end, and reports under ``world/``:

- ``gold_reward``: mean gold reward of the samples (``rlhf_lab.lab.world.gold_reward``);
- ``proxy_reward``: mean score of a learned reward model (the run's ``reward=model``, the
  aggregate of its ``reward=ensemble``, or ``data.proxy_model``), when there is one;
- ``kl``: KL(pi || pi_ref) per completion, estimated with k1 on the samples:
  mean over y ~ pi of sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)];
- ``win_rate``: share of prompts where the policy's sample has a higher gold reward than the
  initial policy's (the SFT model in a pipeline), ties counting half;
- ``fluent``: share of samples that follow the grammar.

The values before training are under ``world_initial/``. A reward model (``objective=rm``) is
scored instead on test-split preference pairs: ``world/rm_accuracy`` beside
``world/bayes_accuracy``, the best accuracy any model can expect on those noisy labels.
Every evaluation is also appended to ``<run dir>/world_eval.jsonl`` for reports; a resumed run
first drops the lines of steps after its checkpoint (it evaluates them again).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from rlhf_lab.data.collate import pad_collate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.lab import world
from rlhf_lab.models import eval_mode, frozen, load_causal_lm
from rlhf_lab.models.heads import sequence_rewards
from rlhf_lab.objectives.losses import pair_metrics
from rlhf_lab.rewards.ensemble import EnsembleScore
from rlhf_lab.rewards.model import ModelRewardConfig, RewardModelScorer
from rlhf_lab.rollout.experience import Rollout, completion_logits, token_logps
from rlhf_lab.rollout.generation import Sampling, sample_texts
from rlhf_lab.training.files import write_atomic

EVAL_SEED = 2024  # every evaluation samples with the same seed, outside the training RNG streams


def proxy_scorer(cfg: DictConfig) -> torch.nn.Module | None:
    """The learned reward scored as ``world/proxy_reward``: ``data.proxy_model``, else the run's
    reward model (``reward=model``) or reward-model ensemble (``reward=ensemble``, its aggregate)."""
    if cfg.data.get("proxy_model"):
        return RewardModelScorer(ModelRewardConfig(path=cfg.data.proxy_model))
    if cfg.reward is not None and cfg.reward.name == "model":
        return RewardModelScorer(ModelRewardConfig(path=cfg.reward.path))
    if cfg.reward is not None and cfg.reward.name == "ensemble":
        return EnsembleScore(cfg.reward)
    return None


def forget_after(trace: Path, step: int) -> None:
    """Keep the evaluations of ``trace`` (world_eval.jsonl) up to ``step``; a line cut short by a kill goes too."""
    if trace.exists():
        lines = trace.read_text().splitlines(keepends=True)
        kept = "".join(line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step)
        write_atomic(trace, lambda f: f.write(kept.encode()))


class WorldEvaluation(L.Callback):
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.data = cfg.data
        self.log_path = Path(run_dir) / "world_eval.jsonl"
        self.sampling = Sampling(self.data.eval_max_new_tokens, temperature=1.0, top_p=1.0)
        self.is_reward_model = cfg.objective.name == "rm"
        self._last_step: int | None = None

    # --- hooks --------------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and trainer.is_global_zero:  # resumed: the steps after its checkpoint come again
            forget_after(self.log_path, trainer.global_step)
        if self.is_reward_model:
            return
        rows = world.generate("prompt", self.data.eval_prompts, seed=self.data.generator_seed, split="test")
        self.prompts = [row["prompt"] for row in rows]
        self.prompt_ids = Encoder(pl_module.tokenizer, self.data.max_length).prompt_ids(self.prompts)
        self.proxy = proxy_scorer(self.cfg)
        if self.proxy is not None:
            self.proxy.to(pl_module.device)
        # A fresh copy of the initial weights, not the policy: on a resumed run the policy has moved.
        self.reference = frozen(load_causal_lm(self.cfg.model, lora=False)).to(pl_module.device)
        completions, texts = self._sample(self.reference, pl_module)
        self.reference_gold = torch.tensor(world.gold_scores(self.prompts, texts))
        initial = self._metrics(texts, self.reference_gold, torch.zeros(len(texts)))
        trainer.callback_metrics.update({f"world_initial/{k}": torch.tensor(v) for k, v in initial.items()})
        if trainer.global_step == 0:
            self._record(trainer, initial)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.data.eval_every_n_steps
        if not self.is_reward_model and every and trainer.global_step % every == 0 and trainer.global_step != self._last_step:
            self._evaluate_policy(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.is_reward_model:
            self._evaluate_reward_model(trainer, pl_module)
        elif trainer.global_step != self._last_step:
            self._evaluate_policy(trainer, pl_module)

    # --- policy ---------------------------------------------------------------------------------

    def _sample(self, model, pl_module) -> tuple[list[list[int]], list[str]]:
        return sample_texts(model, pl_module.tokenizer, self.prompt_ids, self.sampling, EVAL_SEED)  # the same draws at every evaluation

    @torch.no_grad()
    def _sequence_logps(self, model, completions: list[list[int]], pl_module) -> torch.Tensor:
        """(N,) log p(y | x) summed over the completion tokens."""
        input_ids, attention_mask, mask = Rollout.layout(self.prompt_ids, completions, pl_module.tokenizer.pad_token_id, pl_module.device)
        logits = completion_logits(model, input_ids, attention_mask, mask.shape[1], temperature=1.0)  # (N, C, V)
        return (token_logps(logits, input_ids[:, -mask.shape[1] :]) * mask).sum(1).cpu()  # (N,)

    def _evaluate_policy(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        policy = pl_module.trained_model
        with eval_mode(policy):  # no dropout in the samples or in the KL estimate
            completions, texts = self._sample(policy, pl_module)
            kl = self._sequence_logps(policy, completions, pl_module) - self._sequence_logps(self.reference, completions, pl_module)  # (N,) k1
        gold = torch.tensor(world.gold_scores(self.prompts, texts))
        self._publish(trainer, self._metrics(texts, gold, kl))

    def _metrics(self, texts: list[str], gold: torch.Tensor, kl: torch.Tensor) -> dict[str, float]:
        wins = (gold > self.reference_gold).float() + 0.5 * (gold == self.reference_gold).float()
        metrics = {
            "gold_reward": gold.mean().item(),
            "kl": kl.mean().item(),
            "win_rate": wins.mean().item(),
            "fluent": sum(map(world.is_fluent, texts)) / len(texts),
        }
        if self.proxy is not None:
            metrics["proxy_reward"] = sum(self.proxy(self.prompts, texts)) / len(texts)
        return metrics

    # --- reward model -------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate_reward_model(self, trainer, pl_module) -> None:
        """Accuracy on test-split pairs (labels drawn from Bradley-Terry) against the Bayes-optimal one."""
        rows = world.generate("preference", self.data.eval_pairs, seed=self.data.generator_seed, split="test", temperature=self.data.noise_temperature)
        encoder = Encoder(pl_module.tokenizer, self.data.max_length)
        r_chosen, r_rejected = [], []
        with eval_mode(pl_module.trained_model) as model:
            for start in range(0, len(rows), self.data.batch_size):
                collated = pad_collate(encoder.ranking(rows[start : start + self.data.batch_size]), pl_module.tokenizer.pad_token_id)
                batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in collated.items()}
                rewards = sequence_rewards(model, batch)  # (2b,)
                chosen, rejected = batch["pairs"].unbind(1)  # (b,), (b,)
                r_chosen.append(rewards[chosen].cpu())
                r_rejected.append(rewards[rejected].cpu())
        gold_pairs = [(world.gold_reward(r["chosen"]), world.gold_reward(r["rejected"])) for r in rows]
        self._publish(trainer, {
            "rm_accuracy": pair_metrics(torch.cat(r_chosen), torch.cat(r_rejected))["accuracy"].item(),
            "bayes_accuracy": world.bayes_accuracy(gold_pairs, self.data.noise_temperature),
        })  # fmt: skip

    # --- output ---------------------------------------------------------------------------------

    def _publish(self, trainer, metrics: dict[str, float]) -> None:
        trainer.callback_metrics.update({f"world/{k}": torch.tensor(v) for k, v in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics({f"world/{k}": v for k, v in metrics.items()}, step=trainer.global_step)
        self._record(trainer, metrics)

    def _record(self, trainer, metrics: dict[str, float]) -> None:
        if trainer.is_global_zero:
            with self.log_path.open("a") as f:
                f.write(json.dumps({"step": trainer.global_step, **metrics}) + "\n")
