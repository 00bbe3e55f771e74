"""One task under one strategy on one model, standalone (``mode=eval``) or inside training
(``EvalCallback``: before training, every N steps, at the end).

Metrics, under ``eval/<task>/<strategy>/``: generation tasks report ``exact_match_strict``,
``exact_match_flexible`` and ``accuracy`` (the one ``eval.accuracy_from`` picks; ``maj@n`` too
when a strategy samples n answers); multiple-choice tasks ``acc``, ``acc_norm`` (log-likelihood
divided by the choice's length in characters) and ``accuracy`` (= acc); ``loglikelihood_rolling``
tasks ``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte`` over all their texts, as
lm-evaluation-harness defines them. All report ``scored``, ``skipped`` (documents whose prompt
outgrew the model's context), ``model_calls`` (batched calls to the model) and ``samples_per_s``.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from rlhf_lab.config import EvalConfig
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, DataError, PluginError
from rlhf_lab.models import eval_mode, load_causal_lm, load_tokenizer
from rlhf_lab.prompting.extract import extract, normalise
from rlhf_lab.prompting.lm import LM, check_prompt
from rlhf_lab.prompting.strategies import Answer, Strategy, ZeroShot, ZeroShotConfig
from rlhf_lab.prompting.tasks import ROLLING, Task, load_task
from rlhf_lab.rewards import build_reward

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    prefix: str  # eval/<task>/<strategy>
    metrics: dict[str, float]
    records: list[dict]  # one per scored document: prompt, output, answer, gold, correct

    def flat(self, top: str = "eval") -> dict[str, float]:
        prefix = self.prefix.replace("eval/", f"{top}/", 1)
        return {f"{prefix}/{k}": v for k, v in self.metrics.items()}


class Evaluator:
    def __init__(self, task: Task, strategy: Strategy, strategy_name: str, tokenizer: PreTrainedTokenizerBase, reward=None, who: str | None = None):
        self.task, self.strategy, self.tokenizer, self.reward = task, strategy, tokenizer, reward
        self.who = who or f"prompting={strategy_name}"  # for messages; a plugin's strategy names its distribution
        self.prefix = f"eval/{task.name}/{strategy_name}"
        if strategy.generates and task.kind != "generation":
            raise ConfigError(f"{self.who} writes its answers: it needs a generation task, and '{task.name}' is {task.kind}.")
        if task.kind == ROLLING and not isinstance(strategy, ZeroShot):
            raise ConfigError(f"task '{task.name}' scores the log-likelihood of its texts as they are: {self.who} does not apply (use prompting=zero_shot).")
        if task.kind == "multiple_choice" and type(strategy).prompt is Strategy.prompt:
            raise ConfigError(f"{self.who} has no prompt(): a multiple-choice task scores each choice after one prompt.")
        if strategy.needs_reward and reward is None:
            raise ConfigError(f"{self.who} scores answers with a reward, but no reward is configured: set reward=<name> "
                              "(e.g. reward=model reward.path=DIR, a model trained with objective=rm).")  # fmt: skip
        if type(strategy).prompt is not Strategy.prompt:  # its prompts are checked before any model runs
            use_chat = Encoder(tokenizer, tokenizer.model_max_length, task.cfg.chat_template).use_chat
            rng = random.Random(strategy.cfg.seed)
            for i, doc in enumerate(task.docs):
                check_prompt(strategy.prompt(doc, task, rng), i, self.who, use_chat)

    def run(self, model) -> EvalResult:
        """Score every document on ``model``; deterministic given the strategy's seed."""
        lm = LM(model, self.tokenizer, self.task, self.who, self.reward)
        device = next(model.parameters()).device
        if self.reward is not None and isinstance(self.reward.score, torch.nn.Module):
            self.reward.score.to(device)
        started = time.perf_counter()
        score = {"generation": self._generation, "multiple_choice": self._multiple_choice, ROLLING: self._rolling}[self.task.kind]
        with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.strategy.cfg.seed)
            metrics, records = score(lm, random.Random(self.strategy.cfg.seed))
        metrics["model_calls"] = sum(lm.calls.values())
        metrics["samples_per_s"] = metrics["scored"] / (time.perf_counter() - started)
        return EvalResult(self.prefix, metrics, records)

    def _kept(self, lm: LM) -> list[int]:
        """The documents scored: all but those the model's context could not hold (logged)."""
        n = len(self.task.docs)
        if len(lm.skipped) == n:
            raise DataError(f"task '{self.task.name}': every prompt exceeds the model's context of {lm.limit} tokens.")
        if lm.skipped:
            log.warning("%s: skipped %d of %d documents longer than the model's context of %d tokens (documents %s...).",
                        self.prefix, len(lm.skipped), n, lm.limit, [i + 1 for i in sorted(lm.skipped)[:5]])  # fmt: skip
        return [i for i in range(n) if i not in lm.skipped]

    def _answers(self, outputs: list[Answer]) -> list[list[str]]:
        """The strategy's answers as lists of texts; anything else is an error naming the document."""
        n = len(self.task.docs)
        if not isinstance(outputs, list) or len(outputs) != n:
            size = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
            raise PluginError(f"{self.who}: run() returned {size} answers for {n} documents; it returns one per document, in order.")
        answers = []
        for i, out in enumerate(outputs):
            texts = [out] if isinstance(out, str) else out
            if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
                raise PluginError(f"{self.who} answered {out!r} for document {i + 1}; an answer is the completion text (or a list of sampled texts).")
            answers.append(texts)
        return answers

    def _generation(self, lm: LM, rng: random.Random) -> tuple[dict, list[dict]]:
        cfg, strategy = self.task.cfg, self.strategy
        answers = self._answers(strategy.run(self.task.docs, self.task, lm, rng))
        kept = self._kept(lm)

        def answer(texts: list[str], pattern: str, last: bool) -> str | None:
            found = [extract(t, pattern, last) for t in texts]
            return strategy.vote([None if a is None else normalise(a, cfg.ignore_patterns, cfg.ignore_case) for a in found])

        staged = sum(lm.calls.values()) > 1  # a strategy in stages: each document's calls go to the samples table
        hits = {"strict": 0, "flexible": 0}
        records = []
        for i in kept:
            texts, calls = answers[i], lm.trace[i]
            gold = normalise(self.task.docs[i].answer, cfg.ignore_patterns, cfg.ignore_case)
            extracted = {"strict": answer(texts, cfg.strict_pattern, False), "flexible": answer(texts, cfg.flexible_pattern, True)}
            for name, a in extracted.items():
                hits[name] += a == gold
            record = {"prompt": calls[0]["prompt"] if calls else "", "output": "\n---\n".join(texts), **extracted, "gold": gold, "correct": extracted[cfg.accuracy_from] == gold}
            if staged:
                record["calls"] = "\n===\n".join(c["prompt"] + "\n---\n".join(c["outputs"]) for c in calls)
            records.append(record)
        n = len(kept)
        metrics = {"exact_match_strict": hits["strict"] / n, "exact_match_flexible": hits["flexible"] / n, "accuracy": hits[cfg.accuracy_from] / n}
        if strategy.samples > 1:
            metrics[f"maj@{strategy.samples}"] = metrics["accuracy"]
        return {**metrics, "scored": n, "skipped": len(lm.skipped)}, records

    def _multiple_choice(self, lm: LM, rng: random.Random) -> tuple[dict, list[dict]]:
        docs = self.task.docs
        prompts = [self.strategy.prompt(doc, self.task, rng) for doc in docs]
        delimiter = "" if lm.encoder.use_chat else self.task.cfg.target_delimiter  # the assistant turn starts the answer
        requests = [(i, prompt, delimiter + c) for i, (prompt, doc) in enumerate(zip(prompts, docs)) for c in self.task.continuations(doc)]
        ids, contexts, continuations = (list(column) for column in zip(*requests))
        lls = lm.loglikelihood(contexts, continuations, ids)
        kept = set(self._kept(lm))
        acc = acc_norm = 0
        records = []
        for i, doc in enumerate(docs):
            choices = self.task.continuations(doc)
            scores, lls = lls[: len(choices)], lls[len(choices) :]
            if i not in kept:
                continue
            pred = max(range(len(scores)), key=scores.__getitem__)
            pred_norm = max(range(len(scores)), key=lambda j: scores[j] / len(choices[j]))
            acc += pred == doc.label
            acc_norm += pred_norm == doc.label
            records.append({"prompt": lm.encoder.prompt_texts([prompts[i]])[0], "output": choices[pred], "loglikelihoods": scores, "gold": doc.answer, "correct": pred == doc.label})
        n = len(kept)
        return {"acc": acc / n, "acc_norm": acc_norm / n, "accuracy": acc / n, "scored": n, "skipped": len(lm.skipped)}, records

    def _rolling(self, lm: LM, rng: random.Random) -> tuple[dict, list[dict]]:
        """Perplexities over all texts, weighted by their words and bytes (lm-evaluation-harness's
        ``weighted_perplexity`` and ``bits_per_byte``): exp(-sum ll / sum words), exp(-sum ll / sum
        bytes), -sum ll / sum bytes / ln 2; words are the pieces between runs of whitespace."""
        texts = [doc.question for doc in self.task.docs]
        lls = lm.loglikelihood_rolling(texts)
        words = [len(re.split(r"\s+", t)) for t in texts]
        nbytes = [len(t.encode("utf-8")) for t in texts]
        ll = sum(lls)
        metrics = {
            "word_perplexity": math.exp(-ll / sum(words)),
            "byte_perplexity": math.exp(-ll / sum(nbytes)),
            "bits_per_byte": -ll / sum(nbytes) / math.log(2),
            "scored": len(texts),
            "skipped": 0,
        }
        return metrics, [{"text": t, "loglikelihood": v, "words": w, "bytes": b} for t, v, w, b in zip(texts, lls, words, nbytes)]


def build_evaluator(cfg: DictConfig, registry, tokenizer: PreTrainedTokenizerBase) -> Evaluator:
    """The run's task (``eval``; the synthetic task if none) under its strategy (``prompting``;
    zero_shot if none), with the run's ``reward`` source when the strategy scores answers with one."""
    eval_cfg = cfg.eval if cfg.eval is not None else OmegaConf.structured(EvalConfig)
    prompting = cfg.prompting if cfg.prompting is not None else OmegaConf.structured(ZeroShotConfig(name="zero_shot"))
    entry = registry.get("prompting", prompting.name)
    strategy = entry.create(prompting)
    loaders = {name: e.create for name, e in registry.entries["dataset"].items()}
    reward = build_reward(cfg.reward, registry.entries["reward"], tokenizer) if strategy.needs_reward and cfg.get("reward") is not None else None
    who = f"prompting={prompting.name}" + ("" if entry.plugin.entry_point == "built-in" else f" (from {entry.plugin})")
    return Evaluator(load_task(eval_cfg, loaders, prompting.get("split")), strategy, prompting.name, tokenizer, reward, who)


def log_result(result: EvalResult, loggers: list, step: int, limit: int) -> None:
    """Metrics to every logger; the first ``limit`` records as a table to W&B."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        logger.log_metrics(result.flat(), step=step)
        if isinstance(logger, WandbLogger) and result.records and limit > 0:
            columns = list(result.records[0])
            rows = [[r[c] if isinstance(r[c], (str, int, float, bool)) or r[c] is None else str(r[c]) for c in columns] for r in result.records[:limit]]
            logger.log_table(key=f"{result.prefix}/samples", columns=columns, data=rows, step=step)


class EvalCallback(Callback):
    """Evaluates the model being trained before training, every ``every_n_steps`` and at the end.

    Results go to the loggers and to ``trainer.callback_metrics`` (so into summary.json): the last
    evaluation under ``eval/``, the one before training under ``eval_initial/``.
    """

    def __init__(self, evaluator: Evaluator, every_n_steps: int | None, log_samples: int):
        self.evaluator = evaluator
        self.every_n_steps = every_n_steps
        self.log_samples = log_samples
        self._last_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        result = self._evaluate(trainer, pl_module)
        trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in result.flat("eval_initial").items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self._last_step:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer, pl_module) -> EvalResult:
        self._last_step = trainer.global_step
        result = self.evaluator.run(pl_module.trained_model)
        log_result(result, trainer.loggers, trainer.global_step, self.log_samples)
        trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in result.flat().items()})
        log.info("step %d: %s", trainer.global_step, {k: round(v, 4) for k, v in result.flat().items()})
        return result


def eval_callbacks(cfg: DictConfig, registry, tokenizer: PreTrainedTokenizerBase) -> list[Callback]:
    """The evaluation callback of a training run; none without ``eval``."""
    if cfg.eval is None:
        return []
    return [EvalCallback(build_evaluator(cfg, registry, tokenizer), cfg.eval.every_n_steps, cfg.eval.log_samples)]


def evaluate_model(cfg: DictConfig, host, run_dir: Path) -> dict:
    """``mode=eval``: the configured model (hub id, directory, or a run's exported ``model/``) on
    the task, logged like a training run; returns the summary."""
    from rlhf_lab.tracking import build_loggers

    tokenizer = load_tokenizer(cfg.model)
    evaluator = build_evaluator(cfg, host.registry, tokenizer)
    use_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    model = load_causal_lm(cfg.model, lora=False).to("cuda" if use_gpu else "cpu")
    result = evaluator.run(model)
    loggers = build_loggers(cfg, run_dir)
    log_result(result, loggers, 0, evaluator.task.cfg.log_samples)
    for logger in loggers:
        logger.finalize("success")
    log.info("%s", {k: round(v, 4) for k, v in result.flat().items()})
    return {**result.flat(), "mode": "eval", "model": cfg.model.name_or_path}
