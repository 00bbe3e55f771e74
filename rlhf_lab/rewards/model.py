"""A trained reward model as the reward (``reward=model reward.path=DIR``).

``DIR`` holds an ``AutoModelForSequenceClassification`` with one label and its tokenizer, as
``objective=rm`` exports. Prompt and completion are encoded exactly as the reward model saw them
in training (its own tokenizer and chat template, completion ended by EOS), and scored in batches
with the head read where training read it (``rlhf_lab.models.heads.sequence_rewards``).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_lab.data.collate import pad_collate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import frozen, max_positions
from rlhf_lab.models.heads import sequence_rewards
from rlhf_lab.rewards.python import import_callable
from rlhf_lab.rewards.schemas import ModelRewardConfig


class RewardModelScorer(torch.nn.Module):
    """``score(prompts, completions)`` with a frozen reward model. A module, so that the objective
    holding it moves it to the training device."""

    def __init__(self, cfg: ModelRewardConfig):
        super().__init__()
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.path)
            self.model = frozen(AutoModelForSequenceClassification.from_pretrained(cfg.path, num_labels=1))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"reward.path={cfg.path}: not a reward model directory ({exc}).") from exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.encoder = Encoder(tokenizer, min(cfg.max_length, max_positions(self.model.config) or cfg.max_length), cfg.chat_template)
        self.batch_size = cfg.batch_size
        if cfg.gold_fn:
            self.gold = import_callable(cfg.gold_fn, "reward.gold_fn")

    @torch.no_grad()
    def forward(self, prompts: list, completions: list[str]) -> list[float]:
        device = next(self.model.parameters()).device
        prompt_ids = self.encoder.prompt_ids(prompts)
        completion_ids = self.encoder.completion_ids(completions)
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            features = []
            for p, c in zip(prompt_ids[start : start + self.batch_size], completion_ids[start : start + self.batch_size]):
                seq = self.encoder.sequence(p, c, {"_source": "a rollout prompt"})
                if seq is None:
                    raise ConfigError(f"a prompt of {len(p)} tokens fills reward.max_length={self.encoder.max_length}.")
                features.append({"sequences": [seq]})
            batch = pad_collate(features, self.encoder.tokenizer.pad_token_id)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            scores += sequence_rewards(self.model, batch).tolist()
        return scores


def reward_model_scorer(cfg: ModelRewardConfig, tokenizer) -> RewardModelScorer:
    return RewardModelScorer(cfg)
