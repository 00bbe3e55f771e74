"""A language model prompted to choose (``reward=judge reward.path=MODEL``): the AI feedback of
online DPO (Guo et al. 2024, https://arxiv.org/abs/2402.04792; LLM-as-a-judge, Zheng et al. 2023,
https://arxiv.org/abs/2306.05685). It reads the prompt and two completions laid out by
``reward.template`` (through the model's chat template when it has one) and answers with one of
``reward.choices``; from the log-likelihoods of the two answers,

    P(y_1 better than y_2) = p(A) / (p(A) + p(B)) = sigmoid(log p(A) - log p(B))

averaged over both orders of the pair (``reward.both_orders``: y_1 shown as A, then as B), which
cancels any preference for a position. A judge compares pairs, so it serves objectives that sample
two completions per prompt (``objective=online_dpo``); asked for one completion's score it stops
the run with an error saying so.
"""

from __future__ import annotations

import torch

from rlhf_lab.config import ModelConfig
from rlhf_lab.data.collate import pad_collate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import fit_to_context, frozen, load_causal_lm, load_tokenizer
from rlhf_lab.models.lm import score_labels
from rlhf_lab.rewards.python import import_callable
from rlhf_lab.rewards.schemas import JudgeConfig


class PairwiseJudge(torch.nn.Module):
    """``compare(prompts, first, second)``: P(first better) per pair. A module, so that the objective
    holding it moves it to the training device."""

    pairwise = True  # objectives that sample pairs ask ``compare``; a per-completion score is an error

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        if len(cfg.choices) != 2 or cfg.choices[0] == cfg.choices[1]:
            raise ConfigError(f"reward.choices must be two different answers; got {list(cfg.choices)}.")
        model_cfg = ModelConfig(source="hf", name_or_path=cfg.path)
        tokenizer = load_tokenizer(model_cfg)
        self.model = frozen(load_causal_lm(model_cfg, lora=False))
        self.encoder = Encoder(tokenizer, fit_to_context(1024, model_cfg), cfg.chat_template)
        self.choice_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in cfg.choices]
        self.template, self.both_orders, self.batch_size = cfg.template, cfg.both_orders, cfg.batch_size
        if cfg.gold_fn:
            self.gold = import_callable(cfg.gold_fn, "reward.gold_fn")

    def forward(self, prompts: list, completions: list[str]) -> list[float]:
        raise ConfigError("reward=judge compares two completions of a prompt: use it with objective=online_dpo, "
                          "or give this objective a per-completion reward (reward=model, reward=python).")  # fmt: skip

    @torch.no_grad()
    def compare(self, prompts: list, first: list[str], second: list[str]) -> list[float]:
        p = self._first_chosen(prompts, first, second)  # (K,) P(A) with the first response as A
        if self.both_orders:
            p = (p + 1 - self._first_chosen(prompts, second, first)) / 2  # ... and as B
        return p.tolist()

    def _first_chosen(self, prompts: list, a: list[str], b: list[str]) -> torch.Tensor:
        """(K,) sigmoid(log p(choice A) - log p(choice B)) for each question."""
        device = next(self.model.parameters()).device
        texts = [self.template.format(prompt=p if isinstance(p, str) else p[-1]["content"], a=x, b=y) for p, x, y in zip(prompts, a, b)]
        out = []
        for start in range(0, len(texts), self.batch_size):
            features = []
            for ids in self.encoder.prompt_ids(texts[start : start + self.batch_size]):
                seqs = [self.encoder.sequence(ids, choice, {"_source": "a judge question"}) for choice in self.choice_ids]
                if None in seqs:
                    raise ConfigError(f"a judge question of {len(ids)} tokens fills the judge's context of {self.encoder.max_length}.")
                features.append({"sequences": seqs})
            batch = pad_collate(features, self.encoder.tokenizer.pad_token_id)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            scored = score_labels(self.model, batch)
            logp_a, logp_b = scored.per_sequence(scored.logps(), batch["num_sequences"]).view(2, -1)  # (k,) each: A answers first
            out.append(torch.sigmoid(logp_a - logp_b).cpu())
        return torch.cat(out)


def judge_reward(cfg: JudgeConfig, tokenizer) -> PairwiseJudge:
    return PairwiseJudge(cfg)
