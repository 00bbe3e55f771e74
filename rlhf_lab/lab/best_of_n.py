"""Best-of-n (``mode=best_of_n``), the baseline every reward / KL frontier needs (Gao et al. 2022,
"Scaling Laws for Reward Model Overoptimization", https://arxiv.org/abs/2210.10760, sec. 2.2):
sample n completions from the policy (``model``, the SFT model in a pipeline), keep the one the
reward model (``reward=model`` or ``reward=ensemble``) scores highest. No training; its distance
from the policy is known in closed form,

    KL_bon(n) = log n - (n - 1) / n

(Stiennon et al. 2020, https://arxiv.org/abs/2009.01325, appendix G.3), an upper bound on the
KL of the best-of-n distribution to the policy. For every n in 1, 2, 4, ..., ``best_of_n.max_n``
it reports the gold reward, the proxy (reward model) score and the share of fluent answers of the
pick, on the held-out prompts of the lab's evaluation, sampled the same way (one seed, one
generation function: ``rlhf_lab.rollout.generation.sample_texts``). From max_n draws per prompt,
each n is scored with the unbiased estimator of Nakano et al. 2021 (https://arxiv.org/abs/2112.09332,
appendix H), the mean over all n-subsets of the draws rather than one subset (``expected_best_of_n``).

The run writes one line per n to ``world_eval.jsonl`` (``n``, ``gold_reward``, ``proxy_reward``,
``kl``, ``fluent``) and the largest n's figures under ``world/`` in summary.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.lab import world
from rlhf_lab.lab.evaluation import EVAL_SEED, proxy_scorer
from rlhf_lab.models import frozen, load_causal_lm, load_tokenizer
from rlhf_lab.rollout.generation import Sampling, sample_texts


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || policy) <= log n - (n - 1) / n: 0 at n = 1."""
    return math.log(n) - (n - 1) / n


def expected_best_of_n(proxy: list[float], values: list[float], n: int) -> float:
    """E[value of the proxy's best of n draws taken at random from these N]: with the draws sorted by
    proxy score, the i-th lowest (1-based) is the pick of C(i - 1, n - 1) of the C(N, n) subsets:

        E = sum_{i=n}^{N} C(i - 1, n - 1) / C(N, n) * value_(i)

    ``proxy`` and ``values`` are the N draws' scores and the quantity reported (gold reward, proxy
    score, fluency); ties in the proxy keep the draws' order."""
    N = len(proxy)
    if not 1 <= n <= N:
        raise ValueError(f"n must be between 1 and the number of draws {N}; got {n}")
    ranked = [v for _, v in sorted(zip(proxy, values), key=lambda pv: pv[0])]
    total = math.comb(N, n)
    return sum(math.comb(i - 1, n - 1) / total * ranked[i - 1] for i in range(n, N + 1))


def best_of_n(cfg: DictConfig, host, run_dir: Path) -> dict:
    """The ``mode=best_of_n`` entry: the curve over n, written to ``world_eval.jsonl``; returns the summary."""
    if cfg.data.get("loader") != "world":
        raise ConfigError("mode=best_of_n measures the gold reward of the lab's world: set data=world.")
    scorer = proxy_scorer(cfg)
    if scorer is None:
        raise ConfigError("mode=best_of_n picks by a learned reward: set reward=model reward.path=DIR (or reward=ensemble).")
    max_n, chunk = cfg.best_of_n.max_n, max(1, cfg.best_of_n.batch_size // cfg.data.eval_prompts)
    if max_n < 1 or max_n & (max_n - 1):
        raise ConfigError(f"best_of_n.max_n must be a power of 2; got {max_n}.")
    device = "cuda" if cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(cfg.model)
    policy = frozen(load_causal_lm(cfg.model)).to(device)
    scorer.to(device)
    prompts = [row["prompt"] for row in world.generate("prompt", cfg.data.eval_prompts, seed=cfg.data.generator_seed, split="test")]
    prompt_ids = Encoder(tokenizer, cfg.data.max_length).prompt_ids(prompts)
    sampling = Sampling(cfg.data.eval_max_new_tokens, temperature=1.0, top_p=1.0)

    texts: list[list[str]] = [[] for _ in prompts]  # N draws per prompt
    for first in range(0, max_n, chunk):  # draws first .. first + k - 1 of every prompt in one generation batch
        k = min(chunk, max_n - first)
        _, drawn = sample_texts(policy, tokenizer, prompt_ids * k, sampling, EVAL_SEED + first)
        for j, text in enumerate(drawn):
            texts[j % len(prompts)].append(text)
    flat_prompts = [p for p, drawn in zip(prompts, texts) for _ in drawn]
    flat_texts = [t for drawn in texts for t in drawn]
    proxy_flat, gold_flat = scorer(flat_prompts, flat_texts), world.gold_scores(flat_prompts, flat_texts)
    proxy = [proxy_flat[i * max_n : (i + 1) * max_n] for i in range(len(prompts))]
    gold = [gold_flat[i * max_n : (i + 1) * max_n] for i in range(len(prompts))]
    fluent = [[float(world.is_fluent(t)) for t in drawn] for drawn in texts]

    curve = []
    for n in (2**e for e in range(int(math.log2(max_n)) + 1)):
        def mean_pick(values: list[list[float]]) -> float:
            return sum(expected_best_of_n(p, v, n) for p, v in zip(proxy, values)) / len(prompts)

        curve.append({"step": n, "n": n, "gold_reward": mean_pick(gold), "proxy_reward": mean_pick(proxy), "kl": kl_best_of_n(n), "fluent": mean_pick(fluent)})
    with (run_dir / "world_eval.jsonl").open("w") as f:
        f.writelines(json.dumps(point) + "\n" for point in curve)
    first, last = curve[0], curve[-1]
    return {
        "objective": "best_of_n",
        "best_of_n/max_n": max_n,
        **{f"world/{k}": last[k] for k in ("gold_reward", "proxy_reward", "kl", "fluent")},
        **{f"world_initial/{k}": first[k] for k in ("gold_reward", "proxy_reward", "kl", "fluent")},
    }
